"""Saving what the trainer makes, in the formats stock diffusers reads, and nothing of our own.

* LoRA: ``pytorch_lora_weights.safetensors`` written by ``StableDiffusionPipeline.save_lora_weights`` from
  ``convert_state_dict_to_diffusers(get_peft_model_state_dict(...))``, exactly as diffusers'
  ``train_dreambooth_lora.py`` does; it loads with ``pipe.load_lora_weights(folder)``.
* DreamBooth / full fine-tuning: a complete pipeline folder (``model_index.json`` and one subfolder per
  component, safetensors) written by ``save_pretrained``; it loads with ``StableDiffusionPipeline.from_pretrained``.
* Training checkpoints: ``accelerator.save_state`` folders (``checkpoint-<step>``) with diffusers' save/load
  hooks: the LoRA file, or ``unet/`` (and ``text_encoder/``) for full fine-tuning, plus accelerate's own
  optimizer, scheduler and RNG files. With Bayesian layers the hooks leave the models to accelerate, which
  then saves their whole state (means *and* sigmas) so that a resumed run continues exactly.
* ``--use_ema``: the exponential moving average (diffusers' ``EMAModel``) of the trained UNet goes into each
  checkpoint as ``unet_ema/`` (and ``text_encoder_ema/`` when the text encoder is trained): a
  ``save_pretrained`` folder of the averaged weights whose ``config.json`` also holds the EMA's counters
  (``decay``, ``optimization_step``, ...), as diffusers' ``EMAModel.save_pretrained`` writes it, so
  ``EMAModel.from_pretrained(checkpoint/unet_ema, UNet2DConditionModel)`` reads it too (see :class:`EMAWeights`).

Final outputs and checkpoints are built in a hidden staging folder (:func:`artshield.fileio.staging_folder`) and
moved into place by renames, so an interrupted run never leaves a half-written model or checkpoint that loads
(see :func:`publish_lora`, :func:`publish_pipeline` and :func:`save_checkpoint`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from .. import fileio
from ..errors import InvalidArgumentError

logger = logging.getLogger(__name__)

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")

ContextFactory = Callable[[torch.nn.Module], contextlib.AbstractContextManager]


# ------------------------------------------------------------------------------------------- LoRA
def lora_layers(model: torch.nn.Module | None) -> dict[str, torch.Tensor] | None:
    """The peft LoRA weights of `model` under diffusers' key names (None when `model` is None)."""
    if model is None:
        return None
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    # LoRA never targets the embeddings; "auto" would look for a hub config to compare vocabularies.
    state_dict = convert_state_dict_to_diffusers(get_peft_model_state_dict(model, save_embedding_layers=False))
    # fp32 files whatever the training precision (diffusers casts the model to fp32 before saving).
    return {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in state_dict.items()}


def save_lora(folder: str | os.PathLike, unet: torch.nn.Module, text_encoder: torch.nn.Module | None = None) -> Path:
    """Write ``pytorch_lora_weights.safetensors`` for a peft-adapted UNet (and text encoder) into `folder`."""
    from diffusers import StableDiffusionPipeline

    StableDiffusionPipeline.save_lora_weights(
        save_directory=os.fspath(folder),
        unet_lora_layers=lora_layers(unet),
        text_encoder_lora_layers=lora_layers(text_encoder),
        safe_serialization=True,
    )
    return Path(os.fspath(folder)) / LORA_WEIGHT_NAME


def load_lora(folder: str | os.PathLike, unet: torch.nn.Module, text_encoder: torch.nn.Module | None = None) -> None:
    """Load a LoRA file written by :func:`save_lora` into already-adapted models (the checkpoint load hook)."""
    from diffusers import StableDiffusionPipeline

    state_dict, _ = StableDiffusionPipeline.lora_state_dict(os.fspath(folder))
    set_lora_state(state_dict, unet, text_encoder, where=f"checkpoint {os.fspath(folder)}")


def lora_state(unet: torch.nn.Module, text_encoder: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The LoRA weights of a peft-adapted UNet (and text encoder) as one state dict with the keys of
    ``pytorch_lora_weights.safetensors`` (``unet.*``, ``text_encoder.*``): fp32 copies on the CPU."""
    state = {f"unet.{k}": v.detach().to("cpu", copy=True) for k, v in lora_layers(unet).items()}
    if text_encoder is not None:
        state.update({f"text_encoder.{k}": v.detach().to("cpu", copy=True) for k, v in lora_layers(text_encoder).items()})
    return state


def set_lora_state(
    state_dict: dict[str, torch.Tensor],
    unet: torch.nn.Module,
    text_encoder: torch.nn.Module | None = None,
    *,
    where: str = "LoRA state",
) -> None:
    """Copy a LoRA state dict with the keys of :func:`lora_state` (or of a LoRA file) into already-adapted
    models; a weight the UNet's adapters lack is an :class:`InvalidArgumentError` (another rank or model)."""
    from diffusers.training_utils import _set_state_dict_into_text_encoder
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import set_peft_model_state_dict

    unet_state = {k.removeprefix("unet."): v for k, v in state_dict.items() if k.startswith("unet.")}
    incompatible = set_peft_model_state_dict(unet, convert_unet_state_dict_to_peft(unet_state), adapter_name="default")
    unexpected = getattr(incompatible, "unexpected_keys", None) if incompatible is not None else None
    if unexpected:
        raise InvalidArgumentError(
            f"{where}: its LoRA has weights this UNet's adapters lack (e.g. {unexpected[0]}); "
            "was it made with another --rank or model?"
        )
    if text_encoder is not None:
        _set_state_dict_into_text_encoder(state_dict, prefix="text_encoder.", text_encoder=text_encoder)


# ------------------------------------------------------------------------------------------- accelerate hooks
def register_checkpoint_hooks(
    accelerator,
    unet: torch.nn.Module,
    text_encoder: torch.nn.Module | None,
    *,
    method: str,
    bayesian: bool = False,
    deterministic_state: ContextFactory | None = None,
    upcast_after_load: bool = False,
) -> None:
    """Register diffusers-style ``save_state``/``load_state`` pre-hooks on `accelerator`.

    Args:
        unet, text_encoder: the (unwrapped) models being trained; `text_encoder` None when it is frozen.
        method: ``"lora"`` (save the LoRA file) or ``"dreambooth"``/``"full"`` (save ``unet/`` and
            ``text_encoder/`` with ``save_pretrained``).
        bayesian: the UNet carries Bayesian layers. The hooks then leave the models in accelerate's lists,
            so accelerate saves and restores their complete state dicts (``model.safetensors``...), sigmas
            included; for LoRA a deterministic LoRA file is written beside them as well, so that any
            checkpoint folder can be loaded with ``load_lora_weights`` as with stock diffusers.
        deterministic_state: ``artshield.finetune.bayesian.deterministic_state`` (needed when `bayesian`).
        upcast_after_load: under fp16, cast trainable parameters back to fp32 after loading (as diffusers).
    """
    from diffusers.training_utils import cast_training_params

    unet_type = type(accelerator.unwrap_model(unet))
    text_type = type(accelerator.unwrap_model(text_encoder)) if text_encoder is not None else None

    def split(models: list) -> tuple[torch.nn.Module | None, torch.nn.Module | None]:
        found_unet = found_text = None
        for model in models:
            model = accelerator.unwrap_model(model)
            if isinstance(model, unet_type):
                found_unet = model
            elif text_type is not None and isinstance(model, text_type):
                found_text = model
            else:
                raise ValueError(f"unexpected model in the checkpoint: {model.__class__.__name__}")
        return found_unet, found_text

    def save_model_hook(models: list, weights: list, output_dir: str) -> None:
        if not accelerator.is_main_process:
            return
        found_unet, found_text = split(models)
        if bayesian:
            # Keep `weights`: accelerate writes every model's full state dict, Bayesian sigmas included.
            if method == "lora" and found_unet is not None:
                with deterministic_state(found_unet):
                    save_lora(output_dir, found_unet, found_text)
            return
        if method == "lora":
            save_lora(output_dir, found_unet, found_text)
        else:
            if found_unet is not None:
                found_unet.save_pretrained(os.path.join(output_dir, "unet"), safe_serialization=True)
            if found_text is not None:
                found_text.save_pretrained(os.path.join(output_dir, "text_encoder"), safe_serialization=True)
        # Pop every weight so accelerate does not save the models a second time in its own format.
        weights.clear()

    def load_model_hook(models: list, input_dir: str) -> None:
        if bayesian:
            return  # accelerate restores the full state dicts it saved
        found_unet, found_text = split(models)
        models.clear()
        if method == "lora":
            load_lora(input_dir, found_unet, found_text)
        else:
            if found_unet is not None:
                _load_pretrained_into(found_unet, input_dir, "unet")
            if found_text is not None:
                _load_pretrained_into(found_text, input_dir, "text_encoder")
        if upcast_after_load:
            cast_training_params([m for m in (found_unet, found_text) if m is not None], dtype=torch.float32)

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)


def _load_pretrained_into(model: torch.nn.Module, folder: str, subfolder: str) -> None:
    """Copy the weights saved by ``save_pretrained`` in ``folder/subfolder`` into `model` (diffusers' hook)."""
    from safetensors.torch import load_file

    path = Path(folder) / subfolder
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise InvalidArgumentError(f"checkpoint {folder}: {subfolder}/ holds no safetensors weights.")
    state_dict: dict[str, torch.Tensor] = {}
    for file in files:  # sharded saves write several files
        state_dict.update(load_file(str(file)))
    model.load_state_dict(state_dict)


# ------------------------------------------------------------------------------------------- EMA
#: The counters of diffusers' ``EMAModel.state_dict()`` (everything but the shadow weights).
EMA_SCALARS = ("decay", "min_decay", "optimization_step", "update_after_step", "use_ema_warmup", "inv_gamma", "power")


class EMAWeights:
    """An exponential moving average of one trained model's parameters, with checkpoint I/O.

    A thin wrapper of diffusers' ``EMAModel`` (same decay schedule: ``min(decay, (1 + n) / (10 + n))``, same
    ``step``/``copy_to``), as ``train_text_to_image.py --use_ema`` uses it. The averaged weights are saved into a
    checkpoint as ``<subfolder>/`` with the model's own ``save_pretrained`` and the EMA counters added to its
    ``config.json`` (the layout of ``EMAModel.save_pretrained``, which works for diffusers models only; this
    also covers a transformers text encoder), and read back bit-exactly by :meth:`load`.

    Args:
        model: the (unwrapped) model being trained; its parameters are tracked in ``parameters()`` order.
        subfolder: the checkpoint subfolder, ``unet_ema`` or ``text_encoder_ema``.
        decay: the largest decay (diffusers' default 0.9999).
        foreach: use ``torch._foreach`` kernels (``--foreach_ema``).
        offload: keep the averaged weights in CPU memory between steps (``--offload_ema``).
        device: where the averaged weights live when not offloaded.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        subfolder: str,
        *,
        decay: float = 0.9999,
        foreach: bool = False,
        offload: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        from diffusers.training_utils import EMAModel

        self.model = model
        self.subfolder = subfolder
        self.offload = offload
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.ema = EMAModel(model.parameters(), decay=decay, foreach=foreach)
        self._place()

    def _place(self) -> None:
        if self.offload:
            self.ema.to(device="cpu")
            if self.device.type == "cuda":
                self.ema.pin_memory()  # as diffusers: fast host <-> device copies at each step
        else:
            self.ema.to(device=self.device)

    @property
    def optimization_step(self) -> int:
        return self.ema.optimization_step

    def step(self) -> None:
        """Fold the model's current parameters into the average (call once per optimizer step)."""
        if self.offload and self.device.type != "cpu":
            cuda = self.device.type == "cuda"
            self.ema.to(device=self.device, non_blocking=cuda)
            self.ema.step(self.model.parameters())
            self.ema.to(device="cpu", non_blocking=cuda)  # into pinned memory, as diffusers
            if cuda:
                torch.cuda.synchronize(self.device)  # the copies must land before anything reads them
        else:
            self.ema.step(self.model.parameters())

    def copy_to_model(self) -> None:
        """Overwrite the model's parameters with the averaged ones (before the final save)."""
        self.ema.copy_to(self.model.parameters())

    @contextlib.contextmanager
    def applied(self) -> Iterator[torch.nn.Module]:
        """Inside, the model holds the averaged weights; its own are put back exactly on exit (diffusers'
        ``store``/``copy_to``/``restore``, as around validation)."""
        params = list(self.model.parameters())
        saved = [p.detach().to("cpu", copy=True) for p in params]  # in host memory, as diffusers' store()
        try:
            self.ema.copy_to(params)
            yield self.model
        finally:
            with torch.no_grad():
                for param, value in zip(params, saved, strict=True):
                    param.copy_(value)

    def restart(self) -> None:
        """Start the average afresh from the model's current weights (warm-up included)."""
        self.ema.shadow_params = [p.detach().clone() for p in self.model.parameters()]
        self.ema.optimization_step = 0
        self._place()

    def save(self, checkpoint_dir: str | os.PathLike) -> Path:
        """Write ``checkpoint_dir/<subfolder>``: the averaged weights and, in ``config.json``, the counters."""
        folder = Path(os.fspath(checkpoint_dir)) / self.subfolder
        with self.applied() as model:
            model.save_pretrained(str(folder), safe_serialization=True)
        config_file = folder / "config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        state = self.ema.state_dict()
        config.update({k: state[k] for k in EMA_SCALARS})
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return folder

    def load(self, checkpoint_dir: str | os.PathLike) -> bool:
        """Restore the average saved by :meth:`save`; False (nothing changed) when the checkpoint has none."""
        from safetensors.torch import load_file

        folder = Path(os.fspath(checkpoint_dir)) / self.subfolder
        files = sorted(folder.glob("*.safetensors"))
        if not files or not (folder / "config.json").is_file():
            return False
        saved: dict[str, torch.Tensor] = {}
        for file in files:
            saved.update(load_file(str(file)))
        names = [name for name, _ in self.model.named_parameters()]
        missing = [name for name in names if name not in saved]
        if missing:
            raise InvalidArgumentError(
                f"checkpoint {os.fspath(checkpoint_dir)}: {self.subfolder}/ lacks weights of this model (e.g. "
                f"{missing[0]}); was it written by a run with the same model?"
            )
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        state = {k: config[k] for k in EMA_SCALARS if k in config}
        state["shadow_params"] = [saved[name].to(dtype=p.dtype) for name, p in self.model.named_parameters()]
        self.ema.load_state_dict(state)
        self._place()
        return True


def register_ema_hooks(accelerator, emas: list[EMAWeights]) -> None:
    """Save and restore `emas` with every ``accelerator.save_state``/``load_state`` (after the model hooks).

    A checkpoint written without ``--use_ema`` has no average: resuming from it with ``--use_ema`` starts the
    average afresh from the resumed weights (with a warning).
    """
    if not emas:
        return

    def save_ema_hook(models: list, weights: list, output_dir: str) -> None:
        if accelerator.is_main_process:
            for ema in emas:
                ema.save(output_dir)

    def load_ema_hook(models: list, input_dir: str) -> None:
        for ema in emas:
            if not ema.load(input_dir):
                logger.warning(
                    "Checkpoint %s has no %s/ (it was saved without --use_ema): the moving average starts from "
                    "the resumed weights.", input_dir, ema.subfolder,
                )
                ema.restart()

    accelerator.register_save_state_pre_hook(save_ema_hook)
    accelerator.register_load_state_pre_hook(load_ema_hook)


# ------------------------------------------------------------------------------------------- checkpoints
def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """``checkpoint-<step>`` folders of `output_dir`, oldest step first."""
    root = Path(os.fspath(output_dir))
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CHECKPOINT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def checkpoint_step(path: str | os.PathLike) -> int:
    """The optimisation step a ``checkpoint-<step>`` folder was saved at."""
    match = CHECKPOINT_PATTERN.match(Path(os.fspath(path)).name)
    if match is None:
        raise InvalidArgumentError(
            f"--resume_from_checkpoint {os.fspath(path)!r}: a checkpoint folder is named checkpoint-<step>."
        )
    return int(match.group(1))


def resolve_checkpoint(spec: str, output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint ``--resume_from_checkpoint`` names: ``"latest"`` (None when there is none yet, so a
    restart script can always pass it), a folder path, or a bare ``checkpoint-<step>`` name in `output_dir`."""
    if spec == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(spec).expanduser()
    candidates = [path] if path.is_absolute() else [path, Path(os.fspath(output_dir)) / path.name]
    for candidate in candidates:
        if candidate.is_dir():
            checkpoint_step(candidate)
            return candidate
    raise InvalidArgumentError(f"--resume_from_checkpoint {spec!r}: no such checkpoint folder (nor in {os.fspath(output_dir)}).")


def save_checkpoint(accelerator, output_dir: str | os.PathLike, step: int, total_limit: int | None = None) -> Path:
    """``accelerator.save_state`` into ``output_dir/checkpoint-<step>``, atomically, then prune old ones.

    The state is written to a hidden staging folder and renamed into place (:func:`artshield.fileio.publish_folder`),
    so ``latest`` never picks a half-written checkpoint; older checkpoints beyond `total_limit` are removed only
    after the new one is complete (diffusers removes them first, which loses the last good one if saving fails).
    """
    root = Path(os.fspath(output_dir))
    final = root / f"checkpoint-{step}"
    with fileio.staging_folder(final) as staged:
        accelerator.save_state(str(staged))
        fileio.publish_folder(staged, final)
    logger.info("Saved state to %s", final)
    if total_limit is not None:
        existing = list_checkpoints(root)
        for old in existing[: max(0, len(existing) - total_limit)]:
            logger.info("Removing checkpoint %s (--checkpoints_total_limit %d)", old.name, total_limit)
            shutil.rmtree(old, ignore_errors=True)
    return final


# ------------------------------------------------------------------------------------------- final outputs
#: Staging folders of artshield versions before fileio (``.tmp-final-*``, ``.tmp-checkpoint-*``, ``.tmp-old-*``).
LEGACY_STAGING = re.compile(r"^\.tmp-(final|checkpoint-\d+|old)-")


def remove_stale_staging(output_dir: str | os.PathLike) -> None:
    """Delete staging folders a killed run left in `output_dir` (never complete outputs: those were renamed)."""
    root = Path(os.fspath(output_dir))
    for entry in fileio.remove_stale_staging(root):
        logger.info("Removed %s, left by an interrupted run", entry)
    for entry in root.iterdir() if root.is_dir() else []:
        if LEGACY_STAGING.match(entry.name) and entry.is_dir():
            logger.info("Removing %s, left by an interrupted run", entry)
            shutil.rmtree(entry, ignore_errors=True)


def publish_lora(
    output_dir: str | os.PathLike, unet: torch.nn.Module, text_encoder: torch.nn.Module | None = None
) -> Path:
    """Write the final LoRA file into `output_dir` atomically (staged, then one rename)."""
    root = Path(os.fspath(output_dir))
    final = root / LORA_WEIGHT_NAME
    with fileio.staging_folder(final) as staged_folder:
        return fileio.publish_file(save_lora(staged_folder, unet, text_encoder), final)


def publish_pipeline(output_dir: str | os.PathLike, pipeline) -> Path:
    """Save a full pipeline into `output_dir` (beside checkpoints and logs) so that it never half-loads.

    ``save_pretrained`` writes into a staging folder. The old ``model_index.json`` is removed first, each
    component folder is then swapped in by renames (:func:`artshield.fileio.publish_folder`), and the new
    ``model_index.json`` is moved in last: at any moment of an interruption the folder either is the complete
    new pipeline or has no ``model_index.json`` (so ``from_pretrained`` refuses it rather than mixing old and
    new components).
    """
    root = Path(os.fspath(output_dir))
    index = root / "model_index.json"
    with fileio.staging_folder(index) as staged:
        pipeline.save_pretrained(str(staged), safe_serialization=True)
        if index.exists():
            index.unlink()
        for entry in sorted(staged.iterdir()):
            if entry.name == "model_index.json":
                continue
            target = root / entry.name
            if entry.is_dir():
                fileio.publish_folder(entry, target)
            else:
                fileio.publish_file(entry, target)
        fileio.publish_file(staged / "model_index.json", index)
    return root


__all__ = [
    "EMAWeights",
    "LORA_WEIGHT_NAME",
    "checkpoint_step",
    "list_checkpoints",
    "load_lora",
    "lora_layers",
    "lora_state",
    "publish_lora",
    "publish_pipeline",
    "register_checkpoint_hooks",
    "register_ema_hooks",
    "remove_stale_staging",
    "resolve_checkpoint",
    "save_checkpoint",
    "save_lora",
    "set_lora_state",
]
