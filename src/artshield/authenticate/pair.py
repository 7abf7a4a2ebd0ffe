"""The two models an audit compares: the public base model and the suspect fine-tuned from it.

A suspect is either a complete fine-tuned model (a DreamBooth / full fine-tuning folder, a single file, a hub
id) or a LoRA. For a LoRA, :class:`ModelPair` keeps **one** set of VAE, text-encoder and UNet weights: the
adapter is loaded into the base model's own UNet (and text encoder, when the LoRA adapts it) under its own
adapter name and switched on only inside ``pair.using("suspect")`` — peft's adapter toggle — instead of
holding two pipelines (the reference CGI-DM code needs 16 GB for two). Outside ``using("suspect")`` the
adapter is off, so the base handle behaves exactly as before.

:meth:`ModelPair.losses` is the quantity every contrast method is built on: the per-sample diffusion losses
of both models at the *same* noised input (same latents, timesteps and noise — a control variate: the noise
that makes one model's loss high makes the other's high too, so their difference has far less variance than
with independent draws), each model conditioned on its own text embedding of the prompt.

    >>> pair = ModelPair.load("demo", lora="suspect-lora/")
    >>> latents = pair.encode(images)                       # (B, 3, H, W) in [0, 1] -> scaled latent means
    >>> l_pre, l_ft = pair.losses(latents, timesteps, noise)
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import IncompatibleModelError, InvalidArgumentError, ModelLoadError, ModelNotFoundError
from ..models import DiffusionModel, load, resolve_device, resolve_dtype

ADAPTER_NAME = "artshield_suspect"

# UNet config entries that decide whether two UNets are the same architecture (a fine-tune keeps them all).
UNET_KEYS = (
    "in_channels", "out_channels", "sample_size", "block_out_channels", "layers_per_block", "down_block_types",
    "up_block_types", "cross_attention_dim", "attention_head_dim", "num_attention_heads", "use_linear_projection",
    "class_embed_type", "addition_embed_type", "time_embedding_type",
)  # fmt: skip


def _describe(model: DiffusionModel) -> dict[str, object]:
    """The architectural facts two models must share to be compared loss for loss."""
    unet = dict(model.unet.config)
    facts: dict[str, object] = {f"UNet {key}": _plain(unet.get(key)) for key in UNET_KEYS}
    text = getattr(model.text_encoder, "config", None)
    facts["cross-attention dim"] = unet.get("cross_attention_dim")
    facts["text-encoder hidden size"] = getattr(text, "hidden_size", None)
    facts["latent channels"] = model.latent_channels
    facts["prediction type"] = model.prediction_type
    facts["VAE scaling factor"] = float(model.vae.config.scaling_factor)
    facts["VAE shift factor"] = float(getattr(model.vae.config, "shift_factor", None) or 0.0)
    facts["VAE down-sampling"] = model.vae_scale_factor
    facts["training timesteps"] = model.num_train_timesteps
    return facts


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def check_compatible(base: DiffusionModel, suspect: DiffusionModel) -> None:
    """Raise :class:`IncompatibleModelError` (one line naming both) unless `suspect` has `base`'s architecture."""
    mine, theirs = _describe(base), _describe(suspect)
    for key, value in mine.items():
        if theirs[key] != value:
            raise IncompatibleModelError(
                f"suspect {suspect.source} is not a fine-tune of base {base.source}: {key} is {theirs[key]!r}, "
                f"not {value!r}."
            )
    if base.is_inpainting != suspect.is_inpainting:
        raise IncompatibleModelError(f"suspect {suspect.source} and base {base.source}: one is an inpainting model.")
    if not torch.equal(base.scheduler.alphas_cumprod.float(), suspect.scheduler.alphas_cumprod.float()):
        raise IncompatibleModelError(
            f"suspect {suspect.source} and base {base.source} have different noise schedules (betas)."
        )


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        return False
    return all(sa[k].shape == sb[k].shape and torch.equal(sa[k].to(sb[k].device, sb[k].dtype), sb[k]) for k in sa)


def _tuner_layers(module: torch.nn.Module):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in module.modules() if isinstance(m, BaseTunerLayer)]


def _has_adapters(module: torch.nn.Module) -> bool:
    """True when `module` holds adapter weights (peft wrappers emptied by a refused LoRA do not count)."""
    config = getattr(module, "peft_config", None)
    return bool(config) or any(len(getattr(layer, "lora_A", {})) for layer in _tuner_layers(module))


def _set_adapter(module: torch.nn.Module | None, enabled: bool, layers: list | None = None) -> None:
    for layer in _tuner_layers(module) if layers is None else layers:
        layer.enable_adapters(enabled)
        # peft's enable_adapters(True) marks the adapter trainable again; an audit never trains it, and a
        # trainable adapter would make every gradient with respect to the latents build graphs for it too.
        for param in layer.parameters():
            param.requires_grad_(False)


def _remove_adapter(module: torch.nn.Module) -> None:
    """Best-effort removal of a half-loaded adapter, so a refused LoRA leaves the base model as it was."""
    with contextlib.suppress(Exception):
        for layer in _tuner_layers(module):
            if ADAPTER_NAME in getattr(layer, "lora_A", {}) or ADAPTER_NAME in getattr(layer, "lora_B", {}):
                layer.delete_adapter(ADAPTER_NAME)
            layer.enable_adapters(False)
        config = getattr(module, "peft_config", None)
        if isinstance(config, dict):
            config.pop(ADAPTER_NAME, None)
            if not config:
                del module.peft_config
        if hasattr(module, "_hf_peft_config_loaded") and not getattr(module, "peft_config", None):
            module._hf_peft_config_loaded = False


@contextlib.contextmanager
def _silenced(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _count_adapter_tensors(module: torch.nn.Module) -> int:
    return sum(1 for name, _ in module.named_parameters() if f".{ADAPTER_NAME}." in f"{name}." and "lora_" in name)


class ModelPair:
    """The base model and the suspect, with one set of weights when the suspect is a LoRA on the base.

    Attributes:
        base (`DiffusionModel`): the public base model (for a LoRA suspect: with the adapter loaded but off).
        prompt (`str`): the condition text given to both models.
        is_lora (`bool`): the suspect is the base with a LoRA switched on.
        source (`str`): the suspect, for reports.
    """

    def __init__(
        self, base: DiffusionModel, suspect: DiffusionModel, *, prompt: str = "", is_lora: bool = False,
        source: str | None = None,
    ) -> None:  # fmt: skip
        if not isinstance(prompt, str):
            raise InvalidArgumentError(f"`prompt` must be a string, but is {type(prompt).__name__}.")
        self.base = base
        self.prompt = prompt
        self.is_lora = bool(is_lora)
        self.source = source or suspect.source
        self._suspect = suspect
        self._lora_layers: list[torch.nn.Module] = []  # the peft layers the toggle switches
        self._active = "base"

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        base: str | os.PathLike | DiffusionModel,
        *,
        suspect: str | os.PathLike | DiffusionModel | None = None,
        lora: str | os.PathLike | None = None,
        prompt: str = "",
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> ModelPair:
        """Load (or take) the base model and the suspect.

        Args:
            base, suspect: a spec for :func:`artshield.models.load` or an already-loaded ``DiffusionModel``.
            lora: a LoRA folder or ``.safetensors`` file (what ``artshield finetune --method lora`` and
                diffusers write); exactly one of `suspect` and `lora`. It is loaded into `base`'s own UNet
                (and text encoder when it adapts it) and switched on only inside ``using("suspect")``; a
                loaded `base` is therefore changed in place (the adapter is off outside ``using``).
            prompt: the condition text for both models (default: the empty prompt).
            device, dtype: where and in which precision to run (default: the loader's policy; models
                given already loaded are moved when these are given).

        Raises:
            InvalidArgumentError: both or neither of `suspect` / `lora`. IncompatibleModelError: a suspect of
            another architecture, a LoRA that does not fit the base. ModelNotFoundError: no such LoRA.
        """
        if (suspect is None) == (lora is None):
            raise InvalidArgumentError("give exactly one of `suspect` (a fine-tuned model) and `lora` (a LoRA).")
        base_model = _obtain(base, device, dtype)
        if lora is not None:
            pair = cls(base_model, base_model, prompt=prompt, is_lora=True, source=f"LoRA {os.fspath(lora)}")
            pair._attach_lora(lora)
            return pair
        suspect_model = _obtain(suspect, device if device is not None else base_model.device,
                                dtype if dtype is not None else base_model.dtype)  # fmt: skip
        if suspect_model is base_model:
            raise InvalidArgumentError("the suspect is the base model itself; load the fine-tuned model as `suspect`.")
        check_compatible(base_model, suspect_model)
        if suspect_model.device != base_model.device or suspect_model.dtype != base_model.dtype:
            suspect_model.to(base_model.device, base_model.dtype)
        # Share the components the fine-tune left untouched (usually the VAE, often the text encoder).
        shared = {}
        for name in ("vae", "text_encoder"):
            if getattr(suspect_model, name) is not getattr(base_model, name) and _same_weights(
                getattr(suspect_model, name), getattr(base_model, name)
            ):
                shared[name] = getattr(base_model, name)
        if shared:
            suspect_model = dataclasses.replace(suspect_model, **shared)
        return cls(base_model, suspect_model, prompt=prompt, is_lora=False)

    def _attach_lora(self, path: str | os.PathLike) -> None:
        from ..compat import check_lora_stack

        base = self.base
        lora = Path(path).expanduser()
        where = f"LoRA {os.fspath(path)}"
        if not lora.exists():
            raise ModelNotFoundError(f"{where}: no such file or folder.")
        check_lora_stack(text_encoder=False)
        if _has_adapters(base.unet) or _has_adapters(base.text_encoder):
            raise InvalidArgumentError(
                f"base {base.source} already carries LoRA adapters; pass a freshly loaded base model."
            )
        from diffusers import StableDiffusionPipeline

        from ..models.components import quiet_loading
        from ..models.hub import first_line

        kwargs = {"weight_name": lora.name} if lora.is_file() else {}
        folder = lora.parent if lora.is_file() else lora
        with quiet_loading(), contextlib.ExitStack() as stack:
            try:
                state, alphas, metadata = StableDiffusionPipeline.lora_state_dict(
                    os.fspath(folder), return_lora_metadata=True, **kwargs
                )
            except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
                raise IncompatibleModelError(f"{where} could not be read as a LoRA ({first_line(exc)}).") from exc
            unet_keys = [k for k in state if k.startswith("unet.")]
            text_keys = [k for k in state if k.startswith("text_encoder.")]
            if not state or not all("lora" in k for k in state) or not (unet_keys or text_keys):
                raise IncompatibleModelError(
                    f"{where} is not a LoRA in the layout load_lora_weights reads (unet.*lora*, text_encoder.*lora* keys)."
                )
            if text_keys:
                check_lora_stack(text_encoder=True)
            modules = ([base.unet] if unet_keys else []) + ([base.text_encoder] if text_keys else [])
            try:
                stack.enter_context(_silenced("diffusers.loaders.peft"))  # it logs the error we raise, in lines
                if unet_keys:
                    StableDiffusionPipeline.load_lora_into_unet(
                        state, alphas, unet=base.unet, adapter_name=ADAPTER_NAME, metadata=metadata
                    )
                if text_keys:
                    StableDiffusionPipeline.load_lora_into_text_encoder(
                        state, alphas, text_encoder=base.text_encoder, adapter_name=ADAPTER_NAME, metadata=metadata
                    )
                for module, keys, label in ((base.unet, unet_keys, "UNet"), (base.text_encoder, text_keys, "text encoder")):
                    loaded = _count_adapter_tensors(module) if keys else 0
                    if keys and loaded != len(keys):
                        raise IncompatibleModelError(
                            f"{where} does not fit base {base.source}: its {len(keys)} {label} tensors made {loaded} "
                            "adapter weights (a layer, a pair or a shape does not match)."
                        )
            except (IncompatibleModelError, ModelLoadError):
                for module in modules:
                    _remove_adapter(module)
                raise
            except (ValueError, KeyError, RuntimeError, TypeError, AttributeError) as exc:
                for module in modules:
                    _remove_adapter(module)
                raise IncompatibleModelError(f"{where} does not fit base {base.source} ({first_line(exc)}).") from exc
            for module in modules:
                module.requires_grad_(False).eval()
                module.to(device=base.device, dtype=base.dtype)
                _set_adapter(module, False)
        self._lora_layers = [layer for module in modules for layer in _tuner_layers(module)]
        # The suspect handle shares every module with the base; it only needs its own prompt cache, since
        # the text encoder's output changes with the adapter when the LoRA adapts it.
        self._suspect = dataclasses.replace(base, source=f"{base.source} + {where}")
        base.clear_prompt_cache()

    # ------------------------------------------------------------------ switching
    @property
    def suspect(self) -> DiffusionModel:
        """The suspect's handle (for a LoRA, only meaningful inside ``using("suspect")``)."""
        return self._suspect

    @contextlib.contextmanager
    def using(self, which: str) -> Iterator[DiffusionModel]:
        """Yield the model to call: ``"base"`` or ``"suspect"`` (switching the LoRA on for the block)."""
        if which not in ("base", "suspect"):
            raise InvalidArgumentError(f"`which` must be 'base' or 'suspect', but is {which!r}.")
        model = self.base if which == "base" else self._suspect
        if not self.is_lora:
            yield model
            return
        previous = self._active
        self._switch(which)
        try:
            yield model
        finally:
            self._switch(previous)

    def _switch(self, which: str) -> None:
        if which != self._active:
            _set_adapter(None, which == "suspect", self._lora_layers)
            self._active = which

    # ------------------------------------------------------------------ shared operations
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] to scaled latent means, with the base model's VAE (shared)."""
        return self.base.encode(images, mode="mean")  # the VAE is never adapted: no switching needed

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents to images in [0, 1], with the base model's VAE."""
        return self.base.decode(latents)

    def embeddings(self, which: str, batch_size: int) -> torch.Tensor:
        """`which` model's own text embedding of :attr:`prompt`, repeated to `batch_size`."""
        with self.using(which) as model:
            return model.embed_prompt(self.prompt, batch_size=batch_size)

    def predict(self, which: str, noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """`which` model's raw UNet output (noise, v or sample) at `noisy`, conditioned on :attr:`prompt`."""
        timesteps = _as_timesteps(timesteps, noisy.shape[0], noisy.device)
        embeds = self.embeddings(which, noisy.shape[0])
        with self.using(which) as model:
            return model.predict_noise(noisy, timesteps, embeds)

    def losses(
        self, latents: torch.Tensor, timesteps: torch.Tensor | int, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample diffusion losses ``(L_pre, L_ft)``, each (B,), of the base and the suspect at the same
        noised input ``z_t = add_noise(latents, noise, timesteps)``.

        Both models see the same `latents`, `timesteps` and `noise`, each with its own text embedding of
        :attr:`prompt`; the target follows the prediction type (ε, v or x₀). Differentiable with respect to
        `latents`, in float32 whatever the weights' precision.
        """
        if latents.dim() != 4 or noise.shape != latents.shape:
            raise InvalidArgumentError(
                f"`latents` must be (B, C, h, w) and `noise` the same shape, but are {tuple(latents.shape)} and "
                f"{tuple(noise.shape)}."
            )
        latents = latents.float()
        noise = noise.to(device=latents.device, dtype=torch.float32)
        timesteps = _as_timesteps(timesteps, latents.shape[0], latents.device)
        noisy = self.base.add_noise(latents, noise, timesteps)
        target = self.base.training_target(latents, noise, timesteps)
        out = []
        for which in ("base", "suspect"):
            prediction = self.predict(which, noisy, timesteps)
            out.append(F.mse_loss(prediction, target.to(prediction.device), reduction="none").flatten(1).mean(dim=1))
        return out[0], out[1]

    def __repr__(self) -> str:
        kind = "LoRA" if self.is_lora else "model"
        return f"ModelPair(base={self.base.source!r}, suspect {kind}={self.source!r}, prompt={self.prompt!r})"


def _as_timesteps(timesteps: torch.Tensor | int, batch: int, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(timesteps, dtype=torch.long, device=device)
    if t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise InvalidArgumentError(f"`timesteps` must be one int or a ({batch},) tensor, but has shape {tuple(t.shape)}.")
    return t


def _obtain(spec, device, dtype) -> DiffusionModel:
    if isinstance(spec, DiffusionModel):
        if device is not None or dtype is not None:
            target_device = resolve_device(device) if device is not None else spec.device
            target_dtype = resolve_dtype(dtype, target_device) if dtype is not None else spec.dtype
            if (target_device, target_dtype) != (spec.device, spec.dtype):
                spec.to(target_device, target_dtype)
        return spec
    return load(spec, device=device, dtype=dtype)


__all__ = ["ADAPTER_NAME", "ModelPair", "check_compatible"]
