"""CLIP score (cosine similarity of image and prompt embeddings), when open_clip's weights are on disk.

Like LPIPS (:mod:`artshield.metrics`), this is a "when the weights are present" metric: artshield never
downloads them. They are found by :func:`artshield.models.clip.load_clip`, without touching the network, as

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
import threading

import torch

from ..models.clip import DEFAULT_ARCH, DEFAULT_PRETRAINED, ClipModel, hub_cache_dir, load_clip

logger = logging.getLogger(__name__)

DEFAULT_MODEL = (DEFAULT_ARCH, DEFAULT_PRETRAINED)
# One load per (model, tag, cache folder) and process: a changed HF cache is looked at afresh.
_CACHE: dict[tuple[str, str, str], ClipModel | str] = {}
_LOCK = threading.Lock()


def _get(model_name: str, pretrained: str) -> ClipModel | str:
    """The loaded model, or the reason (str) CLIP score is unavailable."""
    with _LOCK:
        key = (model_name, pretrained, hub_cache_dir())
        if key not in _CACHE:
            clip, reason = load_clip(model_name, pretrained)
            _CACHE[key] = clip if clip is not None else f"CLIP score is unavailable: {reason}."
            if isinstance(_CACHE[key], str):
                logger.warning("%s", _CACHE[key])
        return _CACHE[key]


def clip_unavailable_reason(model_name: str = DEFAULT_MODEL[0], pretrained: str = DEFAULT_MODEL[1]) -> str | None:
    """None when the CLIP score works here, else why not (and how to enable it)."""
    loaded = _get(model_name, pretrained)
    return loaded if isinstance(loaded, str) else None


@torch.no_grad()
def clip_score(images: torch.Tensor, prompts: list[str], model_name: str = DEFAULT_MODEL[0],
               pretrained: str = DEFAULT_MODEL[1]) -> torch.Tensor | None:
    """(B,) CLIP score of each [0, 1] image (B, 3, H, W) against its prompt; None when CLIP is unavailable."""
    loaded = _get(model_name, pretrained)
    if isinstance(loaded, str):
        return None
    cosine = (loaded.embed_images(images) * loaded.embed_text(prompts)).sum(-1)
    return (100.0 * cosine).clamp(min=0.0)


__all__ = ["DEFAULT_MODEL", "clip_score", "clip_unavailable_reason"]
