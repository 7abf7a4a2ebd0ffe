"""Regenerate the example images in this folder from the demo model's procedural world.

    python examples/make_examples.py [--output DIR]     # default: this folder

* ``painting.png`` — a house in the held-out artist style ("velmora") at an odd, non-square size
  (224 x 160, width x height): the image the README's first command protects with the demo model.
* ``pointillism_tree.jpg`` — a training-style image saved as JPEG (to exercise JPEG input).
* ``neon_star.png`` — another training style, square.

All are deterministic (fixed seeds) and small (each well under 150 KB), so the repository may ship them.
With ``--output DIR`` they go to another folder, with ``examples.json`` listing what was written (the shipped
folder holds no such list).
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

from artshield.cli_support import ArgumentParser
from artshield.fileio import write_json_atomic
from artshield.models.demo.world import ARTIST_STYLE, render

HERE = Path(__file__).resolve().parent
MAX_BYTES = 150_000

# (file name, style, subject, (height, width), seed, save options)
EXAMPLES = [
    ("painting.png", ARTIST_STYLE, "house", (160, 224), 7, {"optimize": True}),
    ("pointillism_tree.jpg", "pointillism", "tree", (192, 160), 11, {"quality": 90}),
    ("neon_star.png", "neon", "star", (128, 128), 5, {"optimize": True}),
]


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="make_examples.py", description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(HERE), help="folder for the images (default: examples/)")
    args = parser.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, style, subject, size, seed, options in EXAMPLES:
        path = out / name
        Image.fromarray(render(style, subject, size, seed=seed)).save(path, **options)
        size_bytes = path.stat().st_size
        if size_bytes > MAX_BYTES:
            print(f"{path} is {size_bytes} bytes, over the {MAX_BYTES}-byte budget for shipped examples", file=sys.stderr)
            return 1
        print(f"{path.name}: {style} {subject}, {size[1]}x{size[0]} (WxH), {size_bytes / 1000:.1f} KB")
        written.append({"file": name, "style": style, "subject": subject, "width": size[1], "height": size[0],
                        "seed": seed, "bytes": size_bytes})
    if out.resolve() != HERE:
        write_json_atomic(out / "examples.json", {"images": written}, what="list of examples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
