"""Run a model objective on images of any size and aspect ratio, at full resolution.

The perturbation is always optimised on the image's own pixels. What the model sees is derived from them
differentiably: greyscale is repeated to three channels, sides are padded (by reflection) up to the
model's pixel multiple, and images larger than a tile are cut into tiles whose objectives are averaged.
Tiles are differentiated one at a time (their gradients summed into the full image) so memory stays that
of one tile, whatever the image size; time grows linearly with the number of pixels.

Tiles are sized **by area**: a tile is whatever the model sees in one pass, and it may hold up to
``tile_size²`` pixels *after padding*. An image that fits in that area is one tile whatever its shape.
A long strip is cut along its length into segments as wide as the strip, and narrow segments are laid
side by side in one tile (a 3×100000 strip becomes 5 tiles of 85 segments on the demo model, not 391
padded 32×256 tiles), so thin images cost what their pixels cost, not what their padding costs.
Larger images in both directions get square ``tile_size`` tiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..engine.transforms import pad_to_multiple
from ..imageio import as_rgb

Box = tuple[int, int, int, int]  # (top, left, height, width)


def tile_starts(length: int, tile: int, overlap: int = 0) -> list[int]:
    """Start offsets of the fewest tiles of size `tile` that cover [0, length) sharing at least `overlap`
    pixels, spread evenly so every tile lies inside the image (any extra overlap is shared out)."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / max(tile - overlap, 1))
    count = max(count, 2)
    return sorted({round(i * (length - tile) / (count - 1)) for i in range(count)})


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class Tile:
    """What the model sees in one pass: one box, or several equal boxes of a strip laid side by side
    (concatenated along `dim`: -1 puts segments of a tall strip next to each other, -2 stacks segments of a
    wide strip)."""

    boxes: tuple[Box, ...]
    dim: int = -1

    def view(self, images: torch.Tensor) -> torch.Tensor:
        crops = [_crop(images, box) for box in self.boxes]
        return crops[0] if len(crops) == 1 else torch.cat(crops, dim=self.dim)


def plan_tiles(height: int, width: int, tile_size: int, multiple: int, overlap: int = 0) -> list[Tile]:
    """The tiles for an image of this size: each holds at most ``tile_size²`` pixels once padded to
    `multiple` (or one `multiple`-wide segment, when the image is thinner than that), and together they
    cover every pixel. See the module docstring."""
    area = tile_size * tile_size
    if _round_up(height, multiple) * _round_up(width, multiple) <= area:
        return [Tile(((0, 0, height, width),))]
    narrow, long = min(height, width), max(height, width)
    if narrow <= tile_size:
        per_tile = tile_size // narrow  # segments side by side; their padded total stays within tile_size
        if per_tile >= 2:
            segment = tile_size
        else:
            segment = max(tile_size, (area // _round_up(narrow, multiple)) // multiple * multiple)
        segment = min(segment, long)
        starts = tile_starts(long, segment, overlap)
        if width == narrow:  # a tall strip: segments are cut down its height, laid side by side
            boxes = [(s, 0, segment, width) for s in starts]
            dim = -1
        else:
            boxes = [(0, s, height, segment) for s in starts]
            dim = -2
        return [Tile(tuple(boxes[i : i + per_tile]), dim) for i in range(0, len(boxes), per_tile)]
    rows = tile_starts(height, tile_size, overlap)
    cols = tile_starts(width, tile_size, overlap)
    return [Tile(((top, left, tile_size, tile_size),)) for top in rows for left in cols]


class FullResolutionObjective:
    """Wraps a model objective (defined on RGB batches whose sides are multiples of `multiple`) so that it
    accepts any (B, 1 or 3, H, W) batch.

    Args:
        objective: ``(images, generator) -> (B,)`` on model-ready images.
        multiple (`int`): the model's pixel multiple (VAE factor times UNet down-sampling).
        tile_size (`int`): images that do not fit in ``tile_size²`` pixels (after padding) are processed as
            tiles of that area (`tile_size` rounded down to `multiple`); see :func:`plan_tiles`.
        overlap (`int`, defaults to 0): the least number of pixels neighbouring tiles share. The perturbation is
            one tensor over the whole image, so tiles need no overlap to avoid seams in it; overlap only
            gives pixels near a tile edge context from both sides, at the cost of computing them twice.
    """

    def __init__(self, objective, multiple: int, tile_size: int, overlap: int = 0):
        self.objective = objective
        self.multiple = multiple
        self.tile_size = max(multiple, (tile_size // multiple) * multiple)
        self.overlap = overlap

    @property
    def __name__(self) -> str:  # used by the engine's error messages
        return getattr(self.objective, "__qualname__", type(self.objective).__name__)

    def tiles(self, height: int, width: int) -> list[Tile]:
        """What the model sees, pass by pass, for an image of this size."""
        return plan_tiles(height, width, self.tile_size, self.multiple, self.overlap)

    def boxes(self, height: int, width: int) -> list[Box]:
        """(top, left, height, width) of every region cut from an image of this size (all tiles' boxes)."""
        return [box for tile in self.tiles(height, width) for box in tile.boxes]

    def _model_view(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            images = as_rgb(images)
        return pad_to_multiple(images, self.multiple)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        tiles = self.tiles(*images.shape[-2:])
        if len(tiles) == 1 and len(tiles[0].boxes) == 1:
            return self.objective(self._model_view(tiles[0].view(images)), generator)
        if not (torch.is_grad_enabled() and images.requires_grad):
            # Evaluation only: average the tiles' objectives.
            values = [self.objective(self._model_view(tile.view(images)), generator) for tile in tiles]
            return torch.stack(values).mean(dim=0)
        # Differentiate tile by tile, then hand the engine a surrogate whose value is the mean tile loss and
        # whose gradient with respect to `images` is the mean of the tiles' gradients.
        detached = images.detach()
        grad = torch.zeros_like(detached)
        total = torch.zeros(images.shape[0], device=images.device, dtype=torch.float32)
        for tile in tiles:
            crops = [_crop(detached, box).clone().requires_grad_(True) for box in tile.boxes]
            view = crops[0] if len(crops) == 1 else torch.cat(crops, dim=tile.dim)
            loss = self.objective(self._model_view(view), generator)
            grads = torch.autograd.grad(loss.sum(), crops)
            for (top, left, height, width), crop_grad in zip(tile.boxes, grads, strict=True):
                grad[..., top : top + height, left : left + width] += crop_grad
            total += loss.detach().float()
        count = len(tiles)
        linear = (images * grad).flatten(1).sum(dim=1)
        return total / count + (linear - linear.detach()) / count


def _crop(images: torch.Tensor, box: Box) -> torch.Tensor:
    top, left, height, width = box
    return images[..., top : top + height, left : left + width]
