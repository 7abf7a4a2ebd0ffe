"""The five components of a Stable Diffusion model as the loaders build them: what a diffusers folder must
hold, ``from_pretrained`` that refuses missing weights, the check that the parts fit together, and the
silencing of the libraries' per-load chatter.

Imported by :mod:`.loading` (folders and hub ids) and :mod:`.single_file` (original-format files), which
therefore never import each other's helpers.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import IncompatibleModelError

COMPONENTS = ("vae", "unet", "text_encoder", "tokenizer", "scheduler")
# What a diffusers Stable Diffusion folder must hold (relative paths), per component.
FOLDER_LAYOUT = {
    "vae": "vae/config.json",
    "unet": "unet/config.json",
    "text_encoder": "text_encoder/config.json",
    "tokenizer": "tokenizer",
    "scheduler": "scheduler/scheduler_config.json",
}
WEIGHT_COMPONENTS = ("vae", "unet", "text_encoder")


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence diffusers' and transformers' per-load chatter ("Loading weights" bars, load reports, the
    spurious fp32-modules warning) and restore the caller's settings afterwards.

    Errors still raise; problems those warnings would have reported (missing or mismatched weights) are
    checked explicitly by the loaders instead. Hub *download* progress bars stay as they were: a
    multi-gigabyte download needs one. Not thread-safe (the libraries' verbosity is global).
    """
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as transformers_logging

    saved_diffusers = diffusers_logging.get_verbosity()
    saved_transformers = transformers_logging.get_verbosity()
    diffusers_bars = diffusers_logging.is_progress_bar_enabled()
    transformers_bars = transformers_logging.is_progress_bar_enabled()
    hub_bars_off = are_progress_bars_disabled()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()  # also turns the hub's bars off: turn them back on below
    if not hub_bars_off:
        enable_progress_bars()
    try:
        with warnings.catch_warnings():
            # diffusers still passes this retired argument to huggingface_hub on every hub load.
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
            yield
    finally:
        diffusers_logging.set_verbosity(saved_diffusers)
        transformers_logging.set_verbosity(saved_transformers)
        if diffusers_bars:
            diffusers_logging.enable_progress_bar()
        if transformers_bars:
            transformers_logging.enable_progress_bar()
        # transformers' enable/disable also flip the hub's switch: put the hub's back as it was.
        if hub_bars_off:
            disable_progress_bars()
        else:
            enable_progress_bars()


def transformers_dtype_kwarg() -> str:
    """transformers 5 renamed `torch_dtype` to `dtype` (the old name still works, with a warning)."""
    import transformers

    return "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"


def load_pretrained_model(cls, source: str | Path, subfolder: str, where: str, **kwargs):
    """`cls.from_pretrained` that fails on missing or mis-shaped weights instead of leaving them random
    (transformers) or on the meta device (diffusers) with only a log line to say so."""
    model, info = cls.from_pretrained(source, subfolder=subfolder, output_loading_info=True, **kwargs)
    missing = sorted(info.get("missing_keys") or [])
    mismatched = [str(m[0]) if isinstance(m, tuple | list) else str(m) for m in info.get("mismatched_keys") or []]
    if missing or mismatched:
        bad = missing or mismatched
        kind = "missing from" if missing else "of the wrong shape in"
        raise IncompatibleModelError(
            f"{where}: {len(bad)} {subfolder} weights are {kind} its weights file (e.g. {', '.join(bad[:3])}); "
            f"the weights do not match {subfolder}/config.json."
        )
    return model


def check_components(unet, text_encoder, vae, where: str) -> None:
    """Reject checkpoints whose parts do not fit together as an SD 1.x/2.x text-to-image/inpainting model."""
    in_channels = unet.config.in_channels
    if in_channels not in (4, 9):
        raise IncompatibleModelError(
            f"{where}: the UNet takes {in_channels} input channels; artshield supports 4 (text-to-image) and 9 (inpainting)."
        )
    if getattr(unet.config, "addition_embed_type", None) or getattr(unet.config, "class_embed_type", None):
        raise IncompatibleModelError(
            f"{where}: the UNet uses added conditioning (SDXL-style or class embeddings), which is not supported."
        )
    hidden = text_encoder.config.hidden_size
    if unet.config.cross_attention_dim != hidden:
        raise IncompatibleModelError(
            f"{where}: the UNet's cross_attention_dim is {unet.config.cross_attention_dim} but the text encoder's "
            f"hidden size is {hidden}; the components come from different models."
        )
    if vae.config.latent_channels != unet.config.out_channels:
        raise IncompatibleModelError(
            f"{where}: the VAE has {vae.config.latent_channels} latent channels but the UNet predicts "
            f"{unet.config.out_channels}."
        )


__all__ = [
    "COMPONENTS",
    "FOLDER_LAYOUT",
    "WEIGHT_COMPONENTS",
    "check_components",
    "load_pretrained_model",
    "quiet_loading",
    "transformers_dtype_kwarg",
]
