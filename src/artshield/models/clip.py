"""CLIP (open_clip) from weights already on this machine: the one loader every CLIP user in artshield calls.

artshield never downloads CLIP weights. :func:`load_clip` looks for them, without touching the network
(whatever ``HF_HUB_OFFLINE`` says), in this order:

1. ``pretrained`` is a file: a ``.safetensors`` file (preferred), or a ``.bin`` / ``.pt`` / ``.pth``
   state dict, read only with ``torch.load(weights_only=True)``; never a plain pickle, never TorchScript.
2. ``pretrained`` is an open_clip tag (``ViT-B-32`` / ``laion2b_s34b_b79k``): the files open_clip itself
   would download for that tag, in the local Hugging Face cache (``$HF_HUB_CACHE``, by default
   ``~/.cache/huggingface/hub``): ``open_clip_model.safetensors`` first, then
   ``open_clip_pytorch_model.bin``. Put them there once on a machine with network access, e.g.
   ``huggingface-cli download laion/CLIP-ViT-B-32-laion2B-s34B-b79K open_clip_model.safetensors``.

When the weights are not there (or open_clip is not installed, or the file does not fit the
architecture) it returns ``(None, reason)``: one sentence saying what is missing and how to enable it.
A tag's own settings (QuickGELU, normalisation mean/std) are applied, so ``ViT-B-32`` / ``openai`` from a
local file embeds exactly as open_clip's tag would.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

DEFAULT_ARCH = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
#: Suffixes of weight files loaded as given: safetensors, or a state dict read with weights_only=True.
SAFE_SUFFIXES = (".safetensors",)
STATE_DICT_SUFFIXES = (".bin", ".pt", ".pth")
#: Files of an open_clip Hugging Face repository, in order of preference.
HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
#: CLIP's normalisation when the model does not carry its own.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

_HOW = ("pip install 'artshield[metrics]' and put open_clip's {arch}/{tag} weights in the Hugging Face cache "
        "(download them once where there is network), or pass a weights file")


@dataclass
class ClipModel:
    """A loaded open_clip model with its image transform and tokenizer.

    Attributes:
        model: the open_clip model (eval mode, no gradients).
        preprocess: open_clip's own transform for one PIL image (resize, centre crop, normalise).
        tokenizer: open_clip's tokenizer for the architecture.
        arch, pretrained: what was asked for; path: the weights file that was read.
    """

    model: torch.nn.Module
    preprocess: Callable[[Any], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]
    arch: str
    pretrained: str
    path: Path

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> ClipModel:
        self.model.to(torch.device(device))
        return self

    def describe(self) -> str:
        return f"{self.arch} ({self.path.name})"

    def _image_settings(self) -> tuple[tuple[int, int], torch.Tensor, torch.Tensor]:
        visual = self.model.visual
        size = visual.image_size if isinstance(visual.image_size, tuple) else (visual.image_size, visual.image_size)
        mean = torch.tensor(getattr(visual, "image_mean", None) or OPENAI_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(getattr(visual, "image_std", None) or OPENAI_STD).view(1, 3, 1, 1)
        return size, mean, std

    def preprocess_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP's transform on a (B, 3, H, W) [0, 1] batch: bicubic resize of the short side, centre crop,
        normalise (greyscale (B, 1, H, W) is repeated to RGB)."""
        from ..imageio import as_rgb

        images = as_rgb(images).float()
        if images.dim() == 3:
            images = images[None]
        size, mean, std = self._image_settings()
        h, w = images.shape[-2:]
        scale = max(size[0] / h, size[1] / w)
        resized = F.interpolate(images, size=(max(size[0], round(h * scale)), max(size[1], round(w * scale))),
                                mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        top, left = (resized.shape[-2] - size[0]) // 2, (resized.shape[-1] - size[1]) // 2
        crop = resized[..., top : top + size[0], left : left + size[1]]
        return (crop - mean.to(crop)) / std.to(crop)

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, D) L2-normalised image embeddings (float32, CPU) of a [0, 1] image batch."""
        batch = self.preprocess_tensor(images.cpu()).to(self.device)
        return F.normalize(self.model.encode_image(batch).float(), dim=-1).cpu()

    @torch.no_grad()
    def embed_pil(self, images: Sequence[Any]) -> torch.Tensor:
        """(B, D) L2-normalised image embeddings (float32, CPU) of PIL images, through open_clip's transform."""
        batch = torch.stack([self.preprocess(im.convert("RGB")) for im in images]).to(self.device)
        return F.normalize(self.model.encode_image(batch).float(), dim=-1).cpu()

    @torch.no_grad()
    def embed_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """(B, D) L2-normalised text embeddings (float32, CPU)."""
        tokens = self.tokenizer(list(prompts)).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu()


def hub_cache_dir() -> str:
    """The Hugging Face hub cache folder searched for open_clip weights (read at call time)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def pretrained_config(arch: str, pretrained: str) -> dict:
    """open_clip's registry entry for an (architecture, tag) pair: ``hf_hub``, ``quick_gelu``, ``mean`` ...;
    empty when open_clip does not know the pair."""
    import open_clip

    return dict(open_clip.get_pretrained_cfg(arch, pretrained) or {})


def _is_path_like(pretrained: str) -> bool:
    return (os.sep in pretrained or (os.altsep or os.sep) in pretrained
            or pretrained.lower().endswith(SAFE_SUFFIXES + STATE_DICT_SUFFIXES))


def find_clip_weights(
    arch: str = DEFAULT_ARCH, pretrained: str = DEFAULT_PRETRAINED, *, cache_dir: str | os.PathLike | None = None
) -> tuple[Path | None, str | None]:
    """``(path, None)`` of the weights on disk, or ``(None, reason)``. Never touches the network.

    `pretrained` is a weights file or an open_clip tag (looked up in the Hugging Face cache `cache_dir`,
    default :func:`hub_cache_dir`).
    """
    how = _HOW.format(arch=arch, tag=pretrained)
    if os.path.isfile(pretrained):
        suffix = Path(pretrained).suffix.lower()
        if suffix in SAFE_SUFFIXES + STATE_DICT_SUFFIXES:
            return Path(pretrained), None
        return None, (f"CLIP weights {pretrained} are neither .safetensors nor a .bin/.pt/.pth state dict "
                      "(other pickles are not loaded)")
    if _is_path_like(pretrained):
        return None, f"CLIP weights {pretrained}: no such file"
    try:
        cfg = pretrained_config(arch, pretrained)
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken torchvision underneath open_clip
        return None, f"open_clip cannot be imported ({exc}). To enable CLIP: {how}"
    if not cfg:
        return None, f"{arch}/{pretrained} is not an open_clip architecture/tag pair; pass a weights file instead"
    hub = str(cfg.get("hf_hub", "")).strip()
    if not hub:
        return None, f"open_clip knows no Hugging Face weights for {arch}/{pretrained}; pass a weights file instead"
    if hub.endswith("/"):
        repo, names = hub.rstrip("/"), list(HUB_FILES)
    else:
        repo, filename = hub.rsplit("/", 1)
        stem = filename.rsplit(".", 1)[0]
        names = [f"{stem}.safetensors", filename] if not filename.endswith(".safetensors") else [filename]
    from huggingface_hub import try_to_load_from_cache

    cache = str(cache_dir) if cache_dir is not None else hub_cache_dir()
    for name in names:
        found = try_to_load_from_cache(repo, name, cache_dir=cache)
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found), None
    return None, (f"the CLIP {arch}/{pretrained} weights ({' or '.join(names)} of {repo}) are not on disk in the "
                  f"Hugging Face cache {cache} and artshield does not download them. To enable CLIP: {how}")


def load_clip(
    arch: str = DEFAULT_ARCH,
    pretrained: str = DEFAULT_PRETRAINED,
    *,
    device: torch.device | str = "cpu",
    cache_dir: str | os.PathLike | None = None,
) -> tuple[ClipModel | None, str | None]:
    """``(ClipModel, None)`` when the weights are on disk and fit `arch`, else ``(None, reason)``.

    `pretrained` is an open_clip tag or a weights file (see the module docstring for where weights are
    looked for). Nothing is downloaded; ``.bin``/``.pt`` files are read with ``torch.load(weights_only=True)``.
    """
    if ":" in arch:
        return None, f"{arch}: give an open_clip architecture name (e.g. ViT-B-32), not a hub or folder schema"
    try:
        import open_clip
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken torchvision underneath it
        return None, f"open_clip cannot be imported ({exc}). To enable CLIP: {_HOW.format(arch=arch, tag=pretrained)}"
    path, reason = find_clip_weights(arch, pretrained, cache_dir=cache_dir)
    if path is None:
        return None, reason
    cfg = {} if os.path.isfile(pretrained) else pretrained_config(arch, pretrained)
    if path.suffix.lower() in STATE_DICT_SUFFIXES:
        # Checked here with weights_only=True, so open_clip's own read (same flag) cannot fall back to a plain
        # pickle load on an odd file.
        try:
            torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # noqa: BLE001 - UnpicklingError (custom objects), a zip error, a truncated file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            return None, (f"CLIP weights {path} are not a plain state dict that torch.load(weights_only=True) "
                          f"accepts ({type(exc).__name__}: {first[:200]}); pickles are not loaded")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            arch,
            pretrained=str(path),  # a file: open_clip reads it (safetensors, or torch.load weights_only=True)
            weights_only=True,
            device=torch.device(device),
            force_quick_gelu=bool(cfg.get("quick_gelu", False)),
            image_mean=cfg.get("mean"),
            image_std=cfg.get("std"),
            image_interpolation=cfg.get("interpolation"),
            image_resize_mode=cfg.get("resize_mode"),
            pretrained_image=False,
            pretrained_text=False,
        )
        tokenizer = open_clip.get_tokenizer(arch)
    except Exception as exc:  # noqa: BLE001 - unknown architecture, a corrupt file, a pickle, mismatched shapes
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return None, f"loading CLIP {arch} from {path} failed ({type(exc).__name__}: {first[:300]})"
    model.eval().requires_grad_(False)
    return ClipModel(model=model, preprocess=preprocess, tokenizer=tokenizer, arch=arch, pretrained=pretrained,
                     path=path), None


__all__ = [
    "DEFAULT_ARCH",
    "DEFAULT_PRETRAINED",
    "HUB_FILES",
    "ClipModel",
    "find_clip_weights",
    "hub_cache_dir",
    "load_clip",
    "pretrained_config",
]
