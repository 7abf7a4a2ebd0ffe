"""From membership scores to numbers an auditor can defend: AUC and TPR at low FPR with intervals, thresholds
fitted on a calibration split, and a model-level verdict with a p-value.

Every score follows one convention: **higher = more likely a training member** (CGI-DM's similarity and every
baseline in :mod:`artshield.authenticate.baselines`).

- :func:`membership_metrics`: image level, with labelled members and non-members. AUC (exact, ties count half)
  and TPR at 1 % and 0.1 % FPR, each with a seeded percentile-bootstrap interval (:mod:`artshield.stats`).
  TPR at a FPR uses the exact empirical rule: the threshold is the non-member score that at most
  ``floor(fpr · n)`` non-members exceed, and a member counts only when its score is strictly above it — with
  fewer than 100 non-members, "1 % FPR" therefore means *no* non-member above the threshold.
- :func:`fit_threshold`: the same threshold, fitted on a calibration split of known non-members only; applied
  to other images, it keeps their false-positive rate at about `fpr`. Never fit it on the images it judges.
- :func:`model_verdict`: model level. A one-sided permutation test of "the artist's images score higher on the
  suspect than images it certainly never saw" (the mean difference), with the exact p-value (every
  relabelling when there are few enough, else a Monte Carlo p-value with the +1 correction, which is valid
  too). Under the null hypothesis — the suspect treats the artist's images like any unseen image — the test
  accuses at most a fraction `alpha` of the time.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InvalidArgumentError
from ..stats import bootstrap_ci, roc_auc


def _scores(values, name: str, minimum: int = 1) -> np.ndarray:
    raw = values.detach().cpu().numpy() if hasattr(values, "detach") else values
    array = np.asarray(raw, dtype=np.float64).reshape(-1)
    if array.size < minimum:
        raise InvalidArgumentError(f"`{name}` must hold at least {minimum} score(s), but holds {array.size}.")
    if not np.all(np.isfinite(array)):
        raise InvalidArgumentError(f"`{name}` must hold finite scores, but contains NaN or infinity.")
    return array


def _check_rate(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 < value < 1.0:
        raise InvalidArgumentError(f"`{name}` must be in (0, 1), but is {value!r}.")
    return value


def fit_threshold(nonmember_scores, fpr: float) -> float:
    """The threshold τ whose rule "member when score > τ" flags at most ``floor(fpr · n)`` of these `n`
    non-members: the ``(floor(fpr · n) + 1)``-th largest non-member score.

    Fit it on a calibration split of images known not to be members (never on the images it will judge);
    with `n` calibration images, rates below ``1 / n`` cannot be resolved and give τ = the largest score.
    """
    scores = np.sort(_scores(nonmember_scores, "nonmember_scores"))[::-1]
    fpr = _check_rate("fpr", fpr)
    allowed = int(math.floor(fpr * scores.size + 1e-9))
    return float(scores[min(allowed, scores.size - 1)])


def tpr_at_fpr(member_scores, nonmember_scores, fpr: float) -> float:
    """Fraction of members strictly above :func:`fit_threshold` (non-members, `fpr`)."""
    members = _scores(member_scores, "member_scores")
    return float(np.mean(members > fit_threshold(nonmember_scores, fpr)))


def best_balanced_accuracy(member_scores, nonmember_scores) -> float:
    """The best (TPR + TNR) / 2 over all thresholds — optimistic: the threshold is chosen on these scores."""
    members = _scores(member_scores, "member_scores")
    nonmembers = _scores(nonmember_scores, "nonmember_scores")
    cuts = np.concatenate([[-np.inf], np.unique(np.concatenate([members, nonmembers]))])
    best = 0.0
    for cut in cuts:  # member when score > cut
        best = max(best, 0.5 * (np.mean(members > cut) + np.mean(nonmembers <= cut)))
    return float(best)


@dataclass
class MembershipMetrics:
    """Image-level membership results. Intervals are ``(low, high)`` percentile-bootstrap bounds.

    `balanced_accuracy` is at the best threshold chosen on these very scores (optimistic, as Revelio's
    accuracy); the TPRs use the exact empirical rule described in :mod:`artshield.authenticate.calibration`.
    """

    auc: float
    auc_ci: tuple[float, float]
    tpr_at_1pct: float
    tpr_at_1pct_ci: tuple[float, float]
    tpr_at_01pct: float
    tpr_at_01pct_ci: tuple[float, float]
    balanced_accuracy: float
    n_members: int
    n_nonmembers: int

    def to_dict(self) -> dict:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out


def membership_metrics(
    member_scores, nonmember_scores, *, bootstrap: int = 1000, alpha: float = 0.05, seed: int = 0
) -> MembershipMetrics:
    """AUC, TPR at 1 % and 0.1 % FPR (with ``1 − alpha`` bootstrap intervals from `bootstrap` resamples of
    members and non-members, independently) and the best balanced accuracy."""
    members = _scores(member_scores, "member_scores")
    nonmembers = _scores(nonmember_scores, "nonmember_scores")
    alpha = _check_rate("alpha", alpha)
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, (int, np.integer)) or bootstrap < 1:
        raise InvalidArgumentError(f"`bootstrap` must be a positive number of resamples, but is {bootstrap!r}.")

    def interval(fn) -> tuple[float, tuple[float, float]]:
        estimate, low, high = bootstrap_ci((members, nonmembers), fn, n=int(bootstrap), alpha=alpha, seed=seed)
        return estimate, (low, high)

    auc, auc_ci = interval(roc_auc)
    tpr1, tpr1_ci = interval(lambda m, n: tpr_at_fpr(m, n, 0.01))
    tpr01, tpr01_ci = interval(lambda m, n: tpr_at_fpr(m, n, 0.001))
    return MembershipMetrics(
        auc=auc, auc_ci=auc_ci, tpr_at_1pct=tpr1, tpr_at_1pct_ci=tpr1_ci, tpr_at_01pct=tpr01,
        tpr_at_01pct_ci=tpr01_ci, balanced_accuracy=best_balanced_accuracy(members, nonmembers),
        n_members=int(members.size), n_nonmembers=int(nonmembers.size),
    )  # fmt: skip


@dataclass
class Verdict:
    """A model-level decision.

    Attributes:
        learned: the test rejects "the suspect treats the artist's images like unseen images" at `alpha`.
        p_value: the probability, were the suspect not trained on them, of a gap at least this large.
        statistic: mean score of the artist's images minus mean score of the reference images.
        alpha: the false-accusation rate the decision controls.
        method: the test used.
        explanation: one plain-English sentence for a non-specialist.
    """

    learned: bool
    p_value: float
    statistic: float
    alpha: float
    method: str
    explanation: str

    def to_dict(self) -> dict:
        return asdict(self)


def _percent(value: float) -> str:
    text = f"{100 * value:.2f}".rstrip("0").rstrip(".")
    return f"{text} %"


def _p_text(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def model_verdict(
    candidate_scores, reference_scores, *, alpha: float = 0.01, permutations: int = 10000, seed: int = 0
) -> Verdict:
    """Was the suspect trained on the candidate images (the artist's)? A one-sided permutation test that
    their scores are higher than those of reference images the suspect certainly never saw (a hold-out).

    The statistic is the difference of the means. When the number of ways to split the pooled scores is at
    most `permutations` every split is enumerated and the p-value is exact; otherwise `permutations` random
    splits (seeded) give ``p = (1 + #{split ≥ observed}) / (1 + permutations)``, also a valid p-value.
    The suspect is declared to have learned the images when ``p ≤ alpha``, so a model that was not trained on
    them is wrongly accused with probability at most `alpha`.
    """
    candidates = _scores(candidate_scores, "candidate_scores")
    references = _scores(reference_scores, "reference_scores")
    alpha = _check_rate("alpha", alpha)
    if isinstance(permutations, bool) or not isinstance(permutations, (int, np.integer)) or permutations < 1:
        raise InvalidArgumentError(f"`permutations` must be a positive number, but is {permutations!r}.")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise InvalidArgumentError(f"`seed` must be a non-negative integer, but is {seed!r}.")
    pooled = np.concatenate([candidates, references])
    n, k = pooled.size, candidates.size
    total = pooled.sum()
    observed = candidates.mean() - references.mean()

    def gaps(sums: np.ndarray) -> np.ndarray:  # mean difference from the candidate group's sum
        return sums / k - (total - sums) / (n - k)

    tolerance = 1e-12 * max(1.0, float(np.abs(pooled).max()))
    splits = math.comb(n, k)
    if splits <= permutations:
        sums = np.array([pooled[list(index)].sum() for index in itertools.combinations(range(n), k)])
        p_value = float(np.mean(gaps(sums) >= observed - tolerance))
        method = f"exact permutation test of the mean difference ({splits} splits)"
    else:
        rng = np.random.default_rng(int(seed))
        sums = np.empty(int(permutations))
        for i in range(int(permutations)):
            sums[i] = pooled[rng.permutation(n)[:k]].sum()
        p_value = float((1 + np.sum(gaps(sums) >= observed - tolerance)) / (1 + int(permutations)))
        method = f"Monte Carlo permutation test of the mean difference ({int(permutations)} permutations)"
    learned = p_value <= alpha
    rate = _percent(alpha)
    if learned:
        explanation = (
            f"The suspect model recognises the {k} artist's images clearly better than {n - k} comparable images "
            f"it was never trained on (p = {_p_text(p_value)}), so we conclude it was fine-tuned on the artist's "
            f"work; a model that was not would be wrongly accused at most {rate} of the time."
        )
    else:
        explanation = (
            f"The suspect model does not recognise the {k} artist's images measurably better than {n - k} "
            f"comparable images it was never trained on (p = {_p_text(p_value)}), so we do not conclude it was "
            f"fine-tuned on them; the test wrongly accuses an untrained model at most {rate} of the time."
        )
    min_p = 1.0 / splits if splits <= permutations else 1.0 / (1 + int(permutations))
    if not learned and min_p > alpha:
        explanation = explanation[:-1] + (
            f", but with {k} and {n - k} images it can never reach that level (smallest possible p = "
            f"{_p_text(min_p)}): add images."
        )
    return Verdict(
        learned=learned, p_value=p_value, statistic=float(observed), alpha=alpha, method=method,
        explanation=explanation,
    )  # fmt: skip


__all__ = [
    "MembershipMetrics", "Verdict", "best_balanced_accuracy", "fit_threshold", "membership_metrics",
    "model_verdict", "tpr_at_fpr",
]  # fmt: skip
