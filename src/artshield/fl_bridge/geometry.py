"""Geometry of stacked model updates: Gram matrices, pairwise distances, cosines and Krum scores.

Attacks (Fang's Krum variant, min-max) and defenses (Krum, Bulyan, RFA, FLAME, FoolsGold, Multi-metrics) all
measure the same (n, d) update matrices; the arithmetic lives here once. Everything goes through one Gram
product per matrix: ``O(n²d)`` once, then ``O(n²)`` per question, which is what makes robust aggregation at a
million parameters cheap.
"""

from __future__ import annotations

import torch

#: Distances below this fraction of the largest squared norm trigger a centred second Gram product.
_CANCELLATION = 1e-3


def gram_matrix(x: torch.Tensor) -> torch.Tensor:
    """``x xᵀ`` in float64 (products in the updates' precision). On the CPU through NumPy, whose ``a @ a.T``
    calls BLAS ``syrk`` (half the work of a general product: 0.18 s against torch's 0.25 s for 100 × 1M float32
    on one thread)."""
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        array = x.numpy()
        return torch.from_numpy(array @ array.T).double()
    return (x @ x.T).double()


def _gram(x: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
    g = gram_matrix(x)
    if extra is not None:
        b = (x @ extra).double()
        c = (extra @ extra).double().reshape(1)
        g = torch.cat([torch.cat([g, b[:, None]], 1), torch.cat([b, c])[None]], 0)
    return (g + g.T) / 2


def sq_distances_from_gram(g: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances (float64, non-negative, zero diagonal) from a Gram matrix."""
    sq = g.diagonal()
    d = (sq[:, None] + sq[None, :] - 2 * g).clamp_min_(0)
    d.fill_diagonal_(0)
    return d


def affine_gram(x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
    """Gram matrix (float64) of the rows of `x` (and of `extra` as one more row), valid for distances and
    affine combinations: the rows may have been shifted by a common vector to avoid cancellation."""
    g = _gram(x, extra)
    if g.shape[0] > 1:
        d = sq_distances_from_gram(g)
        off = d[~torch.eye(d.shape[0], dtype=torch.bool, device=d.device)]
        scale = g.diagonal().max()
        if scale > 0 and off.median() < _CANCELLATION * scale:
            shift = x.mean(dim=0)
            g = _gram(x - shift, None if extra is None else extra - shift)
    return g


def pairwise_sq_distances(x: torch.Tensor) -> torch.Tensor:
    """``(n, n)`` squared Euclidean distances between the rows of `x` from one Gram product (float64)."""
    return sq_distances_from_gram(affine_gram(x))


def cosine_from_gram(g: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine similarities from a (plain, unshifted) Gram matrix; 0 where a row is zero."""
    norms = g.diagonal().clamp_min(0).sqrt()
    denominator = norms[:, None] * norms[None, :]
    return torch.where(denominator > 0, g / denominator.clamp_min(1e-300), torch.zeros_like(g)).clamp_(-1, 1)


def krum_scores(distances: torch.Tensor, num_malicious: int) -> torch.Tensor:
    """Each update's Krum score: the sum of its squared distances to its ``n − f − 2`` nearest others
    (at least one, as Flower does when there are too few clients)."""
    n = distances.shape[0]
    if n == 1:
        return torch.zeros(1, dtype=distances.dtype, device=distances.device)
    nearest = min(n - 1, max(1, n - num_malicious - 2))
    others = distances.clone().fill_diagonal_(float("inf"))
    return others.topk(nearest, dim=1, largest=False).values.sum(dim=1)
