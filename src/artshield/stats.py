"""Small statistics helpers shared by the evaluation harness: exact ROC AUC and a seeded bootstrap.

Pure numpy, deterministic: the same inputs and seed always give the same numbers, so reports are
reproducible.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .errors import InvalidArgumentError


def _as_scores(values, name: str) -> np.ndarray:
    array = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise InvalidArgumentError(f"`{name}` must hold at least one score, but is empty.")
    if not np.all(np.isfinite(array)):
        raise InvalidArgumentError(f"`{name}` must hold finite scores, but contains NaN or infinity.")
    return array


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values`, tied values sharing the mean of the ranks they span."""
    values = np.asarray(values).reshape(-1)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # the last 1-based rank of each distinct value
    starts = ends - counts + 1
    return ((starts + ends) / 2.0)[inverse]


def roc_auc(pos_scores, neg_scores) -> float:
    """Exact area under the ROC curve: P(score of a positive > score of a negative) + 0.5 P(tie).

    Computed from ranks (the Mann-Whitney U statistic), so ties count half, as in scikit-learn's
    ``roc_auc_score``. Accepts sequences, numpy arrays or tensors of any shape (flattened).
    """
    pos = _as_scores(pos_scores, "pos_scores")
    neg = _as_scores(neg_scores, "neg_scores")
    ranks = average_ranks(np.concatenate([pos, neg]))
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def bootstrap_ci(
    values,
    fn: Callable[..., float],
    n: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Percentile bootstrap: returns ``(estimate, low, high)`` of ``fn`` with a ``1 - alpha`` interval.

    `values` is one array of per-item values, or a *tuple* of arrays that are resampled independently
    (e.g. ``bootstrap_ci((pos, neg), roc_auc)``); ``fn`` receives the (resampled) arrays as positional
    arguments. Seeded, so the interval is reproducible.
    """
    if int(n) < 1:
        raise InvalidArgumentError(f"`n` must be a positive number of resamples, but is {n!r}.")
    if not 0.0 < float(alpha) < 1.0:
        raise InvalidArgumentError(f"`alpha` must be in (0, 1), but is {alpha!r}.")
    samples = values if isinstance(values, tuple) else (values,)
    arrays = [_as_scores(sample, "values") for sample in samples]
    estimate = float(fn(*arrays))
    rng = np.random.default_rng(seed)
    stats = np.empty(int(n))
    for i in range(int(n)):
        stats[i] = float(fn(*(a[rng.integers(0, a.size, a.size)] for a in arrays)))
    low, high = np.quantile(stats, [alpha / 2.0, 1.0 - alpha / 2.0])
    return estimate, float(low), float(high)


def mean_interval(values, *, seed: int = 0, n: int = 1000, digits: int | None = None) -> dict:
    """The mean of per-item values with its 95 % percentile-bootstrap interval, in the shape result files store
    it: ``{"mean": m, "ci": [low, high], "n": count}``, each number rounded to `digits` places when given."""
    mean, low, high = bootstrap_ci(values, np.mean, n=n, seed=seed)
    if digits is not None:
        mean, low, high = (round(v, digits) for v in (mean, low, high))
    return {"mean": mean, "ci": [low, high], "n": int(np.asarray(values).size)}


__all__ = ["average_ranks", "bootstrap_ci", "mean_interval", "roc_auc"]
