"""Mask operations (no OpenCV): the default editable region, an exact distance transform and
DiffusionGuard's mask augmentation — in plain torch (OpenCV is not a dependency).

Convention: a mask is (B or 1, 1, H, W) with **1 = editable** (an editor may repaint it) and 0 = protected.

DiffusionGuard's "contour shrink" (``utils/mask_generation.py``) draws, every PGD step, n ~ U{1, …, 14}
rounds; each moves every point of the protected region's largest contour by offsets uniform in ±e
(e = ⌊U(0, r)·1.1⌋, r = √(π·area/2) as its code computes it), Gaussian-smoothed along the contour with
σ = 0.1·r; points that land outside the region snap back onto the old contour, and the contour is refilled.
Net effect: the region shrinks by a random depth that varies smoothly along its outline.

:func:`contour_shrink` produces that effect without tracing contours (**deviation**): the protected region
keeps the pixels whose exact Euclidean distance to the editable region exceeds a random depth field — the
sum over the n rounds of the positive part of a smooth Gaussian field with correlation length σ and the
spread the reference's smoothed offsets have. The result is always inside the original protected region.
It shrinks every protected component, where the reference keeps only the largest contour.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MAX_DISTANCE_CHUNK = 1 << 24  # elements per chunk of the column pass of the distance transform


def centre_ellipse_mask(images: torch.Tensor, semi_axis: float = 0.375) -> torch.Tensor:
    """Default editable mask (1, 1, H, W): everything outside a centred ellipse whose semi-axes are
    `semi_axis` times the height and width."""
    height, width = images.shape[-2:]
    y = (torch.arange(height, device=images.device) + 0.5 - height / 2) / (semi_axis * height)
    x = (torch.arange(width, device=images.device) + 0.5 - width / 2) / (semi_axis * width)
    inside = y.view(-1, 1).square() + x.view(1, -1).square() <= 1.0
    return (~inside).float().view(1, 1, height, width)


def distance_to_editable(mask: torch.Tensor) -> torch.Tensor:
    """Exact Euclidean distance (pixels) from each pixel to the nearest editable (mask 1) pixel; 0 on the
    editable region, H + W where there is none. Separable: a row pass, then a chunked column pass."""
    height, width = mask.shape[-2:]
    editable = mask[:, 0] > 0.5
    big = float(height + width)
    index = torch.arange(width, device=mask.device, dtype=torch.float32).expand_as(editable)
    left = torch.where(editable, index, -big).cummax(dim=-1).values
    right = torch.where(editable, index, 2 * big).flip(-1).cummin(dim=-1).values.flip(-1)
    rows = torch.minimum(index - left, right - index).clamp(max=big).square()  # (B, H, W)
    ys = torch.arange(height, device=mask.device, dtype=torch.float32)
    chunk = max(1, MAX_DISTANCE_CHUNK // max(1, height * width))
    out = []
    for start in range(0, height, chunk):  # output rows: min over source rows y' of rows[y'] + (y - y')²
        offsets = (ys[start : start + chunk].view(-1, 1) - ys.view(1, -1)).square()  # (c, H)
        out.append((rows.unsqueeze(1) + offsets.view(1, *offsets.shape, 1)).amin(dim=2))
    return torch.cat(out, dim=1).sqrt().unsqueeze(1).clamp(max=big)


def contour_shrink(mask, depth, radius, generator, iters: int = 15, strength: float = 1.1, smoothness: float = 0.1):
    """A randomly shrunk protected region, as an editable mask (B, 1, H, W) ⊇ `mask` (see the module
    docstring). `depth` is :func:`distance_to_editable` of `mask`; `radius` (B, 1, 1, 1) is r."""
    batch, (height, width) = mask.shape[0], mask.shape[-2:]
    device = generator.device
    r = radius.reshape(batch).float().to(device)
    rounds = torch.randint(1, max(2, iters), (batch,), generator=generator, device=device)
    offset = torch.floor(torch.rand(batch, generator=generator, device=device) * r * strength)
    sigma = (smoothness * r).clamp(min=1.0)
    # Spread of DiffusionGuard's offsets: uniform integers in ±e, averaged by a 1-D Gaussian of σ points.
    spread = torch.sqrt(((2 * offset + 1).square() - 1) / 12) / torch.sqrt((2 * math.sqrt(math.pi) * sigma).clamp(min=1))
    # Smooth fields: white noise on a grid of spacing ~σ/2, blurred over 2 cells; rounds summed, then upsampled.
    grid = max(1, int(float(sigma.min()) / 2))
    cells = (-(-height // grid), -(-width // grid))
    noise = torch.randn(batch * iters, 1, cells[0] + 12, cells[1] + 12, generator=generator, device=device)
    kernel = torch.exp(-0.5 * (torch.arange(-6, 7, device=device, dtype=torch.float32) / 2).square())
    kernel = kernel / kernel.sum()
    fields = F.conv2d(F.conv2d(noise, kernel.view(1, 1, 1, -1)), kernel.view(1, 1, -1, 1)).view(batch, iters, *cells)
    fields = fields / fields.flatten(2).std(dim=2).clamp(min=1e-6).view(batch, iters, 1, 1)
    active = (torch.arange(iters, device=device).view(1, -1) < rounds.view(-1, 1)).float().view(batch, iters, 1, 1)
    inward = (fields.clamp(min=0) * active).sum(dim=1, keepdim=True) * spread.view(batch, 1, 1, 1)
    inward = F.interpolate(inward, size=(height, width), mode="bilinear", align_corners=False).to(depth.device)
    kept = (depth > inward) & (mask < 0.5)
    return 1.0 - kept.float()
