"""Target images some protections pull towards: Mist's texture (tiled) and PhotoGuard's target (resized).

The texture is ``assets/mist_target.png``, drawn by ``assets/make_target.py``: a black-and-white,
high-frequency pattern with a 64-pixel period, our counterpart of Mist's ``MIST.png``. It is **tiled** over
the image at its own pixel scale, where the references resize image and pattern to 512² together: tiling
keeps the texture's frequency in latent cells the same at every image size and aspect ratio, and at 512²
it is what the references see. Latents of targets are computed once per image size, without gradient.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..imageio import as_rgb
from .base import as_batch

PATTERN_PATH = Path(__file__).with_name("assets") / "mist_target.png"


class TargetPattern:
    """A target image tiled to any size, and its VAE-mean latents, cached per size (no gradient)."""

    def __init__(self, model, target=None):
        self.model = model
        source = PATTERN_PATH if target is None else target
        self.image = as_rgb(as_batch(source)[0][:1]).float()
        self.description = "builtin:mist_target.png" if target is None else _describe(target)
        self._cache: dict[tuple, torch.Tensor] = {}

    def tiled(self, height: int, width: int) -> torch.Tensor:
        """(1, 3, height, width): the pattern repeated from the top-left corner and cropped."""
        reps = (-(-height // self.image.shape[-2]), -(-width // self.image.shape[-1]))
        return self.image.repeat(1, 1, *reps)[..., :height, :width]

    def latents(self, images: torch.Tensor) -> torch.Tensor:
        """The target's latents for a batch shaped like `images` (the VAE posterior mean)."""
        key = (*images.shape[-2:], images.device)
        if key not in self._cache:
            with torch.no_grad():
                tiled = self.tiled(*images.shape[-2:]).to(images.device)
                self._cache[key] = self.model.encode(tiled, mode="mean").detach()
        return self._cache[key].expand(images.shape[0], -1, -1, -1)


class TargetImage:
    """PhotoGuard's target: mid-grey (0 in [−1, 1]) or an image resized to each view's size (cached)."""

    def __init__(self, target=None):
        self.image = None if target is None else as_rgb(as_batch(target)[0][:1]).float()
        self.description = "mid-grey" if target is None else _describe(target)
        self._cache: dict[tuple, torch.Tensor] = {}

    def like(self, images: torch.Tensor) -> torch.Tensor:
        key = (*images.shape[-2:], images.device)
        if key not in self._cache:
            if self.image is None:
                self._cache[key] = torch.full((1, 3, *images.shape[-2:]), 0.5, device=images.device)
            else:
                resized = F.interpolate(self.image, size=images.shape[-2:], mode="bilinear", antialias=True)
                self._cache[key] = resized.clamp(0, 1).to(images.device)
        return self._cache[key]


def _describe(target) -> str:
    if isinstance(target, str | Path):
        return str(target)
    if isinstance(target, torch.Tensor):
        return f"tensor{tuple(target.shape)}"
    return type(target).__name__
