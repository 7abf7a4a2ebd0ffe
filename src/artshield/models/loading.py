"""Turn a model specification into a :class:`DiffusionModel`.

A specification is ``"demo"`` (or ``"demo-inpaint"``, its inpainting variant), a Hugging Face hub id
(``stabilityai/stable-diffusion-2-1-base``, read through the normal Hugging Face cache), a local diffusers
folder, or a single checkpoint file (``.safetensors``; ``.ckpt``/``.pt`` pickles only with ``trust_pickle=True``,
then only through ``torch.load(weights_only=True)``). The demo model and real checkpoints go through the same
code.

Every failure a user can cause (no such path, not cached while offline, an SDXL folder, components that
do not fit together, a corrupt file) is raised as one of the :mod:`artshield.errors` classes with a
one-line message; diffusers/transformers/huggingface_hub exceptions never escape, and their progress
bars and loading chatter are silenced while loading.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from ..errors import (
    IncompatibleModelError,
    InvalidArgumentError,
    ModelLoadError,
    ModelNotFoundError,
    UntrustedCheckpointError,
)
from .components import (
    FOLDER_LAYOUT,
    WEIGHT_COMPONENTS,
    check_components,
    load_pretrained_model,
    quiet_loading,
    transformers_dtype_kwarg,
)
from .device import resolve_compute_dtype, resolve_device, resolve_dtype
from .handle import DiffusionModel
from .hub import first_line, hub_error_message, hub_errors, hub_online, looks_like_hub_id
from .single_file import load_single_file

logger = logging.getLogger(__name__)

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
DEMO_INPAINT_UNET = "unet_inpaint"  # the demo model's inpainting UNet, a subfolder of its weights
_UNSUPPORTED_PIPELINES = {
    "StableDiffusion3Pipeline": "Stable Diffusion 3",
    "FluxPipeline": "FLUX",
    "StableCascadePriorPipeline": "Stable Cascade",
    "StableDiffusionUpscalePipeline": "Stable Diffusion x4 upscaler",
    "StableDiffusionInstructPix2PixPipeline": "InstructPix2Pix",
    "StableUnCLIPPipeline": "Stable unCLIP",
    "StableUnCLIPImg2ImgPipeline": "Stable unCLIP",
}


def load(
    spec: str | os.PathLike = "demo",
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    compute_dtype: str | torch.dtype | None = "auto",
    low_memory: bool = False,
    config: str | os.PathLike | None = None,
    trust_pickle: bool = False,
    revision: str | None = None,
    variant: str | None = None,
) -> DiffusionModel:
    """Load a Stable Diffusion model and return a frozen :class:`DiffusionModel` on `device`.

    Args:
        spec (`str` or path, defaults to `"demo"`): ``"demo"``, ``"demo-inpaint"``, a hub id, a diffusers folder
            or a single file. ``"demo-inpaint"`` is the demo model with its 9-channel inpainting UNet
            (``weights/unet_inpaint``, trained by :mod:`artshield.models.demo.train_inpaint`) and the same VAE,
            text encoder, tokenizer and scheduler.
        device (*optional*): ``"auto"``/None (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ...
        dtype (*optional*): weights' precision; None picks bf16/fp16 on accelerators and fp32 on the CPU.
        compute_dtype (defaults to ``"auto"``): the precision the VAE and UNet compute in, under autocast:
            auto picks bf16 on CPUs with native bf16 arithmetic for SD-size models (not the demo), and the
            weights' own dtype elsewhere; ``"fp32"``
            computes exactly in fp32 (see :func:`artshield.models.device.resolve_compute_dtype`).
        low_memory (`bool`, defaults to `False`): gradient checkpointing of the VAE and UNet
            (:meth:`DiffusionModel.enable_low_memory`): about half the activation memory for a third more time.
        config (*optional*): for single files only, a diffusers folder or hub id whose component configs
            match the checkpoint. Without it the configs diffusers itself would pick (SD 1.5, SD 2.1 or
            their inpainting models) are read from the Hugging Face cache, or downloaded (a few KB) when
            online; offline with nothing cached it is required.
        trust_pickle (`bool`, defaults to `False`): allow pickle weights (``.ckpt``/``.pt``/``.pth``/``.bin``
            files, or folders that only hold ``.bin`` weights), read with ``torch.load(weights_only=True)``,
            never a full unpickle.
        revision, variant (*optional*): passed to ``from_pretrained`` for hub ids (e.g. ``variant="fp16"``).

    Raises:
        ModelNotFoundError: no such file/folder, a hub id that is neither cached nor downloadable, or demo
            weights that are missing.
        IncompatibleModelError: the files exist but are not a usable SD 1.x/2.x model (SDXL, a LoRA, a
            truncated file, components that do not fit together, ...).
        UntrustedCheckpointError: pickle weights without ``trust_pickle=True``, or a pickle holding more than
            tensors.
        InvalidArgumentError: a bad device/dtype, or `config` given for something other than a single file.
    """
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    resolve_compute_dtype(compute_dtype, device, dtype)  # a bad value fails here, before anything loads
    spec_str = os.fspath(spec)
    with quiet_loading():
        if spec_str in ("demo", "demo-inpaint"):
            from .demo import DEMO_WEIGHTS

            if not (DEMO_WEIGHTS / "model_index.json").is_file():
                raise ModelNotFoundError(
                    f"the demo model's weights are missing from {DEMO_WEIGHTS}; reinstall artshield or run "
                    "`python -m artshield.models.demo.train --output-dir <folder>` and pass that folder."
                )
            unet = "unet" if spec_str == "demo" else DEMO_INPAINT_UNET
            if not (DEMO_WEIGHTS / unet / "config.json").is_file():
                raise ModelNotFoundError(
                    f"the demo inpainting UNet is missing from {DEMO_WEIGHTS / unet}; reinstall artshield or run "
                    f"`python -m artshield.models.demo.train_inpaint --output-dir {DEMO_WEIGHTS}` to train it."
                )
            _reject_config(config, f"the {spec_str} model")
            components = _load_folder(DEMO_WEIGHTS, dtype, trust_pickle=False, unet=unet)
            source = spec_str
        else:
            path = Path(spec_str).expanduser()
            if path.is_dir():
                _reject_config(config, f"folder {spec_str}")
                components = _load_folder(path, dtype, trust_pickle=trust_pickle)
            elif path.is_file():
                components = load_single_file(path, config=config, trust_pickle=trust_pickle, dtype=dtype)
            elif looks_like_hub_id(spec_str) and not spec_str.lower().endswith(SINGLE_FILE_SUFFIXES):
                _reject_config(config, f"hub id {spec_str}")
                components = _load_hub(spec_str, dtype, revision=revision, variant=variant, trust_pickle=trust_pickle)
            elif spec_str.lower().endswith(SINGLE_FILE_SUFFIXES) or os.sep in spec_str or "/" in spec_str:
                raise ModelNotFoundError(f"model {spec_str!r}: no such file or folder.")
            else:
                raise ModelNotFoundError(
                    f"model {spec_str!r} is neither 'demo', 'demo-inpaint', a hub id (owner/name), an existing folder "
                    "nor a file."
                )
            source = spec_str
        model = DiffusionModel(**components, source=source)
        # Inside quiet_loading: diffusers' `.to(dtype)` warns about fp32 modules even when there are none.
        model.to(device, dtype).freeze()
    model.compute_dtype = resolve_compute_dtype(
        compute_dtype, device, dtype, parameters=sum(p.numel() for p in model.unet.parameters())
    )
    model.use_preferred_layout()
    return model.enable_low_memory() if low_memory else model


def _reject_config(config: str | os.PathLike | None, what: str) -> None:
    if config is not None:
        raise InvalidArgumentError(
            f"`config` only applies to single checkpoint files, but is {os.fspath(config)!r} for {what}, which "
            "carries its own configs; leave it unset."
        )


# ---------------------------------------------------------------------------------------------- hub access
def _hub_model_index(repo_id: str, revision: str | None, online: bool) -> Path:
    """The repo's model_index.json on disk: from the cache offline, fetched (a few hundred bytes) online."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    if not online:
        cached = try_to_load_from_cache(repo_id, "model_index.json", revision=revision)
        if isinstance(cached, str):
            return Path(cached)
        raise ModelNotFoundError(_not_cached_message(repo_id))
    try:
        return Path(hf_hub_download(repo_id, "model_index.json", revision=revision))
    except Exception as exc:
        message = hub_error_message(repo_id, exc)
        if message:
            raise ModelNotFoundError(message) from exc
        errors = hub_errors()
        if "EntryNotFoundError" in errors and isinstance(exc, errors["EntryNotFoundError"]):
            raise IncompatibleModelError(
                f"hub repo {repo_id!r} has no model_index.json, so it is not a diffusers Stable Diffusion repository; "
                "if it ships a single .safetensors checkpoint, download that file and pass its path."
            ) from exc
        if isinstance(exc, OSError):
            raise ModelNotFoundError(_not_cached_message(repo_id) + f" ({first_line(exc)})") from exc
        raise


def _load_hub(
    repo_id: str, dtype: torch.dtype, *, revision: str | None, variant: str | None, trust_pickle: bool
) -> dict:
    online = hub_online()
    where = f"model {repo_id!r}"
    _check_model_index(_hub_model_index(repo_id, revision, online), where)
    kwargs: dict = {"revision": revision, "local_files_only": not online}
    if variant:
        kwargs["variant"] = variant
    try:
        components = _load_components(repo_id, dtype, where=where, trust_pickle=trust_pickle, **kwargs)
    except ModelLoadError:
        raise
    except OSError as exc:
        # huggingface_hub's offline/connection/not-found errors and diffusers' "no file named" are OSErrors.
        message = hub_error_message(repo_id, exc)
        if message:
            raise ModelNotFoundError(message) from exc
        if not online:
            raise ModelNotFoundError(
                f"{_not_cached_message(repo_id)} (only part of it is cached: {first_line(exc)})"
            ) from exc
        hint = ""
        if not trust_pickle and "safetensors" in str(exc):
            hint = " If the repository only ships pickle (.bin) weights, pass trust_pickle=True (--trust-pickle)."
        raise ModelNotFoundError(f"{where} could not be loaded: {first_line(exc)}.{hint}") from exc
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise IncompatibleModelError(f"{where} could not be loaded: {first_line(exc)}") from exc
    return components


def _not_cached_message(repo_id: str) -> str:
    local = f" (there is no local folder {repo_id!r} either)" if "/" in repo_id else ""
    return (
        f"model {repo_id!r} is not in the local Hugging Face cache and the hub cannot be reached{local}. Download "
        f"it once on a connected machine (`hf download {repo_id}`), or pass a local diffusers folder, a .safetensors "
        "file, or --model demo."
    )


# ---------------------------------------------------------------------------------------------- folders
def _check_model_index(index: Path, where: str) -> str:
    """Reject pipelines that are not SD 1.x/2.x text-to-image/inpainting before loading gigabytes."""
    try:
        pipeline_class = str(json.loads(index.read_text(encoding="utf-8")).get("_class_name", ""))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise IncompatibleModelError(f"{where}: model_index.json is not valid JSON ({first_line(exc)}).") from exc
    family = _UNSUPPORTED_PIPELINES.get(pipeline_class)
    if family is None and "XL" in pipeline_class:
        family = "SDXL"
    if family is not None:
        raise IncompatibleModelError(
            f"{where} holds a {family} pipeline ({pipeline_class}); artshield supports Stable Diffusion 1.x/2.x "
            "and their inpainting variants."
        )
    return pipeline_class


def _load_folder(folder: Path, dtype: torch.dtype, *, trust_pickle: bool, unet: str = "unet") -> dict:
    where = f"model folder {folder}"
    index = folder / "model_index.json"
    if index.is_file():
        _check_model_index(index, where)
    missing = [rel for rel in FOLDER_LAYOUT.values() if not (folder / rel).exists()]
    if missing:
        single_files = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in SINGLE_FILE_SUFFIXES)
        hint = (
            f" It holds {single_files[0]}: pass that file instead."
            if single_files
            else " Pass a folder saved by `pipeline.save_pretrained`, a single .safetensors file, or a hub id."
        )
        raise IncompatibleModelError(
            f"{where} is not a diffusers Stable Diffusion folder: missing {', '.join(missing)}.{hint}"
        )
    for name in WEIGHT_COMPONENTS:
        files = [p.name for p in (folder / name).iterdir() if p.is_file()]
        if any(f.endswith(".safetensors") for f in files):
            continue
        pickles = [f for f in files if f.endswith(SINGLE_FILE_SUFFIXES)]
        if not pickles:
            raise IncompatibleModelError(f"{where}: {name}/ has a config but no weights file.")
        if not trust_pickle:
            raise UntrustedCheckpointError(
                f"{where}: {name}/ only holds pickle weights ({pickles[0]}); pass trust_pickle=True (--trust-pickle) "
                "to read them with torch.load(weights_only=True), or convert the folder to safetensors."
            )
    try:
        return _load_components(folder, dtype, where=where, trust_pickle=trust_pickle, unet=unet, local_files_only=True)
    except ModelLoadError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise IncompatibleModelError(f"{where} could not be loaded: {first_line(exc)}") from exc


# ---------------------------------------------------------------------------------------------- components
def _load_components(
    source: str | Path, dtype: torch.dtype, *, where: str, trust_pickle: bool, unet: str = "unet", **hub_kwargs
) -> dict:
    """Load the five components from a folder or hub id laid out as a diffusers Stable Diffusion pipeline
    (the UNet from subfolder `unet`)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    weights = dict(hub_kwargs)
    if not trust_pickle:
        # Refuse pickle (.bin) weights unless trusted; local folders were checked up front with a clear message.
        weights["use_safetensors"] = True
    files = {k: v for k, v in hub_kwargs.items() if k != "variant"}
    vae = load_pretrained_model(AutoencoderKL, source, "vae", where, torch_dtype=dtype, **weights)
    unet = load_pretrained_model(UNet2DConditionModel, source, unet, where, torch_dtype=dtype, **weights)
    text_encoder = load_pretrained_model(
        CLIPTextModel, source, "text_encoder", where, **{transformers_dtype_kwarg(): dtype}, **weights
    )
    tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **files)
    # Training noise always follows DDPM's forward process, whichever sampler the checkpoint ships.
    scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler", **files)
    check_components(unet, text_encoder, vae, where)
    return {"vae": vae, "unet": unet, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler}


__all__ = ["load", "ModelLoadError"]
