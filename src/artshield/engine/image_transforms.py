"""Geometric and noise transforms: :class:`Resize`, :class:`RandomCrop`, :class:`GaussianNoise`,
:class:`GaussianBlur` (the contract is in :mod:`.transform_base`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from artshield.errors import InvalidArgumentError

from .transform_base import BaseTransform, is_number, to_range, uniform_draws

__all__ = ["Resize", "RandomCrop", "GaussianNoise", "GaussianBlur"]


# --------------------------------------------------------------------------------------------------
# Geometric transforms
# --------------------------------------------------------------------------------------------------

_MODES = ("bilinear", "bicubic", "nearest")


def _check_mode(mode: Any) -> str:
    if mode not in _MODES:
        raise InvalidArgumentError(f"`mode` must be one of {list(_MODES)}, but is {mode!r}")
    return mode


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize (1, C, H, W) to ``size``; antialiased when shrinking, as PIL / torchvision resizing is."""
    if tuple(x.shape[-2:]) == size:
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    # torch supports antialias (with autograd, CPU and CUDA) for bilinear and bicubic only.
    out = F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=shrink)
    # Bicubic overshoots at edges; keep the intermediate in range like a saved image would be.
    return out.clamp(0.0, 1.0) if mode == "bicubic" else out


class _ScaleAndMode(BaseTransform):
    """What :class:`Resize` and :class:`RandomCrop` share: a ``scale`` in (0, 1] (a number, or a
    ``(low, high)`` range drawn per sample) and the interpolation ``mode`` of their resampling."""

    def __init__(self, scale: float | Sequence[float], mode: str) -> None:
        self._range = to_range(scale, "scale", 0.0, 1.0, low_open=True)
        self.scale = float(scale) if is_number(scale) else self._range
        self.mode = _check_mode(mode)

    def _params(self) -> dict[str, Any]:
        return {"scale": self.scale, "mode": self.mode}


class Resize(_ScaleAndMode):
    """Downscale by a random factor, then upscale back to the original size.

    Models the resolution loss of a re-upload or of a mimic's preprocessing. The factor applies to
    both sides (aspect ratio kept) and is drawn per sample; each side becomes ``max(1, round(s * H))``.

    Args:
        scale: side scale factor in (0, 1], a number or a ``(low, high)`` range (default (0.5, 1.0)).
        mode: ``"bilinear"`` (default), ``"bicubic"`` or ``"nearest"``; bilinear and bicubic are
            antialiased when shrinking.

    Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    name = "resize"

    def __init__(self, scale: float | Sequence[float] = (0.5, 1.0), mode: str = "bilinear") -> None:
        super().__init__(scale, mode)

    def _apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, _, h, w = images.shape
        outs = []
        # Sizes differ per sample, so samples are resized one at a time (B is small in practice).
        for i, s in enumerate(uniform_draws(b, self._range, generator)):
            small = (max(1, round(s * h)), max(1, round(s * w)))
            x = _resize(images[i : i + 1], small, self.mode)
            outs.append(_resize(x, (h, w), self.mode))
        return torch.cat(outs).clamp(0.0, 1.0)


class RandomCrop(_ScaleAndMode):
    """Crop a random region with a random area fraction, then resize it back to full size.

    Models a mimic cropping the artwork (or a random-crop data augmentation). The crop keeps the aspect
    ratio: each side is ``sqrt(area)`` of the original, rounded to whole pixels; the position is
    uniform over all integer offsets. Drawn per sample.

    Args:
        scale: area fraction in (0, 1], a number or a ``(low, high)`` range (default (0.8, 1.0)).
        mode: interpolation for the resize back, ``"bilinear"`` (default), ``"bicubic"`` or ``"nearest"``.

    Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    name = "crop"

    def __init__(self, scale: float | Sequence[float] = (0.8, 1.0), mode: str = "bilinear") -> None:
        super().__init__(scale, mode)

    def _apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, _, h, w = images.shape
        areas = uniform_draws(b, self._range, generator)
        # Offsets are drawn even for full-size crops so that the number of draws never depends on data.
        offsets = torch.rand(b, 2, generator=generator, device=generator.device).tolist()
        outs = []
        for i, (area, (u, v)) in enumerate(zip(areas, offsets, strict=True)):
            side = math.sqrt(area)
            ch, cw = min(h, max(1, round(side * h))), min(w, max(1, round(side * w)))
            top = min(int(u * (h - ch + 1)), h - ch)
            left = min(int(v * (w - cw + 1)), w - cw)
            crop = images[i : i + 1, :, top : top + ch, left : left + cw]
            outs.append(_resize(crop, (h, w), self.mode))
        return torch.cat(outs).clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------------
# Noise and blur
# --------------------------------------------------------------------------------------------------


class GaussianNoise(BaseTransform):
    """Add i.i.d. Gaussian noise, then clamp to [0, 1].

    Models sensor/re-encoding noise and "noise purification" (adding noise to wash out a
    perturbation). The standard deviation is drawn per sample.

    Args:
        sigma: standard deviation in units of the [0, 1] pixel range, within [0, 1]; a number
            (default 0.05) or a ``(low, high)`` range.

    Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    name = "noise"

    def __init__(self, sigma: float | Sequence[float] = 0.05) -> None:
        self._range = to_range(sigma, "sigma", 0.0, 1.0)
        self.sigma = float(sigma) if is_number(sigma) else self._range

    def _params(self) -> dict[str, Any]:
        return {"sigma": self.sigma}

    def _apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b = images.shape[0]
        sigmas = torch.tensor(uniform_draws(b, self._range, generator), dtype=images.dtype, device=images.device)
        noise = torch.randn(images.shape, generator=generator, device=generator.device, dtype=torch.float32)
        noise = noise.to(device=images.device, dtype=images.dtype)
        return (images + sigmas.view(b, 1, 1, 1) * noise).clamp(0.0, 1.0)


class GaussianBlur(BaseTransform):
    """Separable Gaussian blur with a random standard deviation per sample.

    Models "blur purification" and the softening of heavy resampling. The kernel radius is
    ``ceil(3 * sigma_max)`` for the batch; borders are extended by edge replication (valid for any
    image size, unlike reflection).

    Args:
        sigma: standard deviation in pixels, in [0, 20], a number or a ``(low, high)`` range (default
            (0.5, 1.5)). ``sigma = 0`` leaves the image unchanged.

    Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    name = "blur"

    def __init__(self, sigma: float | Sequence[float] = (0.5, 1.5)) -> None:
        self._range = to_range(sigma, "sigma", 0.0, 20.0)
        self.sigma = float(sigma) if is_number(sigma) else self._range

    def _params(self) -> dict[str, Any]:
        return {"sigma": self.sigma}

    def _apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, c, h, w = images.shape
        sigmas = uniform_draws(b, self._range, generator)
        radius = math.ceil(3 * max(sigmas))
        if radius == 0:
            return images
        t = torch.arange(-radius, radius + 1, dtype=torch.float64)
        kernels = []
        for s in sigmas:
            k = torch.exp(-0.5 * (t / s) ** 2) if s > 0 else (t == 0).double()
            kernels.append(k / k.sum())
        # One depthwise kernel per (sample, channel): (B*C, 1, K); same 1-D kernel for rows and columns.
        k1d = torch.stack(kernels).repeat_interleave(c, dim=0).to(images.dtype).to(images.device)
        x = images.reshape(1, b * c, h, w)
        x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
        x = F.conv2d(x, k1d[:, None, None, :], groups=b * c)
        x = F.conv2d(x, k1d[:, None, :, None], groups=b * c)
        return x.reshape(b, c, h, w).clamp(0.0, 1.0)
