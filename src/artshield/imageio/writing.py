"""Writing PNGs: quantisation within the perturbation budget, 16-bit PNG encoding, text chunks, ICC, atomic writes."""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from ..errors import ImageWriteError, InvalidArgumentError
from ..fileio import atomic_write
from .reading import LoadedImage, PathLike, icc_colour_space

# One logger for the whole package (its name as before the split), so that log filters and captures keep
# working unchanged.
logger = logging.getLogger("artshield.imageio")

# Tolerance, in grid levels, for treating an original value as lying exactly on the integer grid. A
# float32 k/65535 is off by at most ~4e-3 levels, a float32 k/255 by ~2e-5 levels.
_GRID_SNAP_LEVELS = 1e-2


def quantize(
    rgb: torch.Tensor,
    bit_depth: int = 8,
    *,
    reference: torch.Tensor | None = None,
    max_abs_change: float | None = None,
    name: str = "rgb",
) -> np.ndarray:
    """Quantise a [0, 1] tensor to the integer grid of ``bit_depth`` bits, as :func:`write_png` saves it.

    Values are rounded (half to even) and clipped to [0, 2**bit_depth - 1]. When ``reference`` (the
    original image) and ``max_abs_change`` (an L-inf budget in [0, 1] units) are given, each value is
    then clipped into the integer interval within the budget of the original, so that
    ``|q / maxval - original| <= max_abs_change`` holds exactly for originals on the grid (for an
    original off the grid, e.g. 16-bit data saved at 8 bits, up to 1e-6 levels of float slack). If no
    grid value lies within the budget (a budget below half a level for an off-grid original) the
    nearest grid value is used and a warning is logged.

    Args:
        rgb: (1, C, H, W) or (C, H, W) tensor, any float dtype and device.
        bit_depth: 8 or 16.
        reference: the original on the same pixel grid (same shape), or None.
        max_abs_change: L-inf budget in [0, 1] units; needs ``reference``.
        name: argument name used in error messages.

    Returns:
        An (H, W, C) ``uint8`` or ``uint16`` array.
    """
    if bit_depth not in (8, 16):
        raise InvalidArgumentError(f"`bit_depth` must be 8 or 16, but is {bit_depth!r}.")
    maxval = 255 if bit_depth == 8 else 65535
    x = _as_chw(rgb, name)
    if not torch.isfinite(x).all():
        raise InvalidArgumentError(f"`{name}` contains NaN or infinite values; refusing to save it.")
    levels = torch.round(x * maxval).clamp_(0, maxval)
    if max_abs_change is not None:
        if reference is None:
            raise InvalidArgumentError("`max_abs_change` needs `reference`, the original image, to measure against.")
        budget = float(max_abs_change)
        if not (0.0 <= budget <= 1.0):
            raise InvalidArgumentError(f"`max_abs_change` must be in [0, 1] (pixel units), but is {max_abs_change!r}.")
        ref = _as_chw(reference, "reference")
        if ref.shape != x.shape:
            raise InvalidArgumentError(
                f"`reference` must have the shape of `{name}` {tuple(x.shape)}, but has {tuple(ref.shape)}."
            )
        orig = ref * maxval
        # Snap originals that lie on the grid up to float error, so that the interval below is exactly
        # [k - floor(budget*maxval), k + floor(budget*maxval)] for them.
        snapped = torch.round(orig)
        orig = torch.where((orig - snapped).abs() <= _GRID_SNAP_LEVELS, snapped, orig)
        lo = torch.ceil(orig - budget * maxval - 1e-6).clamp_(0, maxval)
        hi = torch.floor(orig + budget * maxval + 1e-6).clamp_(0, maxval)
        empty = lo > hi
        if bool(empty.any()):
            logger.warning(
                "max_abs_change=%g is below the %d-bit quantisation step for %d values; using the nearest level.",
                budget, bit_depth, int(empty.sum()),
            )
            nearest = torch.round(orig).clamp_(0, maxval)
            lo = torch.where(empty, nearest, lo)
            hi = torch.where(empty, nearest, hi)
        levels = torch.minimum(torch.maximum(levels, lo), hi)
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    return levels.permute(1, 2, 0).numpy().astype(dtype)


def _as_chw(t: torch.Tensor, name: str) -> torch.Tensor:
    """(1, C, H, W) or (C, H, W) → float64 CPU (C, H, W), detached."""
    if not isinstance(t, torch.Tensor):
        raise InvalidArgumentError(f"`{name}` must be a torch.Tensor, but is {type(t).__name__}.")
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise InvalidArgumentError(f"`{name}` must hold one image (batch size 1), but has shape {tuple(t.shape)}.")
        t = t[0]
    if t.dim() != 3:
        raise InvalidArgumentError(f"`{name}` must have shape (1, C, H, W) or (C, H, W), but has {tuple(t.shape)}.")
    if t.shape[1] == 0 or t.shape[2] == 0:
        raise InvalidArgumentError(f"`{name}` is empty (shape {tuple(t.shape)}).")
    return t.detach().to(device="cpu", dtype=torch.float64)


def _alpha_hw1(alpha: torch.Tensor, size_hw: tuple[int, int], maxval: int) -> np.ndarray:
    """Quantise an alpha tensor ((1,1,H,W), (1,H,W) or (H,W)) to an (H, W, 1) integer array."""
    if not isinstance(alpha, torch.Tensor):
        raise InvalidArgumentError(f"`alpha` must be a torch.Tensor or None, but is {type(alpha).__name__}.")
    a = alpha.detach().to(device="cpu", dtype=torch.float64)
    while a.dim() > 2 and a.shape[0] == 1:
        a = a[0]
    if a.dim() != 2 or tuple(a.shape) != size_hw:
        raise InvalidArgumentError(
            f"`alpha` must be one channel of size {size_hw} (H, W), but has shape {tuple(alpha.shape)}."
        )
    if not torch.isfinite(a).all():
        raise InvalidArgumentError("`alpha` contains NaN or infinite values.")
    q = torch.round(a * maxval).clamp_(0, maxval).numpy()
    return q.astype(np.uint8 if maxval == 255 else np.uint16)[:, :, None]


def to_pil(rgb: torch.Tensor, alpha: torch.Tensor | None = None, *, bit_depth: int = 8) -> Image.Image:
    """A PIL image of a (1, C, H, W) / (C, H, W) [0, 1] tensor: L, LA, RGB, RGBA, or I;16 (16-bit grey).

    Pillow has no 16-bit colour or 16-bit alpha mode; for those use :func:`write_png`.
    """
    q = quantize(rgb, bit_depth)
    channels = q.shape[2]
    if channels not in (1, 3):
        raise InvalidArgumentError(f"`rgb` must have 1 or 3 channels, but has {channels}.")
    if bit_depth == 16:
        if channels != 1 or alpha is not None:
            raise InvalidArgumentError("Pillow can hold 16 bits only for greyscale without alpha; use write_png.")
        return Image.fromarray(np.ascontiguousarray(q[:, :, 0]))
    if alpha is not None:
        q = np.concatenate([q, _alpha_hw1(alpha, q.shape[:2], 255)], axis=2)
    return Image.fromarray(q[:, :, 0] if q.shape[2] == 1 else np.ascontiguousarray(q))


def write_png(
    path: PathLike,
    rgb: torch.Tensor,
    *,
    alpha: torch.Tensor | None = None,
    bit_depth: int = 8,
    text: Mapping[str, str] | None = None,
    icc_profile: bytes | None = None,
    reference: LoadedImage | torch.Tensor | PathLike | None = None,
    max_abs_change: float | None = None,
) -> Path:
    """Write a [0, 1] tensor as a PNG, atomically, never over the original, never beyond the budget.

    The file is written to a temporary name in the destination folder, flushed and fsync'ed, then
    renamed over ``path`` (``os.replace``): an interruption leaves either the old file or the new one,
    never half of one, and no temporary file. Parent folders are created.

    Args:
        path: destination; must end in ``.png``.
        rgb: (1, C, H, W) or (C, H, W) tensor in [0, 1]; C = 1 saves greyscale (L, LA or 16-bit),
            C = 3 saves RGB(A).
        alpha: optional (1, 1, H, W) alpha in [0, 1].
        bit_depth: 8 or 16. 16-bit greyscale goes through Pillow (I;16); 16-bit colour or 16-bit with
            alpha, which Pillow cannot write, through a small built-in PNG encoder.
        text: PNG text chunks (tEXt when the value is Latin-1, iTXt otherwise). Keys: 1–79 Latin-1
            characters.
        icc_profile: ICC profile bytes to embed (dropped with a log message if its colour space does not
            match C).
        reference: the original. A :class:`LoadedImage` gives both its path (never overwritten) and its
            tensor (for ``max_abs_change``); a tensor gives only the values; a path only the path.
        max_abs_change: L-inf budget in [0, 1] units; the quantised values stay within it of the
            reference values exactly (see :func:`quantize`).

    Returns:
        The path written.

    Raises:
        ImageWriteError: ``path`` is (or is the same file as) the original, is a directory, or the
            file system refused the write.
        InvalidArgumentError: bad shapes, values, bit depth, text keys or budget.
    """
    dest = Path(os.fspath(path))
    if dest.suffix.lower() != ".png":
        raise InvalidArgumentError(f"`path` must end in .png (write_png writes PNG data), but is {dest}.")

    ref_tensor: torch.Tensor | None = None
    ref_path: Path | None = None
    if isinstance(reference, LoadedImage):
        ref_tensor, ref_path = reference.rgb, reference.path
    elif isinstance(reference, torch.Tensor):
        ref_tensor = reference
    elif reference is not None:
        ref_path = Path(os.fspath(reference))
    if max_abs_change is not None and ref_tensor is None:
        raise InvalidArgumentError("`max_abs_change` needs `reference` to be the original tensor or LoadedImage.")
    if ref_path is not None and _same_file(dest, ref_path):
        raise ImageWriteError(f"{dest}: refusing to overwrite the original image {ref_path}; choose another output path.")
    if dest.is_dir():
        raise ImageWriteError(f"{dest}: is a directory; give a file name ending in .png.")

    q = quantize(rgb, bit_depth, reference=ref_tensor, max_abs_change=max_abs_change)
    channels = q.shape[2]
    if channels not in (1, 3):
        raise InvalidArgumentError(f"`rgb` must have 1 (grey) or 3 (RGB) channels, but has {channels}.")
    maxval = 255 if bit_depth == 8 else 65535
    if alpha is not None:
        q = np.concatenate([q, _alpha_hw1(alpha, q.shape[:2], maxval)], axis=2)
    text_items = _check_text(text)
    if icc_profile is not None:
        if not isinstance(icc_profile, (bytes, bytearray)):
            raise InvalidArgumentError(f"`icc_profile` must be bytes or None, but is {type(icc_profile).__name__}.")
        wanted = "GRAY" if channels == 1 else "RGB"
        space = icc_colour_space(bytes(icc_profile))
        if space != wanted:
            logger.info("%s: not embedding an ICC profile for colour space %r in a %s image.", dest, space, wanted)
            icc_profile = None
        else:
            icc_profile = bytes(icc_profile) or None

    if bit_depth == 8 or (channels == 1 and alpha is None):
        image = Image.fromarray(np.ascontiguousarray(q[:, :, 0] if q.shape[2] == 1 else q))
        pnginfo = PngImagePlugin.PngInfo()
        for key, value in text_items:
            pnginfo.add_text(key, value)
        params: dict[str, object] = {"format": "PNG", "pnginfo": pnginfo}
        if icc_profile:
            params["icc_profile"] = icc_profile

        def writer(fh: IO[bytes]) -> None:
            image.save(fh, **params)

    else:

        def writer(fh: IO[bytes]) -> None:
            fh.write(_encode_png16(q, text_items, icc_profile))

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageWriteError(f"{dest}: cannot create the folder {dest.parent} ({exc.strerror or exc}).") from exc
    atomic_write(dest, writer, what="image")
    return dest


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file (equal after resolving, or the same inode)."""
    try:
        if a.resolve() == b.resolve():
            return True
    except OSError:
        pass
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _check_text(text: Mapping[str, str] | None) -> list[tuple[str, str]]:
    if text is None:
        return []
    if not isinstance(text, Mapping):
        raise InvalidArgumentError(f"`text` must be a mapping of str to str, but is {type(text).__name__}.")
    items = []
    for key, value in text.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidArgumentError(f"`text` keys and values must be str, but got {key!r}: {type(value).__name__}.")
        try:
            encoded = key.encode("latin-1")
        except UnicodeEncodeError as exc:
            raise InvalidArgumentError(f"PNG text key {key!r} must be Latin-1.") from exc
        if not 1 <= len(encoded) <= 79 or "\0" in key:
            raise InvalidArgumentError(f"PNG text key {key!r} must be 1 to 79 characters without NUL.")
        if "\0" in value:
            raise InvalidArgumentError(f"PNG text value for {key!r} must not contain NUL characters.")
        items.append((key, value))
    return items


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _encode_png16(q: np.ndarray, text_items: list[tuple[str, str]], icc_profile: bytes | None) -> bytes:
    """Encode an (H, W, C) uint16 array (C = 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA) as a 16-bit PNG.

    Pillow cannot write 16-bit colour; this writes filter type 0 rows (larger files than an adaptive
    encoder, but exact), which every PNG decoder reads.
    """
    height, width, channels = q.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = q.astype(">u2").reshape(height, width * channels).view(np.uint8)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()
    out = [b"\x89PNG\r\n\x1a\n", _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0))]
    if icc_profile:
        out.append(_png_chunk(b"iCCP", b"ICC Profile\0\0" + zlib.compress(icc_profile)))
    for key, value in text_items:
        try:
            out.append(_png_chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1")))
        except UnicodeEncodeError:
            out.append(_png_chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + value.encode("utf-8")))
    out.append(_png_chunk(b"IDAT", zlib.compress(raw, 6)))
    out.append(_png_chunk(b"IEND", b""))
    return b"".join(out)


__all__ = ["quantize", "to_pil", "write_png"]
