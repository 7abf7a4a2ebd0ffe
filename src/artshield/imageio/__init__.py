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

The package is split by job: :mod:`.reading` (:func:`read_image`, :func:`from_pil`, :func:`read_mask`,
:func:`as_rgb`), :mod:`.writing` (:func:`quantize`, :func:`to_pil`, :func:`write_png`) and :mod:`.listing`
(:func:`is_image_file`, :func:`iter_images`). Import from ``artshield.imageio``; to monkeypatch a function in
a test, patch it in the submodule that defines it (e.g. ``artshield.imageio.reading.read_image``).
"""

from __future__ import annotations

from .listing import IMAGE_EXTENSIONS, ImageListing, is_image_file, iter_images
from .reading import ImageTooLargeError, LoadedImage, as_rgb, from_pil, read_image, read_mask
from .writing import quantize, to_pil, write_png

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
