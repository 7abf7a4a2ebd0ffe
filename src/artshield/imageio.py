"""Reading and writing images safely.

Artists hand artshield whatever their software saved: PNG, JPEG, WebP, TIFF, GIF, with or without
transparency, greyscale or colour, 8 or 16 bits, rotated by an EXIF tag, sometimes CMYK from a print
workflow. :func:`read_image` turns all of these into one form, a float tensor in [0, 1] in display
orientation plus what is needed to write the result back faithfully (alpha, bit depth, ICC profile,
PNG text). :func:`write_png` writes a protected copy atomically, never over the original, and never
beyond the perturbation budget because of rounding.

What Pillow (and therefore artshield) reduces
---------------------------------------------
Pillow has no mode for 16 bits per channel *colour*: a 16-bit RGB or RGBA PNG (and a 16-bit
grey+alpha PNG, which Pillow opens as RGBA) is decoded to 8 bits per channel. :func:`read_image` then
reports ``bit_depth=8`` (the precision of the data it returns) and ``source_bit_depth=16``, and logs a
warning; the protected copy of such a file is an 8-bit PNG. Only 16-bit *greyscale without alpha*
(Pillow modes ``I;16``, ``I;16B``, ``I``) is read at full precision (``bit_depth=16``). Alpha is always
8 bits on reading. :func:`write_png` can write 16-bit colour and alpha (with a small built-in PNG
encoder, since Pillow cannot), so callers that produce 16-bit data from elsewhere are not reduced.

Animated GIF/APNG/WebP and multi-page TIFF: only the first frame is read, with a logged warning (not an
error: an artist who exported a one-frame APNG by accident should still be protected). The
``n_frames`` field says how many frames the file had.

Metadata: PNG text chunks, the ICC profile and alpha are carried over by :func:`write_png` when the
caller passes them. EXIF (its orientation is baked into the pixels on reading), XMP and DPI are not
written; a transparent-colour key (PNG tRNS on RGB or L) becomes a real alpha channel.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Union

import numpy as np
import torch
from PIL import Image, ImageOps, PngImagePlugin

from .errors import ArtshieldError, ImageReadError, ImageWriteError, InvalidArgumentError
from .fileio import atomic_write

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: File-name extensions of the formats artshield expects to meet. Used only to word messages and as a
#: hint; whether a file *is* an image is decided by its content (:func:`is_image_file`).
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".png", ".apng", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".tif", ".tiff", ".bmp", ".dib",
        ".gif", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".jp2", ".j2k", ".jpx", ".ico", ".psd",
    }
)  # fmt: skip

# Pillow's decompression-bomb limit is a module global; read_image sets it to the caller's limit for the
# duration of one decode. The lock keeps concurrent read_image calls from restoring each other's value.
_PIXEL_LIMIT_LOCK = threading.Lock()

# Tolerance, in grid levels, for treating an original value as lying exactly on the integer grid. A
# float32 k/65535 is off by at most ~4e-3 levels, a float32 k/255 by ~2e-5 levels.
_GRID_SNAP_LEVELS = 1e-2


@dataclass
class LoadedImage:
    """An image read from disk, in display orientation, with what is needed to write it back.

    Attributes:
        rgb: float32 tensor (1, C, H, W) in [0, 1]; C = 3 for colour, C = 1 for greyscale (kept
            single-channel so that a protection can keep a grey image grey).
        alpha: float32 tensor (1, 1, H, W) in [0, 1], or None when the image has no transparency.
        bit_depth: 8 or 16, the precision of the values in ``rgb`` (what the output should use).
        mode: the Pillow mode of the file as opened (e.g. ``"P"``, ``"CMYK"``, ``"I;16"``).
        path: where it was read from (None for :func:`from_pil` images).
        format: the Pillow format name (``"PNG"``, ``"JPEG"``...), or None.
        info: text metadata: PNG tEXt/zTXt/iTXt chunks (all of them, including those after the image
            data), or the string-valued metadata of other formats. Used e.g. to detect files that
            artshield already protected.
        icc_profile: the embedded ICC profile to carry over, or None. Dropped (with a log message) when
            its colour space does not match ``rgb`` (a CMYK profile after conversion to RGB).
        source_bit_depth: bits per sample in the file when known (PNG), else ``bit_depth``. Differs from
            ``bit_depth`` when Pillow reduced a 16-bit colour file to 8 bits.
        n_frames: number of frames in the file; only the first was read.
    """

    rgb: torch.Tensor
    alpha: torch.Tensor | None
    bit_depth: int
    mode: str
    path: Path | None = None
    format: str | None = None
    info: dict[str, str] = field(default_factory=dict)
    icc_profile: bytes | None = None
    source_bit_depth: int | None = None
    n_frames: int = 1

    @property
    def channels(self) -> int:
        """Number of colour channels: 1 (grey) or 3 (RGB)."""
        return int(self.rgb.shape[1])

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels, as Pillow reports sizes."""
        return int(self.rgb.shape[3]), int(self.rgb.shape[2])

    @property
    def has_alpha(self) -> bool:
        """Whether the image carries an alpha channel."""
        return self.alpha is not None


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


class ImageTooLargeError(ImageReadError):
    """An image with more pixels than the reader's limit (a decompression-bomb guard). `pixels` is its
    pixel count (None when unknown) and `limit` the limit, so that a command can say how to raise it
    (``protect --max-pixels``; ``read_image(max_pixels=...)`` in Python)."""

    def __init__(self, message: str, *, pixels: int | None = None, limit: int | None = None):
        super().__init__(message)
        self.pixels = pixels
        self.limit = limit


def read_image(path: PathLike, *, max_pixels: int | None = None) -> LoadedImage:
    """Read an image file into a :class:`LoadedImage` (float tensor in [0, 1], display orientation).

    The file is opened read-only and never modified. EXIF orientation is applied, palette images become
    RGB (RGBA with transparency), 1-bit and 8-bit grey become single-channel, 16-bit grey keeps 16 bits,
    CMYK is converted to RGB (through its ICC profile when it has one, else Pillow's naive formula).
    See the module docstring for what Pillow reduces to 8 bits and for multi-frame files.

    Args:
        path: the image file.
        max_pixels: refuse images with more pixels than this (decompression-bomb guard). None uses
            Pillow's ``Image.MAX_IMAGE_PIXELS`` (89,478,485 pixels unless changed; no limit if that is
            None). Pass a larger number to read a genuinely huge artwork.

    Raises:
        ImageReadError: the file is missing, a directory, not a regular file (a device such as
            ``/dev/zero``, a pipe), empty, not an image, truncated or corrupt, or of a kind that cannot be
            represented (32-bit float).
        ImageTooLargeError: (an ImageReadError) more pixels than ``max_pixels``.
        InvalidArgumentError: ``max_pixels`` is not a positive integer.
    """
    p = Path(os.fspath(path))
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1):
        raise InvalidArgumentError(f"`max_pixels` must be a positive integer or None, but is {max_pixels!r}.")
    _check_readable_file(p)
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with open(p, "rb") as fh:
            header = fh.read(33)
            fh.seek(0)
            # Pillow's own guard is switched off while the header is parsed (opening decodes nothing), so
            # that the size check below can name the image's size and the limit in every case.
            with _pixel_limit(None):
                with Image.open(fh) as im:
                    _check_pixel_count(p, im.size, limit)
                    n_frames = int(getattr(im, "n_frames", 1) or 1)
                    im.seek(0)  # counting frames may have moved it
                    im.load()
                    loaded = _normalise(im, path=p, png_header=header, n_frames=n_frames)
    except ArtshieldError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # pragma: no cover - see above
        raise ImageTooLargeError(f"{p}: image is too large to read safely ({exc}).") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageReadError(f"{p}: not an image file Pillow can read (format not recognised).") from exc
    except PermissionError as exc:
        raise ImageReadError(f"{p}: permission denied when reading the file.") from exc
    except MemoryError as exc:
        raise ImageReadError(f"{p}: not enough memory to decode the image.") from exc
    except Exception as exc:  # noqa: BLE001 - Pillow's plugins raise many kinds (OSError, SyntaxError,
        # struct.error, EOFError, ValueError, zlib.error...) on corrupt input; all mean "bad file".
        reason = str(exc) or type(exc).__name__
        raise ImageReadError(f"{p}: the image data is truncated or corrupt ({reason}).") from exc
    if n_frames > 1:
        logger.warning("%s has %d frames; artshield reads (and protects) only the first.", p, n_frames)
    return loaded


def from_pil(image: Image.Image, *, path: PathLike | None = None) -> LoadedImage:
    """Convert a PIL image into a :class:`LoadedImage` with the same rules as :func:`read_image`.

    EXIF orientation is applied. The image is not modified (conversions work on copies).
    """
    if not isinstance(image, Image.Image):
        raise InvalidArgumentError(f"`image` must be a PIL.Image.Image, but is {type(image).__name__}.")
    image.load()
    return _normalise(image, path=Path(os.fspath(path)) if path is not None else None, png_header=None,
                      n_frames=int(getattr(image, "n_frames", 1) or 1))


def _check_readable_file(p: Path) -> None:
    """Raise ImageReadError for the problems that stat() can see, with a specific message."""
    try:
        st = p.stat()
    except FileNotFoundError as exc:
        raise ImageReadError(f"{p}: no such file.") from exc
    except PermissionError as exc:
        raise ImageReadError(f"{p}: permission denied.") from exc
    except OSError as exc:
        raise ImageReadError(f"{p}: cannot access the file ({exc.strerror or exc}).") from exc
    if p.is_dir():
        raise ImageReadError(f"{p}: is a directory, not an image file.")
    if not p.is_file():
        raise ImageReadError(f"{p}: is not a regular file.")
    if st.st_size == 0:
        raise ImageReadError(f"{p}: the file is empty (0 bytes).")


class _pixel_limit:
    """Context manager: set Pillow's decompression-bomb limit for one decode, then restore it."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.saved: int | None = None

    def __enter__(self) -> None:
        _PIXEL_LIMIT_LOCK.acquire()
        self.saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = self.limit

    def __exit__(self, *exc: object) -> None:
        Image.MAX_IMAGE_PIXELS = self.saved
        _PIXEL_LIMIT_LOCK.release()


def _check_pixel_count(p: Path, size: tuple[int, int], limit: int | None) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageReadError(f"{p}: the image has zero size ({width}x{height} pixels).")
    if limit is not None and width * height > limit:
        raise ImageTooLargeError(
            f"{p}: image is {width}×{height} = {width * height} pixels, more than the limit of {limit} pixels "
            "(a guard against decompression bombs).",
            pixels=width * height,
            limit=limit,
        )


def _png_ihdr(header: bytes | None) -> tuple[int, int] | None:
    """(bit depth, colour type) from the first 33 bytes of a PNG file, or None if not a PNG."""
    if header is None or len(header) < 26 or not header.startswith(b"\x89PNG\r\n\x1a\n") or header[12:16] != b"IHDR":
        return None
    return header[24], header[25]


def _icc_colour_space(profile: bytes | None) -> str | None:
    """The data colour space signature of an ICC profile (``"RGB"``, ``"GRAY"``, ``"CMYK"``...)."""
    if not profile or len(profile) < 20:
        return None
    return profile[16:20].decode("latin-1", errors="replace").strip()


def _text_metadata(im: Image.Image) -> dict[str, str]:
    """PNG text chunks (all of them), or the string-valued metadata of other formats."""
    text = getattr(im, "text", None) if im.format == "PNG" else None
    if isinstance(text, Mapping):
        return {str(k): str(v) for k, v in text.items()}
    return {k: v for k, v in im.info.items() if isinstance(k, str) and isinstance(v, str)}


def _normalise(im: Image.Image, *, path: Path | None, png_header: bytes | None, n_frames: int) -> LoadedImage:
    """Turn an opened, loaded PIL image into a LoadedImage (the mode table lives here)."""
    where = str(path) if path is not None else "image"
    original_mode = im.mode
    fmt = im.format
    info_text = _text_metadata(im)
    icc = im.info.get("icc_profile") or None
    ihdr = _png_ihdr(png_header)
    source_bit_depth = ihdr[0] if ihdr is not None else None

    try:
        transposed = ImageOps.exif_transpose(im)
    except Exception as exc:  # noqa: BLE001 - a broken EXIF block should not stop protection.
        logger.warning("%s: could not apply the EXIF orientation (%s); using the stored orientation.", where, exc)
        transposed = None
    if transposed is not None:
        im = transposed

    mode = im.mode
    bit_depth = 8
    alpha_arr: np.ndarray | None = None
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        if "transparency" in im.info:
            logger.warning("%s: the transparent-colour key of a 16-bit greyscale image is ignored.", where)
        arr = np.asarray(im)
        if mode == "I" and arr.size and (int(arr.min()) < 0 or int(arr.max()) > 65535):
            logger.warning("%s: 32-bit integer values outside [0, 65535]; clipped to 16 bits.", where)
        values = np.clip(arr.astype(np.int64), 0, 65535).astype(np.float32) / 65535.0
        rgb_arr = values[:, :, None]
        bit_depth = 16
    elif mode == "F":
        raise ImageReadError(f"{where}: 32-bit floating-point images are not supported; save it as a 16-bit PNG.")
    else:
        if mode == "CMYK":
            im, icc = _cmyk_to_rgb(im, icc, where)
        elif mode == "P":
            im = im.convert("RGBA" if im.has_transparency_data else "RGB")
        elif mode == "PA":
            im = im.convert("RGBA")
        elif mode == "1":
            im = im.convert("L")
        elif mode == "La":
            im = im.convert("LA")
        elif mode == "RGBa":
            im = im.convert("RGBA")
        elif mode == "RGBA" and ihdr is not None and ihdr[1] == 4:
            # A 16-bit grey+alpha PNG: Pillow opens it as RGBA with R == G == B; keep it grey.
            im = im.convert("LA")
        elif mode in ("L", "RGB") and "transparency" in im.info:
            # A PNG colour-key (tRNS) transparency: make it a real alpha channel so it survives.
            im = im.convert(mode + "A" if mode == "RGB" else "LA")
        elif mode not in ("L", "LA", "RGB", "RGBA"):
            try:
                im = im.convert("RGB")
            except (ValueError, OSError) as exc:
                raise ImageReadError(f"{where}: unsupported image mode {mode!r} ({exc}).") from exc
        arr = np.asarray(im, dtype=np.uint8)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if im.mode in ("LA", "RGBA"):
            alpha_arr = arr[:, :, -1:]
            arr = arr[:, :, :-1]
        rgb_arr = arr.astype(np.float32) / 255.0
        if source_bit_depth == 16:
            logger.warning(
                "%s: 16-bit colour (or grey+alpha) PNG; Pillow decodes it to 8 bits per channel, so the "
                "protected copy will be 8-bit.", where,
            )

    if rgb_arr.shape[0] == 0 or rgb_arr.shape[1] == 0:
        raise ImageReadError(f"{where}: the image has zero size.")
    rgb = torch.from_numpy(np.ascontiguousarray(rgb_arr.transpose(2, 0, 1)))[None]
    alpha = None
    if alpha_arr is not None:
        alpha = torch.from_numpy(np.ascontiguousarray(alpha_arr.transpose(2, 0, 1)).astype(np.float32) / 255.0)[None]

    space = _icc_colour_space(icc)
    wanted = "GRAY" if rgb.shape[1] == 1 else "RGB"
    if icc is not None and space != wanted:
        logger.info("%s: dropping an ICC profile for colour space %r (the image is now %s).", where, space, wanted)
        icc = None

    return LoadedImage(
        rgb=rgb,
        alpha=alpha,
        bit_depth=bit_depth,
        mode=original_mode,
        path=path,
        format=fmt,
        info=info_text,
        icc_profile=icc,
        source_bit_depth=source_bit_depth if source_bit_depth is not None else bit_depth,
        n_frames=n_frames,
    )


def _cmyk_to_rgb(im: Image.Image, icc: bytes | None, where: str) -> tuple[Image.Image, bytes | None]:
    """CMYK → RGB through the embedded profile when there is one (then sRGB, no profile carried)."""
    if icc is not None and _icc_colour_space(icc) == "CMYK":
        try:
            from PIL import ImageCms

            converted = ImageCms.profileToProfile(
                im, ImageCms.ImageCmsProfile(io.BytesIO(icc)), ImageCms.createProfile("sRGB"), outputMode="RGB"
            )
            if converted is not None:
                return converted, None
        except Exception as exc:  # noqa: BLE001 - ImageCms missing or profile unusable: fall back below.
            logger.warning("%s: could not convert CMYK through its ICC profile (%s); using a plain conversion.",
                           where, exc)
    logger.info("%s: CMYK image converted to RGB without colour management.", where)
    return im.convert("RGB"), None


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


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
        space = _icc_colour_space(bytes(icc_profile))
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


def as_rgb(images: torch.Tensor) -> torch.Tensor:
    """A (B, 1 or 3, H, W) or (1 or 3, H, W) image tensor with greyscale repeated to three channels (models
    only take RGB); RGB is returned as it is. Anything else is an InvalidArgumentError naming the shape."""
    if images.dim() not in (3, 4) or images.shape[-3] not in (1, 3):
        raise InvalidArgumentError(
            f"images must be (B, 3, H, W) or (B, 1, H, W) (or one image without B), but are {tuple(images.shape)}."
        )
    if images.shape[-3] == 3:
        return images
    return images.expand(*images.shape[:-3], 3, *images.shape[-2:])


def read_mask(path: PathLike) -> torch.Tensor:
    """A mask image as a (1, 1, H, W) float tensor in [0, 1]: **white = the region an editor may repaint**
    (left unprotected), black = protected. Colours are averaged; transparent pixels count as black."""
    loaded = read_image(path)
    mask = loaded.rgb.mean(dim=1, keepdim=True)
    return mask * loaded.alpha if loaded.alpha is not None else mask



# --------------------------------------------------------------------------------------------------
# Finding images
# --------------------------------------------------------------------------------------------------


def is_image_file(path: PathLike) -> bool:
    """Whether ``path`` is a regular file whose *content* Pillow recognises as an image.

    Only the header is read. A very large image (beyond the decompression-bomb limit) still counts as an
    image; :func:`read_image` is where size is refused.
    """
    p = Path(os.fspath(path))
    try:
        if not p.is_file() or p.stat().st_size == 0:
            return False
        with open(p, "rb") as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fh):
                return True
    except Image.DecompressionBombError:
        return True
    except Exception:  # noqa: BLE001 - anything Pillow cannot identify is "not an image".
        return False


@dataclass
class ImageListing:
    """The result of :func:`iter_images`: iterate it for the image paths; ``skipped`` says what was not.

    Attributes:
        images: image files, sorted by path.
        skipped: (path, reason) for every visible file that is not a readable image, sorted by path.
    """

    images: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def __iter__(self) -> Iterator[Path]:
        return iter(self.images)

    def __len__(self) -> int:
        return len(self.images)


def iter_images(folder: PathLike, recursive: bool = False) -> ImageListing:
    """List the image files in ``folder`` (by content), sorted, and the files skipped with reasons.

    Hidden files and folders (names starting with ``.``, which include artshield's own temporary files
    and ``.DS_Store``) are ignored silently. Symbolic links to files are followed; in recursive mode,
    links to folders are not (to avoid cycles).

    Raises:
        ImageReadError: ``folder`` does not exist or is not a directory.
    """
    root = Path(os.fspath(folder))
    if not root.exists():
        raise ImageReadError(f"{root}: no such folder.")
    if not root.is_dir():
        raise ImageReadError(f"{root}: is not a folder.")
    candidates: list[Path] = []
    if recursive:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            candidates.extend(Path(dirpath) / f for f in filenames if not f.startswith("."))
    else:
        try:
            candidates = [e for e in root.iterdir() if not e.name.startswith(".") and not e.is_dir()]
        except OSError as exc:
            raise ImageReadError(f"{root}: cannot list the folder ({exc.strerror or exc}).") from exc
    listing = ImageListing()
    for p in sorted(candidates):
        if is_image_file(p):
            listing.images.append(p)
        elif not p.is_file():
            listing.skipped.append((p, "not a regular file (broken link, socket or device)"))
        elif p.suffix.lower() in IMAGE_EXTENSIONS:
            listing.skipped.append((p, f"has an image extension ({p.suffix}) but its content is not an image "
                                       "Pillow recognises (empty, corrupt or unsupported)"))
        else:
            listing.skipped.append((p, "not an image (content not recognised)"))
    return listing


__all__ = [
    "IMAGE_EXTENSIONS",
    "as_rgb",
    "ImageListing",
    "ImageTooLargeError",
    "LoadedImage",
    "from_pil",
    "is_image_file",
    "iter_images",
    "quantize",
    "read_image",
    "read_mask",
    "to_pil",
    "write_png",
]
