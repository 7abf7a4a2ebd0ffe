"""Make ``mist_target.png``: the textural target pattern of Mist, Mist-v2 and SDST.

Mist's own target (``MIST.png``) is a black-and-white, blocky, high-frequency texture. This script draws an
equivalent of our own, deterministically (no randomness, no font, no download): a 512×512 black-and-white
pattern with a 64-pixel period — so it tiles seamlessly — built from interleaved bars and blocks at 4-, 8-,
16- and 32-pixel scales. Every scale is a whole number of the VAE's 8-pixel latent cells or splits one, so
the pattern leaves a strong, structured imprint in Stable Diffusion's latent space.

    python src/artshield/protect/assets/make_target.py        # rewrites mist_target.png beside this file
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 512
PERIOD = 64
OUTPUT = Path(__file__).with_name("mist_target.png")


def make_pattern(size: int = SIZE, period: int = PERIOD) -> np.ndarray:
    """The pattern as a (size, size) uint8 array of 0 and 255, periodic with `period` in both directions."""
    y, x = np.mgrid[0:period, 0:period]
    bars = ((x // 4) % 2 == 0) & ((y // 16) % 2 == 0)  # thin vertical bars in every other 16-px band
    rungs = ((y // 4) % 2 == 0) & ((x // 16) % 2 == 1)  # thin horizontal bars in the bands between
    blocks = ((x // 8 + y // 8) % 3 == 0) & ((x // 32 + y // 32) % 2 == 0)  # 8-px diagonal blocks, alternating quadrants
    frame = (x % 32 < 2) | (y % 32 < 2)  # 2-px lines on a 32-px grid
    cell = (bars | rungs | blocks) ^ frame
    tile = np.where(cell, 255, 0).astype(np.uint8)
    reps = -(-size // period)
    return np.tile(tile, (reps, reps))[:size, :size]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    # Mode "1" (1 bit per pixel) with optimisation keeps the file a few KB.
    Image.fromarray(make_pattern()).convert("1").save(args.output, optimize=True)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
