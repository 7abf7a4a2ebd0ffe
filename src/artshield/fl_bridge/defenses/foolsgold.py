"""FoolsGold (Fung, Yoon & Beschastnikh, RAID 2020): sybils share a goal, so their histories look alike.

The rule keeps, per client id, the sum of every delta that client has sent (its history). Each round, for
the clients present, it takes the pairwise cosine similarities ``cs`` of their histories (diagonal 0) and,
as the authors' code does (``foolsgold()`` in DistSysML/FoolsGold, also FLPoison's):

* ``maxcs_i = max_j cs_ij``; pardoning: ``cs_ij *= maxcs_i / maxcs_j`` when ``maxcs_i < maxcs_j``;
* ``wv_i = 1 − max_j cs_ij`` clipped to ``[0, 1]``, divided by its maximum, ``1`` replaced by ``0.99``;
* logit: ``wv_i = ln(wv_i / (1 − wv_i)) + 0.5`` clipped to ``[0, 1]`` (confidence κ = 1).

The aggregate is ``Σ wv_i x_i / Σ wv_i`` (the original sums ``wv_i x_i`` for FedSGD gradients; for FedAvg
deltas we normalise, so that a round of distinct honest clients is their plain mean). We use every parameter
(the paper's optional "indicative features" of the output layer are not used) and do not rescale updates
before adding them to the history (FLPoison divides those with norm > 1). Clients with weight > 0 count as
accepted. When every weight is 0 (e.g. all histories identical) the round is skipped: zero delta.
Memory: one ``d``-vector per client ever seen (float32).
"""

from __future__ import annotations

import torch

from ...errors import InvalidArgumentError
from ..geometry import cosine_from_gram, gram_matrix
from .base import Aggregate, AggregationRule, RoundUpdates
from .robust import combine, round_matrix


def foolsgold_weights(similarity: torch.Tensor) -> torch.Tensor:
    """FoolsGold's weights from the clients' pairwise history cosine similarities (diagonal ignored)."""
    cs = similarity.clone().fill_diagonal_(0)
    maxcs = cs.max(dim=1).values
    pardon = maxcs[:, None] < maxcs[None, :]
    cs = torch.where(pardon, cs * maxcs[:, None] / maxcs[None, :].clamp_min(1e-300), cs)
    wv = (1 - cs.max(dim=1).values).clamp(0, 1)
    top = wv.max()
    if not top > 0:
        return torch.zeros_like(wv)
    wv = wv / top
    wv = torch.where(wv == 1, torch.full_like(wv, 0.99), wv)
    return (torch.log(wv / (1 - wv)) + 0.5).nan_to_num(neginf=0.0).clamp(0, 1)


class FoolsGold(AggregationRule):
    """FoolsGold: clients whose summed update histories point the same way are down-weighted (logit weights)."""

    name = "foolsgold"
    selects = True

    def __init__(self):
        self._rows: dict[int, int] = {}  # client id -> row of the history matrix
        self._matrix: torch.Tensor | None = None  # (capacity, d) summed deltas, rows in order of first appearance

    def reset(self) -> None:
        """Forget every client's history (a new federation)."""
        self._rows.clear()
        self._matrix = None

    def config(self) -> dict:
        return {}

    def _history_rows(self, ids: list[int], x: torch.Tensor) -> torch.Tensor:
        """Add this round's deltas to the clients' histories (in place) and return the row indices."""
        matrix = self._matrix
        if matrix is not None and (matrix.shape[1] != x.shape[1] or matrix.device != x.device):
            self.reset()
            matrix = None
        new = [cid for cid in dict.fromkeys(ids) if cid not in self._rows]
        for cid in new:
            self._rows[cid] = len(self._rows)
        if matrix is None or len(self._rows) > matrix.shape[0]:
            capacity = max(len(self._rows), 2 * (0 if matrix is None else matrix.shape[0]))
            grown = torch.zeros(capacity, x.shape[1], dtype=x.dtype, device=x.device)
            if matrix is not None:
                grown[: matrix.shape[0]] = matrix
            self._matrix = matrix = grown
        rows = torch.tensor([self._rows[cid] for cid in ids], device=x.device)
        matrix.index_add_(0, rows, x.to(matrix.dtype))
        return rows

    def aggregate(self, updates: RoundUpdates) -> Aggregate:
        x, _ = round_matrix(self.name, updates)
        ids = [int(c) for c in updates.client_ids]
        if len(ids) != x.shape[0] or len(set(ids)) != len(ids):
            raise InvalidArgumentError(f"defense 'foolsgold': needs {x.shape[0]} distinct client ids, got {ids}")
        rows = self._history_rows(ids, x)
        first = int(rows[0])
        contiguous = bool((rows == torch.arange(first, first + len(ids), device=rows.device)).all())
        history = self._matrix[first:first + len(ids)] if contiguous else self._matrix[rows]  # a view when possible
        weights = foolsgold_weights(cosine_from_gram(gram_matrix(history)))
        accepted = (weights > 0).cpu()
        total = weights.sum()
        if not total > 0:
            return Aggregate(torch.zeros_like(x[0]), accepted, {"skipped": 1.0, "mean_weight": 0.0})
        return Aggregate(combine(x, weights / total), accepted, {"skipped": 0.0, "mean_weight": float(weights.mean())})
