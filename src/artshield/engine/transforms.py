"""Differentiable image transforms for robust perturbations (expectation over transforms, EOT).

A mimic rarely trains on the exact pixels the artist published: images are JPEG-compressed by the
platform, resized, cropped, or noised before they reach a fine-tuning script. A perturbation that
only works on the exact pixels is therefore fragile. Following Athalye et al., "Synthesizing Robust
Adversarial Examples" (ICML 2018), the perturbation engine draws one random transform per
optimisation step and differentiates *through* it, so the objective holds in expectation over the
transform distribution.

Contract (what ``engine.perturb`` relies on)::

    transform(images, generator) -> images

* ``images``: float tensor of shape (B, C, H, W) with values in [0, 1] (C is 3, sometimes 1), on any
  device, possibly requiring grad.
* The output has the same shape, device and dtype, lies in [0, 1], and is differentiable w.r.t.
  ``images`` with useful (not almost-everywhere-zero) gradients.
* Every random draw comes from ``generator``: the same generator state gives the same output.
  Draws are made on ``generator.device`` and moved to the images' device, so a CPU generator may
  drive CUDA images. Parameters are drawn per sample where that makes sense.
* Half-precision inputs are processed in float32 and cast back, because an 8x8 DCT or a small blur
  kernel in float16 loses more precision than the perturbation budget (a few grey levels).

Every transform is a small class whose constructor arguments have defaults and are JSON-serialisable;
``.config`` returns them as a dict with a ``"name"`` key, and :func:`transform_from_config` rebuilds
the transform. :func:`parse_transforms` turns a command-line string into a transform.

Command-line grammar (whitespace around tokens is ignored)::

    spec        := "default" | alternative ("," alternative)*
    alternative := step ("+" step)*
    step        := name (":" key "=" value)*
    value       := number | number "-" number | word

* ``,`` separates alternatives: with more than one, the result is a :class:`RandomChoice` that
  applies one of them (uniformly) per call, which is the usual EOT reading of
  ``--robust jpeg,resize,crop,noise``. Add ``identity`` to keep some steps on clean images.
* ``+`` chains steps in order (a :class:`Compose`): ``resize+jpeg`` resizes, then compresses.
* ``:key=value`` sets a constructor argument. ``lo-hi`` is a range sampled per call (``50-90``);
  a single number fixes the value. Words (``mode=bicubic``) are passed as strings.
* ``default`` (alone) is :func:`default_robust_transforms`; ``none`` is an alias of ``identity``.
* Names: ``identity``, ``jpeg``, ``resize``, ``crop``, ``noise``, ``blur``.

Examples: ``"jpeg,resize,crop,noise"``, ``"jpeg:quality=50-90,noise:sigma=0.05"``,
``"identity,resize:scale=0.5-0.9:mode=bicubic+jpeg:quality=75"``.
"""

from __future__ import annotations

import inspect
import io
import math
import re
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from artshield.errors import InvalidArgumentError

__all__ = [
    "Transform",
    "Identity",
    "DiffJPEG",
    "Resize",
    "RandomCrop",
    "GaussianNoise",
    "GaussianBlur",
    "Compose",
    "RandomChoice",
    "jpeg_pil",
    "quantization_tables",
    "default_robust_transforms",
    "transform_from_config",
    "pad_to_multiple",
    "parse_transforms",
    "TRANSFORMS",
]


@runtime_checkable
class Transform(Protocol):
    """What the engine calls: ``(images (B, C, H, W) in [0, 1], generator) -> same shape in [0, 1]``."""

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...


Range = tuple[float, float]


# --------------------------------------------------------------------------------------------------
# Argument helpers
# --------------------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    # bool is an int subclass; `quality=True` is a mistake, not quality 1.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _to_range(value: Any, name: str, low: float, high: float, *, low_open: bool = False) -> Range:
    """Turn a scalar or a (lo, hi) pair into a validated closed range inside [low, high]."""
    if _is_number(value):
        pair = (float(value), float(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_number(v) for v in value):
        pair = (float(value[0]), float(value[1]))
    else:
        raise InvalidArgumentError(f"`{name}` must be a number or a (low, high) pair, but is {value!r}")
    lo, hi = pair
    if not all(math.isfinite(v) for v in pair):
        raise InvalidArgumentError(f"`{name}` must be finite, but is {value!r}")
    below = lo <= low if low_open else lo < low
    if below or hi > high:
        bracket = "(" if low_open else "["
        raise InvalidArgumentError(f"`{name}` must lie in {bracket}{low}, {high}], but is {value!r}")
    if lo > hi:
        raise InvalidArgumentError(f"`{name}` range must be (low, high) with low <= high, but is {value!r}")
    return pair


def _json_value(value: Any) -> Any:
    """Tuples become lists so that ``config`` survives ``json.dumps`` / ``json.loads`` unchanged."""
    return list(value) if isinstance(value, tuple) else value


def _uniform(n: int, bounds: Range, generator: torch.Generator) -> list[float]:
    """``n`` draws from U[lo, hi] made on the generator's device (so CPU generators drive CUDA data)."""
    lo, hi = bounds
    if lo == hi:
        # A fixed value consumes no randomness; the output is then independent of the generator.
        return [lo] * n
    # float32: float64 is not available on every accelerator (MPS) that a generator may live on.
    u = torch.rand(n, generator=generator, device=generator.device, dtype=torch.float32)
    return (lo + (hi - lo) * u).tolist()


def _check_inputs(images: Any, generator: Any) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        got = (
            f"a {images.dtype} tensor of shape {tuple(images.shape)}"
            if isinstance(images, torch.Tensor)
            else type(images).__name__
        )
        raise InvalidArgumentError(f"`images` must be a float tensor of shape (B, C, H, W), but is {got}")
    if not isinstance(generator, torch.Generator):
        raise InvalidArgumentError(
            f"`generator` must be a torch.Generator, but is {type(generator).__name__}"
        )


# --------------------------------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------------------------------


class _BaseTransform:
    """Shared plumbing: input checks, float32 promotion of half inputs, config, repr and equality."""

    name: ClassVar[str] = ""

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        _check_inputs(images, generator)
        if images.shape[0] == 0:
            return images
        work = images if images.dtype in (torch.float32, torch.float64) else images.float()
        return self._apply(work, generator).to(images.dtype)

    def _apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def _params(self) -> dict[str, Any]:
        return {}

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments as a JSON-serialisable dict with a ``"name"`` key."""
        return {"name": self.name, **{k: _json_value(v) for k, v in self._params().items()}}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _BaseTransform):
            return NotImplemented
        return type(self) is type(other) and self.config == other.config

    __hash__ = None  # type: ignore[assignment]  # mutable-looking value objects; equality only


# --------------------------------------------------------------------------------------------------
# Identity
# --------------------------------------------------------------------------------------------------


class Identity(_BaseTransform):
    """Return the images unchanged (the same tensor object, so the gradient is exactly the identity).

    Useful inside :class:`RandomChoice` so that part of the EOT steps see the clean perturbed image.
    """

    name = "identity"

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        _check_inputs(images, generator)
        return images


# --------------------------------------------------------------------------------------------------
# JPEG
# --------------------------------------------------------------------------------------------------

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


def pad_to_multiple(images: torch.Tensor, multiple: int, mode: str = "reflect") -> torch.Tensor:
    """Pad H and W (at the bottom and right) up to a multiple of `multiple`.

    ``mode="reflect"`` (falling back to replication when a side is too small to reflect) is what models
    see; ``mode="replicate"`` is what libjpeg does to partial MCUs, so the edge blocks are coded as a real
    encoder codes them."""
    height, width = images.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_h == 0 and pad_w == 0:
        return images
    if mode == "reflect" and not (pad_h < height and pad_w < width):
        mode = "replicate"
    return F.pad(images, (0, pad_w, 0, pad_h), mode=mode)


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


class DiffJPEG(_BaseTransform):
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
        lo, hi = _to_range(quality, "quality", 1, 100)
        if lo != int(lo) or hi != int(hi):
            raise InvalidArgumentError(
                f"`quality` must be an integer (or a pair of integers), but is {quality!r}"
            )
        if rounding not in _ROUNDERS:
            raise InvalidArgumentError(f"`rounding` must be one of {sorted(_ROUNDERS)}, but is {rounding!r}")
        self.quality: int | tuple[int, int] = int(lo) if _is_number(quality) else (int(lo), int(hi))
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
    qualities = [quality] * batch.shape[0] if _is_number(quality) else list(quality)  # type: ignore[arg-type]
    if len(qualities) != batch.shape[0]:
        raise InvalidArgumentError(
            f"`quality` must be one int or one per sample ({batch.shape[0]}), but has {len(qualities)} values"
        )
    for q in qualities:
        if not _is_number(q) or q != int(q) or not 1 <= q <= 100:
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


class Resize(_BaseTransform):
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
        self._range = _to_range(scale, "scale", 0.0, 1.0, low_open=True)
        self.scale = float(scale) if _is_number(scale) else self._range
        self.mode = _check_mode(mode)

    def _params(self) -> dict[str, Any]:
        return {"scale": self.scale, "mode": self.mode}

    def _apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, _, h, w = images.shape
        outs = []
        # Sizes differ per sample, so samples are resized one at a time (B is small in practice).
        for i, s in enumerate(_uniform(b, self._range, generator)):
            small = (max(1, round(s * h)), max(1, round(s * w)))
            x = _resize(images[i : i + 1], small, self.mode)
            outs.append(_resize(x, (h, w), self.mode))
        return torch.cat(outs).clamp(0.0, 1.0)


class RandomCrop(_BaseTransform):
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
        self._range = _to_range(scale, "scale", 0.0, 1.0, low_open=True)
        self.scale = float(scale) if _is_number(scale) else self._range
        self.mode = _check_mode(mode)

    def _params(self) -> dict[str, Any]:
        return {"scale": self.scale, "mode": self.mode}

    def _apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, _, h, w = images.shape
        areas = _uniform(b, self._range, generator)
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


class GaussianNoise(_BaseTransform):
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
        self._range = _to_range(sigma, "sigma", 0.0, 1.0)
        self.sigma = float(sigma) if _is_number(sigma) else self._range

    def _params(self) -> dict[str, Any]:
        return {"sigma": self.sigma}

    def _apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b = images.shape[0]
        sigmas = torch.tensor(_uniform(b, self._range, generator), dtype=images.dtype, device=images.device)
        noise = torch.randn(images.shape, generator=generator, device=generator.device, dtype=torch.float32)
        noise = noise.to(device=images.device, dtype=images.dtype)
        return (images + sigmas.view(b, 1, 1, 1) * noise).clamp(0.0, 1.0)


class GaussianBlur(_BaseTransform):
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
        self._range = _to_range(sigma, "sigma", 0.0, 20.0)
        self.sigma = float(sigma) if _is_number(sigma) else self._range

    def _params(self) -> dict[str, Any]:
        return {"sigma": self.sigma}

    def _apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, c, h, w = images.shape
        sigmas = _uniform(b, self._range, generator)
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


# --------------------------------------------------------------------------------------------------
# Combinators
# --------------------------------------------------------------------------------------------------


def _check_children(transforms: Any, name: str) -> list[Transform]:
    if isinstance(transforms, (str, bytes)) or not isinstance(transforms, Sequence) or not transforms:
        raise InvalidArgumentError(f"`{name}` must be a non-empty list of transforms, but is {transforms!r}")
    for t in transforms:
        if not callable(t):
            raise InvalidArgumentError(f"`{name}` must contain transforms (callables), but contains {t!r}")
    return list(transforms)


def _child_config(t: Transform) -> dict[str, Any]:
    config = getattr(t, "config", None)
    if not isinstance(config, dict):
        raise InvalidArgumentError(f"transform {t!r} has no `config`, so it cannot be serialised")
    return config


class Compose(_BaseTransform):
    """Apply every transform in order (e.g. resize, then JPEG, as a re-upload would).

    Args:
        transforms: non-empty list of transforms (any callables following the contract).

    Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    name = "compose"

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = _check_children(transforms, "transforms")

    @property
    def config(self) -> dict[str, Any]:
        return {"name": self.name, "transforms": [_child_config(t) for t in self.transforms]}

    def _params(self) -> dict[str, Any]:
        return {"transforms": self.transforms}

    def _apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for t in self.transforms:
            images = t(images, generator)
        return images


class RandomChoice(_BaseTransform):
    """Apply one transform, chosen at random per call (the whole batch gets the same one).

    One per call, not per sample, because transforms differ in cost and shape handling and the EOT
    average is taken over optimisation steps anyway.

    Args:
        transforms: non-empty list of transforms.
        p: optional list of non-negative weights, one per transform (normalised; default uniform).

    Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    name = "random_choice"

    def __init__(self, transforms: Sequence[Transform], p: Sequence[float] | None = None) -> None:
        self.transforms = _check_children(transforms, "transforms")
        if p is not None:
            weights = list(p) if isinstance(p, Sequence) and not isinstance(p, str) else None
            if (
                weights is None
                or len(weights) != len(self.transforms)
                or not all(_is_number(v) and math.isfinite(v) and v >= 0 for v in weights)
                or sum(weights) <= 0
            ):
                raise InvalidArgumentError(
                    f"`p` must be {len(self.transforms)} non-negative weights with a positive sum, but is {p!r}"
                )
            p = [float(v) for v in weights]
        self.p: list[float] | None = p

    @property
    def config(self) -> dict[str, Any]:
        return {"name": self.name, "transforms": [_child_config(t) for t in self.transforms], "p": self.p}

    def _params(self) -> dict[str, Any]:
        return {"transforms": self.transforms, "p": self.p}

    def choose(self, generator: torch.Generator) -> Transform:
        """Draw the transform for one call."""
        n = len(self.transforms)
        weights = torch.tensor(self.p if self.p is not None else [1.0] * n, dtype=torch.float32)
        index = torch.multinomial(weights.to(generator.device), 1, generator=generator).item()
        return self.transforms[int(index)]

    def _apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.choose(generator)(images, generator)


def default_robust_transforms() -> RandomChoice:
    """The EOT mix behind the command line's ``--robust``.

    ``RandomChoice`` (uniform) over:

    * ``Identity()``: a fifth of the steps optimise the published pixels themselves, so robustness
      is not bought by giving up effectiveness on the clean image;
    * ``DiffJPEG(quality=(50, 90))``: the range social platforms and mimics' re-saves use (Pillow's
      default is 75; below 50 the image is visibly damaged, so a mimic gains little there);
    * ``Resize(scale=(0.5, 1.0))``: down to half resolution (e.g. 1024 px art trained at 512 px);
    * ``RandomCrop(scale=(0.8, 1.0))``: crops keeping at least 80% of the area, like random-crop
      augmentation in fine-tuning scripts;
    * ``GaussianNoise(sigma=(0.0, 0.05))``: noise up to about 13 grey levels, beyond which the image is
      visibly degraded.

    Blur is left out of the default (it removes exactly the high frequencies a small budget lives in,
    and is covered by the evaluation's purification attacks). To add it, spell the mix out:
    ``identity,jpeg:quality=50-90,resize,crop,noise:sigma=0-0.05,blur``.
    """
    return RandomChoice(
        [
            Identity(),
            DiffJPEG(quality=(50, 90)),
            Resize(scale=(0.5, 1.0)),
            RandomCrop(scale=(0.8, 1.0)),
            GaussianNoise(sigma=(0.0, 0.05)),
        ]
    )


# --------------------------------------------------------------------------------------------------
# Serialisation and parsing
# --------------------------------------------------------------------------------------------------

#: Leaf transforms by config / spec name.
TRANSFORMS: dict[str, type[_BaseTransform]] = {
    cls.name: cls for cls in (Identity, DiffJPEG, Resize, RandomCrop, GaussianNoise, GaussianBlur)
}
_ALIASES = {"none": "identity"}


def _constructor_keys(cls: type) -> list[str]:
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def _build_leaf(name: str, kwargs: dict[str, Any]) -> _BaseTransform:
    cls = TRANSFORMS[name]
    allowed = _constructor_keys(cls)
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        accepted = ", ".join(allowed) if allowed else "no parameters"
        raise InvalidArgumentError(f"`{name}` has no parameter {unknown[0]!r} (it accepts {accepted})")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})


def transform_from_config(config: dict[str, Any]) -> Transform:
    """Rebuild a transform from its ``.config`` dict (inverse of ``.config``, also after JSON).

    Args:
        config: a dict with a ``"name"`` key (``identity``, ``jpeg``, ``resize``, ``crop``, ``noise``,
            ``blur``, ``compose``, ``random_choice``) and that transform's constructor arguments;
            ``compose`` and ``random_choice`` hold their children's configs under ``"transforms"``.

    Raises:
        InvalidArgumentError: unknown name or parameter, or an invalid value.
    """
    if not isinstance(config, dict) or not isinstance(config.get("name"), str):
        raise InvalidArgumentError(f"transform config must be a dict with a string 'name', but is {config!r}")
    kwargs = {k: v for k, v in config.items() if k != "name"}
    name = _ALIASES.get(config["name"], config["name"])
    if name in (Compose.name, RandomChoice.name):
        cls: type[Compose] | type[RandomChoice] = Compose if name == Compose.name else RandomChoice
        allowed = _constructor_keys(cls)
        unknown = [k for k in kwargs if k not in allowed]
        if unknown:
            raise InvalidArgumentError(
                f"`{name}` has no parameter {unknown[0]!r} (it accepts {', '.join(allowed)})"
            )
        children = kwargs.pop("transforms", None)
        if not isinstance(children, list) or not children:
            raise InvalidArgumentError(
                f"`{name}` config must hold a non-empty list 'transforms', but has {children!r}"
            )
        return cls([transform_from_config(c) for c in children], **kwargs)
    if name not in TRANSFORMS:
        known = sorted([*TRANSFORMS, Compose.name, RandomChoice.name])
        raise InvalidArgumentError(f"unknown transform {config['name']!r} (known: {', '.join(known)})")
    return _build_leaf(name, kwargs)


_NUMBER = r"[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?"
_NUMBER_RE = re.compile(rf"(?:{_NUMBER})")
_RANGE_RE = re.compile(rf"({_NUMBER})\s*-\s*({_NUMBER})")
_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WORD_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:]*")
# A ":" starts a new parameter only when a "key=" follows, so values such as "4:4:4" survive.
_PARAM_SPLIT_RE = re.compile(r":(?=\s*[A-Za-z_][A-Za-z0-9_]*\s*=)")


def _parse_number(text: str) -> int | float:
    return int(text) if text.isdigit() else float(text)


def _parse_value(text: str) -> Any:
    if _NUMBER_RE.fullmatch(text):
        return _parse_number(text)
    match = _RANGE_RE.fullmatch(text)
    if match:
        return (_parse_number(match.group(1)), _parse_number(match.group(2)))
    if _WORD_RE.fullmatch(text):
        return text
    raise ValueError(f"cannot read value {text!r} (expected a number, a range 'low-high', or a word)")


def _parse_step(part: str) -> Transform:
    name, has_params, rest = part.partition(":")
    name = _ALIASES.get(name.strip().lower(), name.strip().lower())
    assignments = [piece.strip() for piece in _PARAM_SPLIT_RE.split(rest)] if has_params else []
    if name not in TRANSFORMS:
        raise InvalidArgumentError(
            f"unknown transform {name!r} in transform spec part {part!r} (known: {', '.join(sorted(TRANSFORMS))})"
        )
    kwargs: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, value = (s.strip() for s in assignment.partition("="))
        if not sep or not _KEY_RE.fullmatch(key) or not value:
            raise InvalidArgumentError(
                f"bad parameter {assignment!r} in transform spec part {part!r} (expected key=value)"
            )
        if key in kwargs:
            raise InvalidArgumentError(f"parameter {key!r} given twice in transform spec part {part!r}")
        try:
            kwargs[key] = _parse_value(value)
        except ValueError as exc:
            raise InvalidArgumentError(f"in transform spec part {part!r}: {exc}") from None
    try:
        return _build_leaf(name, kwargs)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"in transform spec part {part!r}: {exc}") from None


def parse_transforms(spec: str) -> Transform:
    """Build a transform from a command-line string (grammar in the module docstring).

    ``"jpeg,resize"`` picks one of the two per call; ``"resize+jpeg"`` applies both in order;
    ``"jpeg:quality=50-90,noise:sigma=0.05"`` sets parameters (``low-high`` is a sampled range);
    ``"default"`` is :func:`default_robust_transforms`. A single step is returned as itself.

    Args:
        spec: the string.

    Raises:
        InvalidArgumentError: naming the part of the spec that could not be read.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidArgumentError(f"transform spec must be a non-empty string, but is {spec!r}")
    if spec.strip().lower() == "default":
        return default_robust_transforms()
    alternatives: list[Transform] = []
    for alternative in spec.split(","):
        steps = [s.strip() for s in alternative.split("+")]
        for step in steps:
            if not step:
                raise InvalidArgumentError(
                    f"empty transform (nothing between separators) in part {alternative!r} of transform spec {spec!r}"
                )
            if step.split(":")[0].strip().lower() == "default":
                raise InvalidArgumentError(
                    f"'default' must be the whole transform spec, but appears in part {alternative.strip()!r}"
                )
        built = [_parse_step(step) for step in steps]
        alternatives.append(built[0] if len(built) == 1 else Compose(built))
    return alternatives[0] if len(alternatives) == 1 else RandomChoice(alternatives)
