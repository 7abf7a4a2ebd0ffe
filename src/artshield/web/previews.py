"""What the page shows of an image: thumbnails, the before / after / ×10 comparison and 1:1 crops.

Only these go back to the browser for viewing (never a large image at full size: the known way web UIs
choke on 4k art); the full image leaves only as a download.
"""

from __future__ import annotations

import io

PREVIEW_SIZE = 1024  # before / after / ×10 previews (the full image only through downloads and 1:1 crops)
AMPLIFY = 10  # the perturbation is shown ×10 around mid-grey
MAX_CROP = 512


def thumbnail(rgb, alpha, size: int):
    """A PIL image of at most `size` pixels a side from (1, C, H, W) tensors (Lanczos; alpha kept)."""
    from PIL import Image

    from ..imageio import to_pil

    image = to_pil(rgb[0], None if alpha is None else alpha[0], bit_depth=8)
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGBA" if alpha is not None else "RGB")
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    return image


def png_bytes(image) -> bytes:
    """A PIL image as PNG bytes (fast compression: previews are regenerated, not archived)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=3)
    return buffer.getvalue()


def amplified_difference(before, after):
    """The perturbation ×AMPLIFY around mid-grey, clipped to [0, 1]."""
    return ((after - before) * AMPLIFY + 0.5).clamp(0, 1)


def comparison_previews(loaded, saved) -> dict:
    """``before``, ``after`` and ``diff`` (×10) previews of an original and its protected copy (LoadedImages)."""
    return {
        "before": thumbnail(loaded.rgb, loaded.alpha, PREVIEW_SIZE),
        "after": thumbnail(saved.rgb, saved.alpha, PREVIEW_SIZE),
        "diff": thumbnail(amplified_difference(loaded.rgb, saved.rgb), None, PREVIEW_SIZE),
    }


def crop_png(before, after, kind: str, x: float, y: float, size: int) -> bytes:
    """A `size`-pixel square at full resolution around (x, y) (fractions of the width and height) of the
    original (`before`), the protected image (`after`) or the perturbation ×10 (`diff`), as PNG bytes.
    `after` may be None for ``kind="before"``."""
    size = max(16, min(int(size), MAX_CROP))
    width, height = before.size
    w, h = min(size, width), min(size, height)
    left = min(max(int(x * width - w / 2), 0), width - w)
    top = min(max(int(y * height - h / 2), 0), height - h)
    window = (slice(None), slice(None), slice(top, top + h), slice(left, left + w))
    if kind == "before":
        rgb, alpha = before.rgb[window], None if before.alpha is None else before.alpha[window]
    elif kind == "after":
        rgb, alpha = after.rgb[window], None if after.alpha is None else after.alpha[window]
    else:
        rgb, alpha = amplified_difference(before.rgb[window], after.rgb[window]), None
    return png_bytes(thumbnail(rgb, alpha, size))


__all__ = ["AMPLIFY", "PREVIEW_SIZE", "amplified_difference", "comparison_previews", "crop_png", "png_bytes", "thumbnail"]
