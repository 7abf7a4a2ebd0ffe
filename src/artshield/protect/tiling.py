"""Run a model objective on images of any size and aspect ratio, at full resolution.

The perturbation is always optimised on the image's own pixels. What the model sees is derived from them
differentiably: greyscale is repeated to three channels, sides are padded (by reflection) up to the
model's pixel multiple, and images larger than a tile are cut into overlapping tiles whose objectives are
averaged. Tiles are differentiated one at a time (their gradients summed into the full image) so memory
stays that of one tile, whatever the image size; time grows linearly with the number of pixels.
"""

from __future__ import annotations

import math

import torch

from ..engine.transforms import pad_to_multiple


def tile_starts(length: int, tile: int, overlap: int = 0) -> list[int]:
    """Start offsets of the fewest tiles of size `tile` that cover [0, length) sharing at least `overlap`
    pixels, spread evenly so every tile lies inside the image (any extra overlap is shared out)."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / max(tile - overlap, 1))
    count = max(count, 2)
    return sorted({round(i * (length - tile) / (count - 1)) for i in range(count)})


class FullResolutionObjective:
    """Wraps a model objective (defined on RGB batches whose sides are multiples of `multiple`) so that it
    accepts any (B, 1 or 3, H, W) batch.

    Args:
        objective: ``(images, generator) -> (B,)`` on model-ready images.
        multiple (`int`): the model's pixel multiple (VAE factor times UNet down-sampling).
        tile_size (`int`): images with a side above this are processed as tiles of this size (rounded to
            `multiple`).
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

    def boxes(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """(top, left, height, width) of every tile for an image of this size."""
        tile = self.tile_size
        rows = tile_starts(height, tile, self.overlap)
        cols = tile_starts(width, tile, self.overlap)
        return [(top, left, min(tile, height), min(tile, width)) for top in rows for left in cols]

    def _model_view(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return pad_to_multiple(images, self.multiple)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        boxes = self.boxes(*images.shape[-2:])
        if len(boxes) == 1:
            return self.objective(self._model_view(images), generator)
        if not (torch.is_grad_enabled() and images.requires_grad):
            # Evaluation only: average the tiles' objectives.
            values = [self.objective(self._model_view(_crop(images, box)), generator) for box in boxes]
            return torch.stack(values).mean(dim=0)
        # Differentiate tile by tile, then hand the engine a surrogate whose value is the mean tile loss and
        # whose gradient with respect to `images` is the mean of the tiles' gradients.
        detached = images.detach()
        grad = torch.zeros_like(detached)
        total = torch.zeros(images.shape[0], device=images.device, dtype=torch.float32)
        for box in boxes:
            tile = _crop(detached, box).clone().requires_grad_(True)
            loss = self.objective(self._model_view(tile), generator)
            (tile_grad,) = torch.autograd.grad(loss.sum(), tile)
            top, left, height, width = box
            grad[..., top : top + height, left : left + width] += tile_grad
            total += loss.detach().float()
        count = len(boxes)
        linear = (images * grad).flatten(1).sum(dim=1)
        return total / count + (linear - linear.detach()) / count


def _crop(images: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    top, left, height, width = box
    return images[..., top : top + height, left : left + width]
