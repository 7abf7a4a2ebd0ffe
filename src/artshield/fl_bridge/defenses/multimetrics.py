"""Multi-metrics (Huang et al., ICCV 2023): three distances, whitened together, keep the most ordinary updates.

For each client ``i`` three features are summed over the other clients ``j`` (as ``Multi_metrics.exec`` in
siquanhuang/Multi-metrics ``defense.py``):

* ``(1 − cos(g_i, g_j))²`` (cosine),
* ``‖g_i − g_j‖₁`` (Manhattan),
* ``|‖g_i‖ − ‖g_j‖|`` (the code calls it "Euclidean": the difference of lengths).

With ``t_i`` the three features of client ``i`` and ``Σ`` their 3 × 3 covariance over the clients, the score is
``t_iᵀ Σ⁻¹ t_i`` (the "whitening"/dynamic weighting); the ``⌊p·n⌋`` lowest scores (``p = 0.3``, at least one) are
kept and averaged weighted by example counts. We use the pseudo-inverse of ``Σ`` (the reference's plain
inverse fails when a feature is constant, e.g. identical updates).

The reference code works on the clients' *model* vectors; we work on deltas (model − global). The Manhattan
distances are the same either way; the cosines and norms are those of the deltas, which is where the clients
differ (the models' cosines are all close to 1). Cost: cosines and norms come from one Gram product, but the
Manhattan sums are ``n²·d/2`` absolute differences (torch ``cdist`` with ``p = 1`` on column blocks): at
``n = 100, d = 10⁶`` this term dominates (see ``benchmarks/fl_aggregation.py``).
"""

from __future__ import annotations

import torch

from ..geometry import cosine_from_gram, gram_matrix
from .base import Aggregate, AggregationRule, RoundUpdates
from .robust import check_real, mask_of, round_matrix, weighted_mean

#: Columns per block for the Manhattan distances (a block of 100 clients is 100 × 65536 floats, 25 MB).
_BLOCK = 1 << 16


def manhattan_distances(x: torch.Tensor) -> torch.Tensor:
    """``(n, n)`` pairwise L1 distances (float64), accumulated over column blocks."""
    n = x.shape[0]
    out = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[1], _BLOCK):
        block = x[:, start:start + _BLOCK]
        out += torch.cdist(block[None], block[None], p=1)[0].double()
    return out


def multimetrics_scores(x: torch.Tensor) -> torch.Tensor:
    """Each update's score ``t_iᵀ Σ⁺ t_i`` (float64; lower = more ordinary)."""
    n = x.shape[0]
    g = gram_matrix(x)
    g = (g + g.T) / 2
    norms = g.diagonal().clamp_min(0).sqrt()
    off = ~torch.eye(n, dtype=torch.bool, device=x.device)
    cosine = ((1 - cosine_from_gram(g)) ** 2 * off).sum(dim=1)
    manhattan = (manhattan_distances(x) * off).sum(dim=1)
    length = ((norms[:, None] - norms[None, :]).abs() * off).sum(dim=1)
    features = torch.stack([cosine, manhattan, length], dim=1)  # (n, 3)
    if n < 2:
        return torch.zeros(n, dtype=torch.float64, device=x.device)
    covariance = torch.cov(features.T)
    return ((features @ torch.linalg.pinv(covariance)) * features).sum(dim=1)


class MultiMetrics(AggregationRule):
    """Multi-metrics: cosine, Manhattan and length-difference sums, Mahalanobis-style score, keep the lowest p."""

    name = "multimetrics"
    selects = True

    def __init__(self, p: float = 0.3):
        self.p = check_real(self.name, "p", p, low=0.0, high=1.0, low_open=True)

    def aggregate(self, updates: RoundUpdates) -> Aggregate:
        x, w = round_matrix(self.name, updates)
        n = x.shape[0]
        scores = multimetrics_scores(x)
        keep = max(1, int(self.p * n + 1e-9))
        chosen = torch.argsort(scores, stable=True)[:keep]
        return Aggregate(weighted_mean(x, w, chosen), mask_of(chosen, n), {"selected": float(keep)})
