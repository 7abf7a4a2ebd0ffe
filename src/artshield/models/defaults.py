"""Which model a command uses when the user names none: a real Stable Diffusion checkpoint already in the
local Hugging Face cache, else the demo model, said out loud.

The demo model shows the mechanics of every method on any machine, but a protection computed on it does
not protect against real mimicry. So a command that was given no ``--model`` calls
:func:`choose_default_model`: it looks in the local Hugging Face hub cache (``HF_HUB_CACHE``, else
``HF_HOME/hub``, else ``~/.cache/huggingface/hub``; never the network) for a *complete* snapshot of one of
:data:`TEXT_TO_IMAGE_REPOS` (or :data:`INPAINTING_REPOS` for methods that model an inpainting edit) and
returns the first it finds; otherwise the demo model with a :data:`DEMO_MODEL_WARNING` to print, and to
store in reports and output metadata.

A snapshot is complete when its ``model_index.json``, the configs of the VAE, UNet, text encoder and
scheduler, the tokenizer and the three safetensors weight files (the names ``from_pretrained`` reads
without a variant) are all present. Partial downloads are ignored.

This module imports only the standard library and, lazily, ``huggingface_hub``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

#: Text-to-image checkpoints a default may be, best first (SD 1.5 under its current and former ids, SD 2.1).
TEXT_TO_IMAGE_REPOS: tuple[str, ...] = (
    "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "runwayml/stable-diffusion-v1-5",
    "stabilityai/stable-diffusion-2-1-base",
    "stabilityai/stable-diffusion-2-1",
)
#: Inpainting checkpoints a default may be, for methods that model an inpainting edit.
INPAINTING_REPOS: tuple[str, ...] = (
    "stable-diffusion-v1-5/stable-diffusion-inpainting",
    "runwayml/stable-diffusion-inpainting",
    "stabilityai/stable-diffusion-2-inpainting",
)
#: Files (relative to a snapshot) that must all exist for the snapshot to count as complete.
REQUIRED_FILES: tuple[str, ...] = (
    "model_index.json",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "scheduler/scheduler_config.json",
    "tokenizer/tokenizer_config.json",
)


def download_command(repo_id: str) -> str:
    """The `hf download` command that fetches what artshield needs of `repo_id` (about 4-5 GB for SD 1.5,
    not the 40 GB of every variant and single-file copy the repository also holds)."""
    patterns = ("*.json", "*.txt", "*/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors")
    return f"hf download {repo_id} " + " ".join(f"--include '{p}'" for p in patterns)


def demo_model_warning(inpainting: bool = False) -> str:
    """The one-line warning every use of the demo model carries (stderr, report, PNG metadata)."""
    repo = INPAINTING_REPOS[0] if inpainting else TEXT_TO_IMAGE_REPOS[0]
    return (
        "the demo model is a demonstration model: it does NOT protect against real mimicry. For real protection "
        f"download a Stable Diffusion checkpoint once ({download_command(repo)}) and run again without --model, "
        "or pass --model with a hub id, a diffusers folder or a .safetensors file."
    )


#: The warning for the text-to-image demo model.
DEMO_MODEL_WARNING = demo_model_warning(False)


@dataclass(frozen=True)
class DefaultModel:
    """The model to use when none was named.

    Attributes:
        spec: what to pass to :func:`artshield.models.load`: ``"demo"``/``"demo-inpaint"``, or the local
            snapshot folder of a cached checkpoint (loaded as a folder: no network, no update check).
        name: what to call it: ``"demo"``/``"demo-inpaint"`` or the hub id.
        is_demo: whether it is the demo model.
        notice: one line for stderr saying which model and why (for the demo, :func:`demo_model_warning`).
    """

    spec: str
    name: str
    is_demo: bool
    notice: str


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder, read from the environment now (the hub client reads it once, at
    import): ``HF_HUB_CACHE`` (or the older ``HUGGINGFACE_HUB_CACHE``), else ``$HF_HOME/hub``, else
    ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.environ[name]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(xdg).expanduser() / "huggingface" / "hub"


def is_complete_snapshot(folder: Path) -> bool:
    """Whether a snapshot folder holds every file of :data:`REQUIRED_FILES` (symbolic links into the
    cache's blobs must resolve)."""
    return all((folder / name).is_file() for name in REQUIRED_FILES)


def cached_snapshot(repo_id: str, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The folder of a complete cached snapshot of `repo_id`: the one ``main`` points to, else the newest
    complete one; None if there is none. Reads the cache only."""
    cache = Path(cache_dir) if cache_dir is not None else hub_cache_dir()
    if not cache.is_dir():
        return None
    candidates: list[Path] = []
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "model_index.json", cache_dir=str(cache))
        if isinstance(found, str):
            candidates.append(Path(found).parent)
    except Exception as exc:  # noqa: BLE001 - a broken cache or an old client means "not found", not a crash
        logger.info("could not query the Hugging Face cache for %s: %s", repo_id, exc)
    snapshots = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    try:
        others = sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        others = []
    candidates.extend(others)
    for folder in candidates:
        if is_complete_snapshot(folder):
            return folder
    return None


def choose_default_model(*, inpainting: bool = False, cache_dir: str | os.PathLike | None = None) -> DefaultModel:
    """The model to use when none was named: the first complete cached checkpoint of
    :data:`INPAINTING_REPOS` (if `inpainting`) or :data:`TEXT_TO_IMAGE_REPOS`, else the demo model
    (``"demo-inpaint"`` if `inpainting`) with :func:`demo_model_warning` as its notice. Never downloads."""
    for repo_id in INPAINTING_REPOS if inpainting else TEXT_TO_IMAGE_REPOS:
        folder = cached_snapshot(repo_id, cache_dir)
        if folder is not None:
            return DefaultModel(
                spec=str(folder),
                name=repo_id,
                is_demo=False,
                notice=f"no --model given: using {repo_id}, found in the local Hugging Face cache ({folder}); "
                "pass --model to choose another.",
            )
    name = "demo-inpaint" if inpainting else "demo"
    return DefaultModel(spec=name, name=name, is_demo=True, notice=demo_model_warning(inpainting))


__all__ = [
    "DEMO_MODEL_WARNING",
    "INPAINTING_REPOS",
    "REQUIRED_FILES",
    "TEXT_TO_IMAGE_REPOS",
    "DefaultModel",
    "cached_snapshot",
    "choose_default_model",
    "demo_model_warning",
    "download_command",
    "hub_cache_dir",
    "is_complete_snapshot",
]
