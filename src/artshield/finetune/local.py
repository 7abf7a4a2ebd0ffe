"""A few LoRA steps at a time on an already-loaded model: what a federated client runs each round.

The full trainer (:func:`artshield.finetune.train.train`) loads a model, creates an accelerate Accelerator and
writes checkpoints and weights. A federated client instead holds one model for the whole experiment and, each
round, loads the global LoRA weights, runs N local optimisation steps on its own images, and sends the updated
LoRA weights back. :class:`LocalTrainer` does that in this process, with no accelerate, no files and no
subprocess, and the same denoising loss as the trainer (:func:`artshield.finetune.loop.batch_loss`)::

    from artshield.models import load
    from artshield.finetune import LocalTrainer

    model = load("demo")
    client = LocalTrainer(model, rank=4, learning_rate=1e-4, resolution=64, seed=client_id)
    for round in range(rounds):
        client.load_state_dict(global_lora)               # the server's weights (None in round 0)
        update = client.train_steps(images, steps=10, prompt="a painting in sks style")
        send(update.state_dict)                           # keys of pytorch_lora_weights.safetensors

The state dicts use the keys of ``pytorch_lora_weights.safetensors`` (``unet.…lora.down.weight``), so an
aggregated one loads in stock diffusers with ``pipe.load_lora_weights(state_dict)``. Each
:meth:`LocalTrainer.train_steps` call starts a fresh AdamW (FedAvg clients keep no optimizer state across
rounds); random numbers (batch order, timesteps, noise, VAE samples) come from the trainer's own generator,
never from the global RNG, so clients are reproducible from their seed whatever else runs in the process.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from ..cli_support import non_negative_int, positive_float, positive_int
from ..errors import InvalidArgumentError, ObjectiveError
from .config import below_one, multiple_of_8, non_negative_float
from .data import Collator, Example, TrainingDataset
from .loop import add_lora, batch_loss
from .saving import lora_state, set_lora_state

logger = logging.getLogger(__name__)


def _check(name: str, check, value):
    try:
        return check(str(value))
    except argparse.ArgumentTypeError as exc:
        raise InvalidArgumentError(f"`{name}` {exc}.") from None


@dataclass
class LocalResult:
    """One call of :meth:`LocalTrainer.train_steps`.

    Attributes:
        state_dict: the updated LoRA weights (fp32 CPU copies, keys of ``pytorch_lora_weights.safetensors``).
        losses: the training loss of each step.
        steps: the steps run.
        num_examples: the local images trained on (FedAvg's weight of this client).
    """

    state_dict: dict[str, torch.Tensor]
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    num_examples: int = 0


class LocalTrainer:
    """Run LoRA optimisation steps on an already-loaded :class:`~artshield.models.DiffusionModel`.

    LoRA adapters (peft, as the trainer adds them) are added to the model's UNet (and text encoder, with
    `train_text_encoder`) unless it already has adapters of the same rank; the base weights stay frozen.

    Args:
        model: the loaded model (``artshield.models.load(...)``); it is changed in place (adapters added).
        rank: LoRA rank (``lora_alpha = rank``).
        learning_rate, adam_weight_decay, max_grad_norm: AdamW and gradient clipping, as the trainer.
        train_text_encoder: also adapt the text encoder.
        lora_dropout: dropout of the LoRA layers.
        batch_size: images per step.
        resolution: side of the square crops (default: the model's native resolution).
        snr_gamma, noise_offset: as the trainer's flags.
        random_flip: flip images at random.
        seed: seed of every random draw (batch order, crops, timesteps, noise).
    """

    def __init__(
        self,
        model,
        *,
        rank: int = 4,
        learning_rate: float = 1e-4,
        train_text_encoder: bool = False,
        lora_dropout: float = 0.0,
        batch_size: int = 1,
        resolution: int | None = None,
        max_grad_norm: float = 1.0,
        adam_weight_decay: float = 1e-2,
        snr_gamma: float | None = None,
        noise_offset: float = 0.0,
        random_flip: bool = False,
        seed: int = 0,
    ) -> None:
        from ..compat import check_lora_stack

        self.rank = _check("rank", positive_int, rank)
        self.learning_rate = _check("learning_rate", positive_float, learning_rate)
        self.lora_dropout = _check("lora_dropout", below_one, lora_dropout)
        self.batch_size = _check("batch_size", positive_int, batch_size)
        self.resolution = _check("resolution", multiple_of_8, resolution or model.native_resolution)
        self.max_grad_norm = _check("max_grad_norm", positive_float, max_grad_norm)
        self.adam_weight_decay = _check("adam_weight_decay", non_negative_float, adam_weight_decay)
        self.snr_gamma = None if snr_gamma is None else _check("snr_gamma", positive_float, snr_gamma)
        self.noise_offset = _check("noise_offset", non_negative_float, noise_offset)
        self.seed = _check("seed", non_negative_int, seed)
        self.random_flip = bool(random_flip)
        self.train_text_encoder = bool(train_text_encoder)
        if self.resolution % model.pixel_multiple:
            raise InvalidArgumentError(
                f"`resolution` must be a multiple of {model.pixel_multiple} for this model, but is {self.resolution}."
            )
        check_lora_stack(text_encoder=self.train_text_encoder)
        self.model = model
        self.rounds = 0
        model.freeze()
        text_encoder = model.text_encoder if self.train_text_encoder else None
        existing = self._existing_rank(model.unet)
        if existing is None:
            add_lora(model.unet, text_encoder, rank=self.rank, dropout=self.lora_dropout)
        elif existing != self.rank:
            raise InvalidArgumentError(
                f"the model's UNet already has LoRA adapters of rank {existing}, not {self.rank}; load a fresh model."
            )
        elif text_encoder is not None and self._existing_rank(text_encoder) is None:
            raise InvalidArgumentError("the model's text encoder has no LoRA adapters; load a fresh model.")
        for module in self._trained():
            for name, param in module.named_parameters():
                param.requires_grad_("lora_" in name)
        if model.dtype != torch.float32:
            from diffusers.training_utils import cast_training_params

            cast_training_params(self._trained(), dtype=torch.float32)  # fp32 adapters on fp16/bf16 models

    @staticmethod
    def _existing_rank(module: torch.nn.Module) -> int | None:
        config = getattr(module, "peft_config", None) or {}
        return config["default"].r if "default" in config else None

    def _trained(self) -> list[torch.nn.Module]:
        return [self.model.unet] + ([self.model.text_encoder] if self.train_text_encoder else [])

    def parameters(self) -> list[torch.nn.Parameter]:
        """The trained (LoRA) parameters."""
        return [p for m in self._trained() for p in m.parameters() if p.requires_grad]

    # ------------------------------------------------------------------------------- weights
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The current LoRA weights (fp32 CPU copies, keys of ``pytorch_lora_weights.safetensors``)."""
        return lora_state(self.model.unet, self.model.text_encoder if self.train_text_encoder else None)

    def load_state_dict(self, state_dict: dict[str, torch.Tensor] | None) -> None:
        """Set the LoRA weights (e.g. the server's aggregate); None keeps the current ones. Keys must be those
        of :meth:`state_dict`; a non-finite value is refused (a poisoned or broken aggregate)."""
        if state_dict is None:
            return
        expected = self.state_dict()
        missing = sorted(set(expected) - set(state_dict))
        extra = sorted(set(state_dict) - set(expected))
        if missing or extra:
            raise InvalidArgumentError(
                f"LoRA state dict does not match this trainer's adapters (rank {self.rank}): "
                + (f"missing {missing[0]}" if missing else f"unexpected {extra[0]}")
                + f" ({len(missing)} missing, {len(extra)} unexpected)."
            )
        for key, value in state_dict.items():
            if value.shape != expected[key].shape:
                raise InvalidArgumentError(
                    f"LoRA state dict: {key} has shape {tuple(value.shape)}, not {tuple(expected[key].shape)}.")
            if not torch.isfinite(value).all():
                raise InvalidArgumentError(f"LoRA state dict: {key} holds non-finite values.")
        set_lora_state(state_dict, self.model.unet, self.model.text_encoder if self.train_text_encoder else None)

    # ------------------------------------------------------------------------------- training
    def dataset(self, data: Any, prompt: str | None = None) -> TrainingDataset:
        """A :class:`TrainingDataset` of `data`: a dataset as is, a sequence of :class:`Example`, or of images
        (paths, PIL images or (3, H, W) tensors in [0, 1]) or (image, caption) pairs; bare images take
        `prompt` as caption."""
        if isinstance(data, TrainingDataset):
            return data
        examples = []
        for index, item in enumerate(data):
            if isinstance(item, Example):
                examples.append(item)
                continue
            image, caption = item if isinstance(item, tuple) and len(item) == 2 else (item, prompt)
            if not caption:
                raise InvalidArgumentError(f"local image {index} has no caption; pass (image, caption) pairs or prompt=.")
            if isinstance(image, torch.Tensor):
                from ..imageio import to_pil

                image = to_pil(image.detach().float().clamp(0, 1))
            examples.append(Example(image, caption, f"local image {index}"))
        if not examples:
            raise InvalidArgumentError("there are no local training images.")
        return TrainingDataset(examples, self.resolution, random_flip=self.random_flip, seed=self.seed)

    def train_steps(self, data: Any, steps: int, *, prompt: str | None = None) -> LocalResult:
        """Run `steps` optimisation steps on `data` (see :meth:`dataset`) and return the updated LoRA weights.

        A fresh AdamW is made for each call; the batch order, crops, timesteps and noise come from a generator
        seeded by ``(seed, call number)``, so each round draws new batches and a rerun repeats them exactly.
        """
        steps = _check("steps", positive_int, steps)
        dataset = self.dataset(data, prompt)
        model = self.model
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.rounds)
        dataset.set_epoch(self.rounds)
        self.rounds += 1
        collate = Collator(model.tokenizer)
        params = self.parameters()
        optimizer = torch.optim.AdamW(params, lr=self.learning_rate, weight_decay=self.adam_weight_decay)
        trained = self._trained()
        modes = [(m, m.training) for m in trained]
        autocast = (torch.autocast(model.device.type, dtype=model.dtype) if model.dtype != torch.float32
                    else contextlib.nullcontext())  # fmt: skip
        losses: list[float] = []
        order: list[int] = []
        try:
            for module in trained:
                module.train()
            for _ in range(steps):
                while len(order) < self.batch_size:
                    order += torch.randperm(len(dataset), generator=generator).tolist()
                indices, order = order[: self.batch_size], order[self.batch_size:]
                batch = collate([dataset[i] for i in indices])
                with autocast:
                    loss = batch_loss(
                        model, model.unet, model.text_encoder, batch, train_text_encoder=self.train_text_encoder,
                        unet_dtype=model.dtype, noise_offset=self.noise_offset, snr_gamma=self.snr_gamma,
                        generator=generator,
                    )  # fmt: skip
                if not torch.isfinite(loss):
                    raise ObjectiveError(
                        f"the local training loss became {loss.item()} at step {len(losses) + 1}; lower the learning "
                        "rate or check the LoRA state loaded.")
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
        finally:
            for module, training in modes:
                module.train(training)
            for param in params:
                param.grad = None
        return LocalResult(self.state_dict(), losses, steps, len(dataset.examples))


def train_steps(model, data: Any, steps: int, *, state_dict: dict[str, torch.Tensor] | None = None,
                prompt: str | None = None, **options: Any) -> LocalResult:  # fmt: skip
    """One-shot form of :class:`LocalTrainer`: adapt `model` (if needed), load `state_dict`, run `steps`
    steps on `data`, return the updated LoRA weights. `options` are LocalTrainer's."""
    trainer = LocalTrainer(model, **options)
    trainer.load_state_dict(state_dict)
    return trainer.train_steps(data, steps, prompt=prompt)


__all__ = ["LocalResult", "LocalTrainer", "train_steps"]
