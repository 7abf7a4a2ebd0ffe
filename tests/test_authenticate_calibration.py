"""Membership metrics, thresholds fitted on a calibration split, and the model-level permutation verdict."""

from __future__ import annotations

import numpy as np
import pytest

from artshield.authenticate.calibration import (
    MembershipMetrics,
    Verdict,
    best_balanced_accuracy,
    fit_threshold,
    membership_metrics,
    model_verdict,
    tpr_at_fpr,
)
from artshield.errors import InvalidArgumentError


def test_metrics_on_hand_made_scores():
    members = [0.9, 0.8, 0.7, 0.2]
    nonmembers = [0.75, 0.3, 0.1, 0.0]
    m = membership_metrics(members, nonmembers, bootstrap=200, seed=0)
    # pairs (member > non-member): 0.9 beats 4, 0.8 beats 4, 0.7 beats 3, 0.2 beats 2 -> 13 / 16
    assert m.auc == pytest.approx(13 / 16)
    # 4 non-members: 1 % and 0.1 % FPR allow none above the threshold (0.75) -> members 0.9, 0.8 -> 0.5
    assert m.tpr_at_1pct == pytest.approx(0.5) and m.tpr_at_01pct == pytest.approx(0.5)
    assert m.auc_ci[0] <= m.auc <= m.auc_ci[1]
    assert m.tpr_at_1pct_ci[0] <= m.tpr_at_1pct <= m.tpr_at_1pct_ci[1]
    # best threshold 0.5: TPR 3/4, TNR 3/4 (0.75 is above it) or 0.75: TPR 2/4 TNR 4/4 -> 0.75
    assert m.balanced_accuracy == pytest.approx(0.75)
    assert (m.n_members, m.n_nonmembers) == (4, 4)
    d = m.to_dict()
    assert d["auc_ci"] == list(m.auc_ci) and set(d) == set(MembershipMetrics.__dataclass_fields__)


def test_ties_count_half_and_perfect_separation():
    assert membership_metrics([1.0], [1.0], bootstrap=10).auc == pytest.approx(0.5)
    m = membership_metrics([5, 6, 7], [1, 2, 3], bootstrap=50)
    assert m.auc == 1.0 and m.tpr_at_1pct == 1.0 and m.balanced_accuracy == 1.0
    assert m.auc_ci == (1.0, 1.0)


def test_threshold_respects_the_false_positive_rate():
    rng = np.random.default_rng(0)
    calibration = rng.normal(size=1000)
    threshold = fit_threshold(calibration, 0.05)
    assert np.sum(calibration > threshold) <= 50  # exact on the calibration split
    assert np.sum(calibration > threshold) >= 45
    fresh = rng.normal(size=20000)  # new non-members: about 5 % above it
    assert 0.03 < np.mean(fresh > threshold) < 0.075  # the fitted quantile has sampling error (~0.007)
    # 1 % with 1000: at most 10 above; with 50 calibration scores it cannot resolve 1 %: none above
    assert np.sum(calibration > fit_threshold(calibration, 0.01)) <= 10
    small = calibration[:50]
    assert fit_threshold(small, 0.01) == small.max()
    assert tpr_at_fpr([small.max() + 1, small.max()], small, 0.01) == 0.5


def test_tpr_uses_the_exact_empirical_rule():
    nonmembers = np.arange(100, dtype=float)  # 0..99
    # 1 % of 100 = 1 non-member may lie above: the threshold is 98, members must be > 98
    assert fit_threshold(nonmembers, 0.01) == 98.0
    assert tpr_at_fpr([98.0, 98.5, 99.5, 10.0], nonmembers, 0.01) == 0.5


def test_balanced_accuracy_picks_the_best_cut():
    assert best_balanced_accuracy([1, 2, 3], [0, 0, 0]) == 1.0
    assert best_balanced_accuracy([0, 0], [0, 0]) == 0.5


def test_verdict_is_calm_under_the_null():
    rng = np.random.default_rng(1)
    p_values = []
    for _ in range(60):
        a, b = rng.normal(size=10), rng.normal(size=10)
        p_values.append(model_verdict(a, b, permutations=500, seed=0).p_value)
    p_values = np.array(p_values)
    # uniform-ish: mean near 0.5, few small values, no accusation at 1 %
    assert 0.35 < p_values.mean() < 0.65
    assert np.mean(p_values <= 0.1) < 0.25
    assert np.all(p_values > 0.0) and np.all(p_values <= 1.0)


def test_verdict_accuses_when_members_are_shifted():
    rng = np.random.default_rng(2)
    members, reference = rng.normal(3.0, 1.0, size=12), rng.normal(0.0, 1.0, size=12)
    v = model_verdict(members, reference, alpha=0.01, permutations=5000, seed=0)
    assert v.learned and v.p_value <= 1 / 5001 * 2 and v.statistic > 2
    assert "Monte Carlo" in v.method
    assert "1 %" in v.explanation and "fine-tuned" in v.explanation and v.explanation.count(".") >= 1
    assert v.to_dict()["learned"] is True and set(v.to_dict()) == set(Verdict.__dataclass_fields__)
    # the opposite direction is not evidence (one-sided)
    assert not model_verdict(reference, members, permutations=2000).learned


def test_exact_permutation_p_value():
    # 3 vs 3: C(6, 3) = 20 splits; the observed one is the most extreme -> p = 1/20
    v = model_verdict([4, 5, 6], [1, 2, 3], alpha=0.05, permutations=10000)
    assert v.p_value == pytest.approx(1 / 20) and v.learned and "exact" in v.method
    # identical scores: every split ties -> p = 1
    assert model_verdict([1, 1], [1, 1]).p_value == 1.0


def test_verdict_says_when_too_few_images():
    v = model_verdict([4, 5], [1, 2], alpha=0.01)  # C(4, 2) = 6 splits: p >= 1/6
    assert not v.learned and "add images" in v.explanation
    assert "\n" not in v.explanation


def test_verdict_is_deterministic_under_a_seed():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.3, 1, size=15), rng.normal(size=15)
    assert model_verdict(a, b, permutations=300, seed=4) == model_verdict(a, b, permutations=300, seed=4)


@pytest.mark.parametrize(
    "call",
    [
        lambda: membership_metrics([], [1.0]),
        lambda: membership_metrics([np.nan], [1.0]),
        lambda: membership_metrics([1.0], [0.0], alpha=0.0),
        lambda: fit_threshold([1.0, 2.0], 1.0),
        lambda: model_verdict([1.0], [2.0], permutations=0),
        lambda: model_verdict([1.0], [], alpha=0.01),
    ],
)
def test_bad_arguments_are_refused(call):
    with pytest.raises(InvalidArgumentError):
        call()
