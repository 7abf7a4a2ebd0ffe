"""FLAME (Nguyen et al., USENIX Security 2022): cluster, clip, add noise.

1. HDBSCAN on the pairwise cosine distances of the updates (scikit-learn's ``HDBSCAN`` on a precomputed
   float64 distance matrix), ``min_cluster_size = n/2 + 1``, ``min_samples = 1``, single cluster allowed: at
   most one cluster can hold a majority; its members are accepted, every other update is dropped.
2. The clipping bound ``S`` is the median of all the round's delta norms (the paper's median Euclidean distance
   of the local models to the global model); each accepted delta is scaled to norm at most ``S``, then the
   accepted deltas are averaged (unweighted, as in the paper).
3. Gaussian noise of standard deviation ``λ·S`` per coordinate is added (the paper's adaptive noise; its
   ``λ = 0.001`` for image classification is our default). The noise comes from the rule's own seeded
   generator, so a run is reproducible; its norm is ``λ·S·√d`` (≈ S at a million parameters).

Choices: the paper clusters the local *models* ``W_i``; ``space="delta"`` (the default) clusters the deltas
``W_i − G``, whose cosines are not dominated by the shared global model; ``space="model"`` follows the paper.
With fewer than 2 updates nothing is clustered (all accepted). When HDBSCAN finds no cluster (every update
labelled noise) the round is skipped: zero delta, nobody accepted, ``skipped = 1``.
"""

from __future__ import annotations

import numpy as np
import torch

from ...errors import InvalidArgumentError
from ..geometry import cosine_from_gram, gram_matrix
from .base import Aggregate, AggregationRule, RoundUpdates
from .robust import check_count, check_real, combine, median_of, round_matrix


class FLAME(AggregationRule):
    """FLAME: HDBSCAN on cosine distances keeps the majority cluster, clip to the median norm, add noise λ·S."""

    name = "flame"
    selects = True

    def __init__(self, lam: float = 0.001, seed: int = 0, space: str = "delta", min_cluster_size: int | None = None):
        self.lam = check_real(self.name, "lam", lam, low=0.0)
        self.seed = check_count(self.name, "seed", seed)
        if space not in ("delta", "model"):
            raise InvalidArgumentError(f"defense 'flame': space must be 'delta' or 'model', got {space!r}")
        self.space = space
        self.min_cluster_size = check_count(self.name, "min_cluster_size", min_cluster_size, minimum=2, allow_none=True)
        self._generator: torch.Generator | None = None

    def config(self) -> dict:
        return {"lam": self.lam, "seed": self.seed, "space": self.space,
                "min_cluster_size": "n/2+1" if self.min_cluster_size is None else self.min_cluster_size}

    def _cluster(self, x: torch.Tensor, global_vector: torch.Tensor) -> np.ndarray:
        """Boolean mask of the majority cluster."""
        from sklearn.cluster import HDBSCAN

        n = x.shape[0]
        g = gram_matrix(x)
        if self.space == "model":
            gv = global_vector.detach().to(x.device, x.dtype).reshape(-1)
            b = (x @ gv).double()
            g = g + b[:, None] + b[None, :] + (gv @ gv).double()
        distance = (1 - cosine_from_gram((g + g.T) / 2)).clamp_(0, 2)
        distance.fill_diagonal_(0)
        size = self.min_cluster_size or n // 2 + 1
        labels = HDBSCAN(metric="precomputed", min_cluster_size=max(2, min(size, n)), min_samples=1,
                         allow_single_cluster=True, copy=True).fit(distance.cpu().numpy()).labels_
        found = labels[labels >= 0]
        if found.size == 0:
            return np.zeros(n, dtype=bool)
        return labels == np.bincount(found).argmax()

    def aggregate(self, updates: RoundUpdates) -> Aggregate:
        x, _ = round_matrix(self.name, updates)
        n = x.shape[0]
        keep = np.ones(n, dtype=bool) if n < 2 else self._cluster(x, updates.global_vector)
        accepted = torch.from_numpy(keep)
        if not keep.any():
            return Aggregate(torch.zeros_like(x[0]), accepted, {"skipped": 1.0, "accepted": 0.0})
        norms = torch.linalg.vector_norm(x, dim=1).double()
        bound = float(median_of(norms))
        scale = torch.where(norms > bound, bound / norms.clamp_min(1e-300), torch.ones_like(norms))
        index = torch.from_numpy(np.flatnonzero(keep)).to(x.device)
        coefficients = torch.zeros_like(scale)
        coefficients[index] = scale[index] / index.numel()
        delta = combine(x, coefficients)
        sigma = self.lam * bound
        if sigma > 0:
            if self._generator is None or self._generator.device != x.device:
                self._generator = torch.Generator(device=x.device).manual_seed(self.seed)
            delta = delta + sigma * torch.randn(delta.shape, generator=self._generator, device=x.device, dtype=x.dtype)
        return Aggregate(delta, accepted, {"skipped": 0.0, "accepted": float(keep.sum()), "bound": bound, "sigma": sigma})
