"""Regenerate the example images in this folder from the demo model's procedural world.

    python examples/make_examples.py

* ``painting.png`` — a house in the held-out artist style ("velmora") at an odd, non-square size
  (224 x 160, width x height): the image the README's first command protects with the demo model.
* ``pointillism_tree.jpg`` — a training-style image saved as JPEG (to exercise JPEG input).
* ``neon_star.png`` — another training style, square.

All are deterministic (fixed seeds) and small (each well under 150 KB), so the repository may ship them.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from artshield.models.demo.world import ARTIST_STYLE, render

HERE = Path(__file__).resolve().parent
MAX_BYTES = 150_000

# (file name, style, subject, (height, width), seed, save options)
EXAMPLES = [
    ("painting.png", ARTIST_STYLE, "house", (160, 224), 7, {"optimize": True}),
    ("pointillism_tree.jpg", "pointillism", "tree", (192, 160), 11, {"quality": 90}),
    ("neon_star.png", "neon", "star", (128, 128), 5, {"optimize": True}),
]


def main() -> None:
    for name, style, subject, size, seed, options in EXAMPLES:
        path = HERE / name
        Image.fromarray(render(style, subject, size, seed=seed)).save(path, **options)
        size_bytes = path.stat().st_size
        if size_bytes > MAX_BYTES:
            raise SystemExit(f"{path} is {size_bytes} bytes, over the {MAX_BYTES}-byte budget for shipped examples")
        print(f"{path.name}: {style} {subject}, {size[1]}x{size[0]} (WxH), {size_bytes / 1000:.1f} KB")


if __name__ == "__main__":
    main()
