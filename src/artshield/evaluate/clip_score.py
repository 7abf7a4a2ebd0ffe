"""CLIP score (cosine similarity of image and prompt embeddings), when open_clip's weights are on disk.

Like LPIPS (:mod:`.metrics`), this is a "when the weights are present" metric: artshield never downloads
them. The weights are found, without touching the network, as

* a local file given as ``pretrained`` (``.safetensors``, or a ``.bin``/``.pt`` read with
  ``weights_only=True``), or
* the Hugging Face cache entry open_clip itself would download for ``(model_name, pretrained)``, e.g.
  ``ViT-B-32`` / ``laion2b_s34b_b79k`` (``huggingface-cli download laion/CLIP-ViT-B-32-laion2B-s34B-b79K``
  on a machine with network access, then copy the cache).

When neither is there, :func:`clip_score` returns None and :func:`clip_unavailable_reason` says why and how
to enable it. The score is 100 × cos(image, text), clipped at 0 (Hessel et al.'s CLIPScore convention
without the 2.5 weight), computed after CLIP's own resize, centre crop and normalisation.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

DEFAULT_MODEL = ("ViT-B-32", "laion2b_s34b_b79k")
_CACHE: dict[tuple[str, str], Any] = {}
_LOCK = threading.Lock()


def _local_weights(model_name: str, pretrained: str) -> str | None:
    """Path of the weights on disk, or None."""
    if os.path.isfile(pretrained):
        return pretrained
    from huggingface_hub import try_to_load_from_cache
    from open_clip import pretrained as registry

    cfg = registry.get_pretrained_cfg(model_name, pretrained)
    hub = cfg.get("hf_hub", "") if cfg else ""
    if not hub:
        return None
    repo, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
    names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    for name in names:
        found = try_to_load_from_cache(repo, name)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def _load(model_name: str, pretrained: str) -> Any:
    """(model, preprocess tensors, tokenizer), or the reason (str) CLIP is unavailable."""
    how = (f"To enable it: pip install 'artshield[metrics]' and put open_clip's {model_name}/{pretrained} weights in "
           "the Hugging Face cache (download them once where there is network), or pass a weights file.")
    try:
        import open_clip
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken torchvision underneath it
        return f"CLIP score is unavailable: open_clip cannot be imported ({exc}). {how}"
    try:
        path = _local_weights(model_name, pretrained)
    except Exception as exc:  # noqa: BLE001 - an unknown model/tag pair
        return f"CLIP score is unavailable: {model_name}/{pretrained} is not an open_clip model ({exc})."
    if path is None:
        return f"CLIP score is unavailable: the {model_name}/{pretrained} weights are not on disk and artshield does not download them. {how}"
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=path)
        tokenizer = open_clip.get_tokenizer(model_name)
    except Exception as exc:  # noqa: BLE001 - a corrupt or mismatched file
        return f"CLIP score is unavailable: loading {path} failed ({type(exc).__name__}: {exc})."
    model.eval().requires_grad_(False)
    visual = model.visual
    size = visual.image_size if isinstance(visual.image_size, tuple) else (visual.image_size, visual.image_size)
    mean = torch.tensor(getattr(visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
    std = torch.tensor(getattr(visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
    return model, (size, mean, std), tokenizer


def _get(model_name: str, pretrained: str) -> Any:
    with _LOCK:
        key = (model_name, pretrained)
        if key not in _CACHE:
            _CACHE[key] = _load(model_name, pretrained)
            if isinstance(_CACHE[key], str):
                logger.warning("%s", _CACHE[key])
        return _CACHE[key]


def clip_unavailable_reason(model_name: str = DEFAULT_MODEL[0], pretrained: str = DEFAULT_MODEL[1]) -> str | None:
    """None when the CLIP score works here, else why not (and how to enable it)."""
    loaded = _get(model_name, pretrained)
    return loaded if isinstance(loaded, str) else None


def _preprocess(images: torch.Tensor, size: tuple[int, int], mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """CLIP's transform on tensors: bicubic resize of the short side, centre crop, normalise."""
    h, w = images.shape[-2:]
    scale = max(size[0] / h, size[1] / w)
    resized = F.interpolate(images, size=(max(size[0], round(h * scale)), max(size[1], round(w * scale))),
                            mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    top, left = (resized.shape[-2] - size[0]) // 2, (resized.shape[-1] - size[1]) // 2
    crop = resized[..., top : top + size[0], left : left + size[1]]
    return (crop - mean.to(crop)) / std.to(crop)


@torch.no_grad()
def clip_score(images: torch.Tensor, prompts: list[str], model_name: str = DEFAULT_MODEL[0],
               pretrained: str = DEFAULT_MODEL[1]) -> torch.Tensor | None:
    """(B,) CLIP score of each [0, 1] image (B, 3, H, W) against its prompt; None when CLIP is unavailable."""
    loaded = _get(model_name, pretrained)
    if isinstance(loaded, str):
        return None
    model, (size, mean, std), tokenizer = loaded
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    image_embeds = F.normalize(model.encode_image(_preprocess(images.float().cpu(), size, mean, std)), dim=-1)
    text_embeds = F.normalize(model.encode_text(tokenizer(list(prompts))), dim=-1)
    return (100.0 * (image_embeds * text_embeds).sum(-1)).clamp(min=0.0)


__all__ = ["DEFAULT_MODEL", "clip_score", "clip_unavailable_reason"]
