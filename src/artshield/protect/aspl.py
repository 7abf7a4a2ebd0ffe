"""Anti-DreamBooth ASPL: PGD against a surrogate that keeps learning the images (Van Le et al., ICCV 2023).

Paper: "Anti-DreamBooth: Protecting users from personalized text-to-image synthesis",
https://arxiv.org/abs/2303.15433. Reference code: VinAIResearch/Anti-DreamBooth (``attacks/aspl.py``,
``scripts/attack_with_aspl.sh``).

Distance measure: L-inf (pixel units of a [0, 1] image).

Alternating Surrogate and Perturbation Learning. Each round: copy the surrogate and fine-tune the copy
on the clean images; run PGD steps that *raise* the DreamBooth loss ‖ε_θ(z_t, t, c) − ε‖² of the copy
(one t and ε per step, gradients through the UNet and the stochastic VAE encoder); then fine-tune the
surrogate itself on the perturbed images. The PGD steps are the engine's, continued across rounds with
its ``init_delta``; the surrogate training is :class:`.surrogate.LoraSurrogate`.
"""

from __future__ import annotations

import time
from typing import ClassVar

import torch

from .base import ProtectionMethod, ProtectionResult, as_batch
from .surrogate import LoraSurrogate


class ASPL(ProtectionMethod):
    """Anti-DreamBooth ASPL with a LoRA surrogate (the reference's LoRA variant, PR #29).

    Args:
        model (`DiffusionModel`): the model a mimic would DreamBooth-fine-tune.
        prompt (`str`, defaults to `"a painting"`): the instance prompt (the reference's faces use
            "a photo of sks person"; AdvDM's default here).
        pgd_steps (`int`, defaults to 6): PGD steps per round (``max_adv_train_steps``).
        surrogate_steps (`int`, defaults to 3): surrogate fine-tuning steps per round (``max_f_train_steps``).
        lora_rank (`int`, defaults to 4), learning_rate (`float`, defaults to 1e-4): the LoRA surrogate
            (Mist-v2's; the reference fine-tunes the full UNet and text encoder at 5e-7).
        steps (defaults to 60): PGD steps in all, i.e. 10 rounds — **scaled down** from the reference's
            50 rounds × 6 steps so that a CPU run stays minutes, with the same step; raise it on a GPU.
        eps (defaults to 0.025 ≈ 6.4/255: the reference's 5e-2 in [−1, 1]), step_size (0.0025 ≈ 0.64/255:
            its 5e-3) and the shared engine settings of :class:`ProtectionMethod`.

    Deviations: sets A and B are the same images; no prior preservation (class images); the text encoder
    is not trained. :meth:`evaluate` measures the loss on the frozen model (the surrogate is discarded).

    Shape:
        images: (B, 3, H, W) or (B, 1, H, W) in [0, 1], any H and W. Output: the same.

    Example::

        >>> protected = ASPL(load("demo"), seed=0)(images)   # a few images of one artist, as a batch
    """

    name = "aspl"
    summary = "Anti-DreamBooth ASPL: alternate PGD with LoRA fine-tuning of a surrogate (Van Le et al. 2023)"
    hyperparameters: ClassVar[tuple[str, ...]] = ("prompt", "pgd_steps", "surrogate_steps", "lora_rank", "learning_rate")
    default_eps = 0.025
    default_steps = 60
    default_step_size = 0.0025

    def __init__(self, model, *, prompt: str = "a painting", pgd_steps: int = 6, surrogate_steps: int = 3,
                 lora_rank: int = 4, learning_rate: float = 1e-4, **settings):
        super().__init__(model, **settings)
        self.prompt, self.pgd_steps, self.surrogate_steps = prompt, max(1, pgd_steps), surrogate_steps
        self.lora_rank, self.learning_rate = lora_rank, learning_rate
        self._surrogate = None  # the LoRA copy PGD currently attacks

    def objective(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        model = self._surrogate if self._surrogate is not None else self.model
        latents = model.encode(images, mode="sample", generator=generator)
        embeds = model.embed_prompt(self.prompt, batch_size=images.shape[0])
        return model.training_loss(latents, embeds, generator=generator)

    def protect(self, images, mask: torch.Tensor | None = None) -> ProtectionResult:
        """Overridden: rounds of (fine-tune a copy on clean images, PGD against it, fine-tune on perturbed)."""
        batch, _ = as_batch(images)
        device, batch = batch.device, batch.to(self.model.device)
        started = time.perf_counter()
        mask = self.editable_mask(batch, mask)
        generator = torch.Generator(device="cpu")  # one stream for all rounds: surrogate draws and PGD draws
        if self.engine_config.seed is not None:
            generator.manual_seed(self.engine_config.seed)
        else:
            generator.seed()
        surrogate = LoraSurrogate(self.model, rank=self.lora_rank, learning_rate=self.learning_rate, generator=generator)
        delta, losses, done = None, [], 0
        rounds = -(-self.steps // self.pgd_steps)
        try:
            for _ in range(rounds):
                main = surrogate.state()
                surrogate.train(batch, self.prompt, self.surrogate_steps, generator)  # the copy, on clean images
                self._surrogate = surrogate.model
                count = min(self.pgd_steps, self.steps - done)
                result = self.perturb(batch, mask, init_delta=delta, steps=count, generator=generator)
                delta, done, losses = result.delta, done + count, losses + result.losses
                self._surrogate = None
                surrogate.load(main)
                surrogate.train(result.images, self.prompt, self.surrogate_steps, generator)  # the surrogate itself
        finally:
            self._surrogate = None
        final = batch + delta if delta is not None else batch
        return ProtectionResult(
            images=final.to(device),
            delta=(delta if delta is not None else torch.zeros_like(batch)).to(device),
            losses=losses,
            steps_run=done,
            seconds=time.perf_counter() - started,
            config=self.config,
        )
