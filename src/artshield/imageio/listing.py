"""Finding images in folders: by content (:func:`is_image_file`), with the files skipped and why (:func:`iter_images`)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..errors import ImageReadError
from .reading import PathLike

#: File-name extensions of the formats artshield expects to meet. Used only to word messages and as a
#: hint; whether a file *is* an image is decided by its content (:func:`is_image_file`).
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".png", ".apng", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".tif", ".tiff", ".bmp", ".dib",
        ".gif", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".jp2", ".j2k", ".jpx", ".ico", ".psd",
    }
)  # fmt: skip


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


__all__ = ["IMAGE_EXTENSIONS", "ImageListing", "is_image_file", "iter_images"]
