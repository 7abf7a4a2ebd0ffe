"""Differentiable JPEG (:class:`DiffJPEG`), libjpeg's quantisation tables, and a real Pillow round trip.

The DCT, block and colour helpers here serve only the codec; :func:`jpeg_pil` is the reference the
differentiable version is tested against, and what evaluation uses to measure real compression.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from artshield.errors import InvalidArgumentError

from .transform_base import BaseTransform, is_number, pad_to_multiple, to_range

__all__ = ["DiffJPEG", "jpeg_pil", "quantization_tables"]


# Annex K of ITU-T T.81 (the "IJG" tables), natural row-major order, quality 50.
_LUMA_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
_CHROMA_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    *((99,) * 8 for _ in range(4)),
)


def quantization_tables(quality: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Luminance and chrominance quantisation tables for an IJG quality, exactly as libjpeg scales them.

    libjpeg's ``jpeg_quality_scaling``: ``scale = 5000 // q`` below 50, else ``200 - 2q``; each entry
    becomes ``(base * scale + 50) // 100`` clamped to [1, 255] (baseline JPEG, as Pillow forces).

    Args:
        quality: an int in [1, 100], or an integer tensor of shape (B,) of such qualities.

    Returns:
        ``(luma, chroma)``, int64 tensors of shape (8, 8) for an int, (B, 8, 8) for a tensor, on the
        tensor's device.
    """
    q = torch.as_tensor(quality, dtype=torch.int64)
    if bool(((q < 1) | (q > 100)).any()):
        raise InvalidArgumentError(f"`quality` must lie in [1, 100], but is {quality!r}")
    scale = torch.where(q < 50, 5000 // q, 200 - 2 * q)[..., None, None]
    tables = []
    for base in (_LUMA_TABLE, _CHROMA_TABLE):
        b = torch.tensor(base, dtype=torch.int64, device=q.device)
        tables.append(((b * scale + 50) // 100).clamp(1, 255))
    return tables[0], tables[1]


def _dct_matrix(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Orthonormal 8-point DCT-II matrix D: the JPEG FDCT of a block X is D @ X @ D.T (T.81 A.3.3)."""
    k = torch.arange(8, dtype=torch.float64)[:, None]
    n = torch.arange(8, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * n + 1) * k / 16) * 0.5
    d[0] = math.sqrt(1 / 8)
    return d.to(dtype=dtype, device=device)


def _to_blocks(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) with H, W multiples of 8 -> (B, C, H/8, W/8, 8, 8)."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h // 8, 8, w // 8, 8).permute(0, 1, 2, 4, 3, 5)


def _from_blocks(x: torch.Tensor) -> torch.Tensor:
    b, c, nh, nw, _, _ = x.shape
    return x.permute(0, 1, 2, 4, 3, 5).reshape(b, c, nh * 8, nw * 8)


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    # Straight-through estimator (Bengio et al. 2013; the BPDA of Athalye et al. 2018): exact rounding
    # forward, identity backward.
    return x + (torch.round(x) - x).detach()


def _round_cubic(x: torch.Tensor) -> torch.Tensor:
    # Shin & Song 2017, "JPEG-resistant adversarial images": round(x) + (x - round(x))^3 is smooth,
    # close to rounding, and has gradient 3 (x - round(x))^2.
    r = torch.round(x).detach()
    return r + (x - r) ** 3


_ROUNDERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"ste": _round_ste, "cubic": _round_cubic}

# JFIF (full-range BT.601) colour conversion, as libjpeg does it.
_RGB_TO_YCBCR = (
    (0.299, 0.587, 0.114),
    (-0.168735892, -0.331264108, 0.5),
    (0.5, -0.418687589, -0.081312411),
)
_YCBCR_TO_RGB = (
    (1.0, 0.0, 1.402),
    (1.0, -0.344136286, -0.714136286),
    (1.0, 1.772, 0.0),
)


def _color_matrix(rows: tuple[tuple[float, ...], ...], x: torch.Tensor) -> torch.Tensor:
    m = torch.tensor(rows, dtype=x.dtype, device=x.device)
    return torch.einsum("oc,bchw->bohw", m, x)


class DiffJPEG(BaseTransform):
    """Differentiable approximation of baseline JPEG compression (libjpeg / Pillow defaults).

    Pipeline, mirroring libjpeg: scale to [0, 255]; pad to whole MCUs by edge replication; RGB ->
    YCbCr (JFIF) rounded to 8 bits; 4:2:0 chroma subsampling by 2x2 averaging; level shift by -128;
    8x8 block DCT as matrix products; divide by the IJG tables scaled to ``quality`` with libjpeg's
    formula; differentiable rounding; dequantise; inverse DCT; clamp to [0, 255] as libjpeg's range
    limiter does (so saturated regions pass no gradient, as with real JPEG); chroma upsampling by the triangle filter of libjpeg's "fancy upsampling" (identical to
    bilinear interpolation with half-pixel centres); YCbCr -> RGB; crop; clamp to [0, 1].
    Greyscale images (C = 1) go through the luminance path only.

    References: Shin & Song, "JPEG-resistant Adversarial Images" (NIPS MLSec workshop 2017) for the
    cubic rounding; Reich et al., "Differentiable JPEG: The Devil is in the Details" (WACV 2024) for
    matching the real codec (quality scaling, clipping, padding).

    Args:
        quality: IJG quality in [1, 100] (default 75), or a ``(low, high)`` pair; an integer quality
            is then drawn uniformly from [low, high] per sample and per call.
        rounding: ``"ste"`` (default; exact rounding forward, identity gradient backward, so the
            forward pass matches real JPEG) or ``"cubic"`` (Shin & Song's smooth approximation, whose
            forward pass differs from real rounding by up to 3/8 of a quantisation step, and whose
            gradient 3 (x - round(x))^2 averages only about a quarter of the identity's).
        subsampling: chroma subsampling, ``"4:2:0"`` (default, as libjpeg and Pillow) or ``"4:4:4"``
            (no subsampling, what some encoders use at high quality).

    Shapes: (B, C, H, W) -> (B, C, H, W), C in {1, 3}, any H, W >= 1.
    """

    name = "jpeg"

    def __init__(
        self, quality: int | Sequence[int] = 75, rounding: str = "ste", subsampling: str = "4:2:0"
    ) -> None:
        lo, hi = to_range(quality, "quality", 1, 100)
        if lo != int(lo) or hi != int(hi):
            raise InvalidArgumentError(
                f"`quality` must be an integer (or a pair of integers), but is {quality!r}"
            )
        if rounding not in _ROUNDERS:
            raise InvalidArgumentError(f"`rounding` must be one of {sorted(_ROUNDERS)}, but is {rounding!r}")
        self.quality: int | tuple[int, int] = int(lo) if is_number(quality) else (int(lo), int(hi))
        if subsampling not in ("4:2:0", "4:4:4"):
            raise InvalidArgumentError(f"`subsampling` must be '4:2:0' or '4:4:4', but is {subsampling!r}")
        self.rounding = rounding
        self.subsampling = subsampling
        self._range = (int(lo), int(hi))

    def _params(self) -> dict[str, Any]:
        return {"quality": self.quality, "rounding": self.rounding, "subsampling": self.subsampling}

    def sample_quality(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """Integer qualities of shape (batch,), on ``generator.device``."""
        lo, hi = self._range
        if lo == hi:
            return torch.full((batch,), lo, dtype=torch.int64, device=generator.device)
        return torch.randint(lo, hi + 1, (batch,), generator=generator, device=generator.device)

    def _apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, c, h, w = images.shape
        if c not in (1, 3):
            raise InvalidArgumentError(f"`images` must have 1 or 3 channels for JPEG, but has {c}")
        quality = self.sample_quality(b, generator).to(images.device)
        luma_q, chroma_q = (t.to(images.dtype)[:, None, None, None] for t in quantization_tables(quality))
        dct = _dct_matrix(images.dtype, images.device)
        rnd = _ROUNDERS[self.rounding]

        def code(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
            # plane: (B, k, H, W) level-shifted samples; table: (B, 1, 1, 1, 8, 8).
            coeffs = dct @ _to_blocks(plane) @ dct.T
            coeffs = rnd(coeffs / table) * table
            return _from_blocks(dct.T @ coeffs @ dct)

        x = images * 255.0
        if c == 1:
            y = code(pad_to_multiple(x, 8, mode="replicate") - 128.0, luma_q) + 128.0
            out = y.clamp(0.0, 255.0)[..., :h, :w]
        else:
            subsample = self.subsampling == "4:2:0"
            # 16x16 MCUs with 4:2:0: the 2x2-averaged chroma planes must also be whole 8x8 blocks.
            ycc = _color_matrix(_RGB_TO_YCBCR, pad_to_multiple(x, 16 if subsample else 8, mode="replicate"))
            # The encoder stores YCbCr as 8-bit samples. Rounding here (straight-through, so the
            # gradient is untouched) brings the output ~2.5 dB closer to libjpeg's; rounding at the
            # later integer stages of libjpeg made no measurable difference, so they are left out.
            ycc = _round_ste(ycc)
            luma = code(ycc[:, :1] - 128.0, luma_q) + 128.0
            chroma = F.avg_pool2d(ycc[:, 1:], 2) if subsample else ycc[:, 1:]
            # No level shift for chroma: the conversion above omits JFIF's +128, which it would undo.
            chroma = code(chroma, chroma_q)
            # libjpeg's decoder range-limits every IDCT output to [0, 255] before colour conversion.
            luma = luma.clamp(0.0, 255.0)[..., :h, :w]
            chroma = (chroma + 128.0).clamp(0.0, 255.0)
            if subsample:
                # The decoder upsamples the chroma planes at their true size ceil(H/2) x ceil(W/2),
                # so the edge is replicated rather than interpolated with the coded padding.
                chroma = chroma[..., : (h + 1) // 2, : (w + 1) // 2]
                chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)
            chroma = chroma[..., :h, :w] - 128.0
            out = _color_matrix(_YCBCR_TO_RGB, torch.cat([luma, chroma], dim=1))
        return (out / 255.0).clamp(0.0, 1.0)


def jpeg_pil(
    images: torch.Tensor, quality: int | Sequence[int] = 75, *, subsampling: str = "4:2:0"
) -> torch.Tensor:
    """Real JPEG round trip through Pillow (libjpeg-turbo); not differentiable.

    Pixels are first quantised to 8 bits, as any saved image is. Used by tests to check
    :class:`DiffJPEG`, and by evaluation to measure robustness to actual compression.

    Args:
        images: float tensor (B, C, H, W) or (C, H, W) in [0, 1], C in {1, 3}.
        quality: IJG quality in [1, 100] (default 75), or one quality per sample.
        subsampling: chroma subsampling for RGB, ``"4:2:0"`` (default, Pillow's and libjpeg's
            default), ``"4:2:2"`` or ``"4:4:4"``.

    Returns:
        Decoded images, same shape, device and dtype, values multiples of 1/255, no gradient.
    """
    if not isinstance(images, torch.Tensor) or images.ndim not in (3, 4) or not images.is_floating_point():
        raise InvalidArgumentError("`images` must be a float tensor of shape (B, C, H, W) or (C, H, W)")
    batch = images.unsqueeze(0) if images.ndim == 3 else images
    if batch.shape[1] not in (1, 3):
        raise InvalidArgumentError(f"`images` must have 1 or 3 channels for JPEG, but has {batch.shape[1]}")
    qualities = [quality] * batch.shape[0] if is_number(quality) else list(quality)  # type: ignore[arg-type]
    if len(qualities) != batch.shape[0]:
        raise InvalidArgumentError(
            f"`quality` must be one int or one per sample ({batch.shape[0]}), but has {len(qualities)} values"
        )
    for q in qualities:
        if not is_number(q) or q != int(q) or not 1 <= q <= 100:
            raise InvalidArgumentError(f"`quality` must be an integer in [1, 100], but is {q!r}")
    codes = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}
    if subsampling not in codes:
        raise InvalidArgumentError(f"`subsampling` must be one of {sorted(codes)}, but is {subsampling!r}")

    pixels = (batch.detach().float().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8)
    pixels = pixels.permute(0, 2, 3, 1).numpy()
    decoded = []
    for array, q in zip(pixels, qualities, strict=True):
        pil = Image.fromarray(array[..., 0], "L") if array.shape[-1] == 1 else Image.fromarray(array, "RGB")
        buffer = io.BytesIO()
        pil.save(buffer, format="JPEG", quality=int(q), subsampling=codes[subsampling])
        buffer.seek(0)
        with Image.open(buffer) as reopened:
            out = np.asarray(reopened.convert(pil.mode), dtype=np.uint8)
        decoded.append(out.reshape(array.shape))
    result = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2).to(images.dtype) / 255.0
    result = result.to(images.device)
    return result[0] if images.ndim == 3 else result
