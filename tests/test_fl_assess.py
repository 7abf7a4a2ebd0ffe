"""Scoring a reconstruction: Hungarian matching (order invariance), PSNR/SSIM, LPIPS absent -> None + note,
label accuracy and per-class count accuracy with duplicate labels."""

from __future__ import annotations

import pytest
import torch

from artshield import metrics
from artshield.errors import InvalidArgumentError
from artshield.fl_bridge.leakage.assess import assess, count_accuracy
from artshield.fl_bridge.leakage.inversion import Reconstruction


def images(count: int, side: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, side, side, generator=torch.Generator().manual_seed(seed))


def noisy(x: torch.Tensor, scale: float, seed: int = 1) -> torch.Tensor:
    return (x + scale * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))).clamp(0, 1)


def test_perfect_reconstruction():
    x, y = images(3), torch.tensor([2, 0, 2])
    result = assess(x, y, Reconstruction(x.clone(), y.clone(), 0.0, 0.0), lpips=False)
    assert result["matched_order"] == [0, 1, 2]
    assert result["psnr_mean"] == pytest.approx(100.0)
    assert result["ssim_mean"] == pytest.approx(1.0, abs=1e-5)
    assert result["label_accuracy"] == 1.0 and result["count_accuracy"] == 1.0 and result["counts_exact"]
    assert result["true_counts"] == [1, 0, 2]


def test_matching_makes_every_score_invariant_to_the_reconstruction_order():
    x, y = images(5), torch.tensor([0, 1, 1, 3, 4])
    guess = noisy(x, 0.1)
    first = assess(x, y, Reconstruction(guess, y.clone(), 0.0, 0.0), lpips=False)
    permutation = torch.tensor([3, 0, 4, 1, 2])
    second = assess(x, y, Reconstruction(guess[permutation], y[permutation], 0.0, 0.0), lpips=False)
    assert first["matched_order"] == [0, 1, 2, 3, 4]
    # Original i is matched to the reconstruction that holds guess i after the shuffle.
    assert [int(permutation[j]) for j in second["matched_order"]] == [0, 1, 2, 3, 4]
    for key in ("psnr", "ssim", "mse", "label_accuracy", "count_accuracy", "psnr_mean", "ssim_mean"):
        assert first[key] == pytest.approx(second[key]), key
    assert first["label_accuracy"] == 1.0


def test_label_and_count_accuracy_with_duplicates():
    x, y = images(4), torch.tensor([1, 1, 2, 0])
    wrong = torch.tensor([1, 2, 2, 0])  # one image's label wrong: 3/4 per image, 3/4 as a multiset
    result = assess(x, y, Reconstruction(x.clone(), wrong, 0.0, 0.0), lpips=False)
    assert result["label_accuracy"] == 0.75 and result["count_accuracy"] == 0.75 and not result["counts_exact"]
    recovered = torch.tensor([0, 1, 1, 2])  # a label-recovery method's sorted multiset: all counts right
    result = assess(x, y, Reconstruction(x.clone(), wrong, 0.0, 0.0), recovered, lpips=False)
    assert result["count_accuracy"] == 1.0 and result["counts_exact"] and result["labels_from"] == "recovered_labels"
    assert count_accuracy(torch.tensor([3, 3, 3]), torch.tensor([3, 1, 1])) == pytest.approx(1 / 3)


def test_lpips_absent_gives_none_and_a_note(monkeypatch):
    monkeypatch.setattr(metrics, "lpips_unavailable_reason", lambda net="alex": "LPIPS is unavailable: no weights.")
    x, y = images(2), torch.tensor([0, 1])
    result = assess(x, y, Reconstruction(noisy(x, 0.05), y, 0.0, 0.0))
    assert result["lpips"] == [None, None] and result["lpips_mean"] is None
    assert "no weights" in result["notes"]["lpips"]


def test_small_images_have_no_ssim_but_a_note():
    x, y = images(2, side=8), torch.tensor([0, 1])
    result = assess(x, y, Reconstruction(noisy(x, 0.05), y, 0.0, 0.0), lpips=False)
    assert result["ssim"] == [None, None] and result["ssim_mean"] is None and "11x11" in result["notes"]["ssim"]
    assert result["psnr_mean"] > 20


def test_mismatched_inputs_are_named_errors():
    x, y = images(2), torch.tensor([0, 1])
    with pytest.raises(InvalidArgumentError, match="shape"):
        assess(x, y, Reconstruction(images(3), torch.tensor([0, 1, 2]), 0.0, 0.0))
    with pytest.raises(InvalidArgumentError, match="original_labels"):
        assess(x, torch.tensor([0]), Reconstruction(x, y, 0.0, 0.0))
    with pytest.raises(InvalidArgumentError, match="Reconstruction"):
        assess(x, y, x)
