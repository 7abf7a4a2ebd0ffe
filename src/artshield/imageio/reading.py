"""Reading images: any mode, EXIF orientation, ICC profile, CMYK, 16-bit grey, pixel limit → :class:`LoadedImage`.

See :mod:`artshield.imageio` for what Pillow (and therefore artshield) reduces.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import ArtshieldError, ImageReadError, InvalidArgumentError

# One logger for the whole package (its name as before the split), so that log filters and captures keep
# working unchanged.
logger = logging.getLogger("artshield.imageio")

PathLike = Union[str, "os.PathLike[str]"]

# Pillow's decompression-bomb limit is a module global; read_image sets it to the caller's limit for the
# duration of one decode. The lock keeps concurrent read_image calls from restoring each other's value.
_PIXEL_LIMIT_LOCK = threading.Lock()


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


def icc_colour_space(profile: bytes | None) -> str | None:
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

    space = icc_colour_space(icc)
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
    if icc is not None and icc_colour_space(icc) == "CMYK":
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


__all__ = [
    "ImageTooLargeError",
    "LoadedImage",
    "PathLike",
    "as_rgb",
    "from_pil",
    "icc_colour_space",
    "read_image",
    "read_mask",
]
