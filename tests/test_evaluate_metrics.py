"""artshield.metrics: SSIM matches scikit-image, PSNR known values, LPIPS degrades cleanly."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import structural_similarity

from artshield import metrics
from artshield.errors import InvalidArgumentError
from artshield.metrics import (
    available_metrics,
    clear_lpips_cache,
    finite_psnr,
    image_report,
    l2,
    linf,
    lpips_distance,
    lpips_unavailable_reason,
    psnr,
    ssim,
)


def _skimage_ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(
        structural_similarity(
            a.double().numpy(), b.double().numpy(), gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False, data_range=1, channel_axis=0,
        )
    )


def _smooth(gen: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    """A natural-looking image: blurred noise plus a gradient, in [0, 1]."""
    x = torch.rand(shape, generator=gen)
    x = torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)
    ramp = torch.linspace(0, 0.3, shape[-1]).expand(shape)
    return (x + ramp).clamp(0, 1)


@pytest.fixture()
def offline_lpips(tmp_path: Path, monkeypatch):
    """An empty torch hub cache (as on a fresh offline machine) and a fresh LPIPS cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    clear_lpips_cache()
    yield tmp_path / "torch"
    clear_lpips_cache()


@pytest.mark.parametrize("shape", [(3, 32, 40), (1, 11, 11), (3, 17, 23), (1, 64, 48)])
def test_ssim_matches_skimage(shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(sum(shape))
    a = _smooth(gen, shape)
    for b in (
        (a + 0.03 * torch.randn(shape, generator=gen)).clamp(0, 1),  # noise
        (a + 8 / 255 * torch.sign(torch.randn(shape, generator=gen))).clamp(0, 1),  # PGD-like
        torch.rand(shape, generator=gen),  # unrelated image
        a * 0.5 + 0.2,  # contrast and brightness change
    ):
        ours = ssim(a[None], b[None])
        assert ours.shape == (1,)
        assert abs(float(ours[0]) - _skimage_ssim(a, b)) < 1e-4


def test_ssim_batch_identity_and_small_images() -> None:
    gen = torch.Generator().manual_seed(0)
    a = _smooth(gen, (3, 3, 24, 24))
    b = (a + 0.05 * torch.randn(a.shape, generator=gen)).clamp(0, 1)
    batch = ssim(a, b)
    assert batch.shape == (3,)
    for i in range(3):
        assert abs(float(batch[i]) - _skimage_ssim(a[i], b[i])) < 1e-4
    assert torch.allclose(ssim(a, a), torch.ones(3), atol=1e-5)
    with pytest.raises(InvalidArgumentError, match="11x11"):
        ssim(torch.rand(1, 3, 10, 32), torch.rand(1, 3, 10, 32))


def test_metrics_are_differentiable() -> None:
    gen = torch.Generator().manual_seed(1)
    a = _smooth(gen, (2, 3, 16, 16))
    b = (a + 0.02 * torch.randn(a.shape, generator=gen)).clamp(0, 1).requires_grad_(True)
    for fn in (ssim, psnr, l2, linf):
        (grad,) = torch.autograd.grad(fn(a, b).sum(), b)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_psnr_known_values() -> None:
    a = torch.zeros(2, 3, 8, 8)
    b = torch.full((2, 3, 8, 8), 0.1)
    assert torch.allclose(psnr(a, b), torch.full((2,), 20.0))  # MSE 0.01 → 20 dB
    b2 = b.clone()
    b2[1] = 0.01  # MSE 1e-4 → 40 dB
    assert torch.allclose(psnr(a, b2), torch.tensor([20.0, 40.0]), atol=1e-4)
    assert torch.allclose(psnr(a * 255, b * 255, data_range=255.0), torch.full((2,), 20.0), atol=1e-4)
    same = psnr(b, b)
    assert torch.isinf(same).all() and same[0] > 0
    assert torch.equal(finite_psnr(b, b), torch.full((2,), 100.0))
    assert torch.allclose(finite_psnr(a, b), torch.full((2,), 20.0))


def test_linf_l2() -> None:
    a = torch.zeros(1, 3, 4, 4)
    b = a.clone()
    b[0, 1, 2, 3] = 8 / 255
    b[0, 0, 0, 0] = -3 / 255
    assert torch.allclose(linf(a, b), torch.tensor([8 / 255]))
    assert torch.allclose(l2(a, b), torch.tensor([math.hypot(8, 3) / 255]))
    assert linf(a[0], b[0]).shape == (1,)  # (C, H, W) is a batch of one
    with pytest.raises(InvalidArgumentError):
        linf(a, torch.zeros(1, 3, 4, 5))


def test_lpips_offline_returns_none_with_one_message(offline_lpips, caplog) -> None:
    a, b = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    with caplog.at_level(logging.WARNING, logger="artshield.metrics"):
        assert lpips_distance(a, b) is None
        assert lpips_distance(a, b) is None
    messages = [r.getMessage() for r in caplog.records if "LPIPS" in r.getMessage()]
    assert len(messages) == 1
    assert "alexnet-owt-7be5be79.pth" in messages[0] and "artshield[metrics]" in messages[0]
    assert str(offline_lpips) in messages[0]  # says where to put the weights
    assert "lpips" not in available_metrics() and "ssim" in available_metrics()
    assert not (offline_lpips / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth").exists()


def test_lpips_used_and_cached_when_weights_are_present(offline_lpips, monkeypatch) -> None:
    """With a backbone file in the cache, lpips is built (once) and used. The real AlexNet weights are
    not available here, so torchvision's constructor is replaced by a random-weight AlexNet."""
    pytest.importorskip("lpips")
    import torchvision

    checkpoints = offline_lpips / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "alexnet-owt-7be5be79.pth").write_bytes(b"placeholder")
    calls = []
    real_alexnet = torchvision.models.alexnet

    def fake_alexnet(*args, **kwargs):
        calls.append(kwargs)
        torch.manual_seed(0)
        return real_alexnet(weights=None)

    monkeypatch.setattr(torchvision.models, "alexnet", fake_alexnet)
    gen = torch.Generator().manual_seed(2)
    a = torch.rand(2, 3, 64, 64, generator=gen)
    b = (a + 0.1 * torch.randn(a.shape, generator=gen)).clamp(0, 1).requires_grad_(True)
    d = lpips_distance(a, b)
    assert d is not None and d.shape == (2,) and (d > 0).all()
    assert float(lpips_distance(a, a)[0]) == pytest.approx(0.0, abs=1e-6)
    (grad,) = torch.autograd.grad(d.sum(), b)
    assert torch.isfinite(grad).all()
    assert lpips_distance(a[:, :1], b[:, :1]).shape == (2,)  # greyscale repeated to 3 channels
    assert len(calls) == 1  # built once, then cached
    assert lpips_unavailable_reason() is None and "lpips" in available_metrics()
    report = image_report(a[:1], b[:1].detach())
    assert isinstance(report["lpips"], float) and "lpips" not in report["notes"]


def test_lpips_corrupt_weights_file_is_reported_not_raised(offline_lpips) -> None:
    pytest.importorskip("lpips")
    checkpoints = offline_lpips / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "alexnet-owt-7be5be79.pth").write_bytes(b"not a checkpoint")
    assert lpips_distance(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)) is None
    assert "failed" in (lpips_unavailable_reason() or "")


def test_image_report_is_json_safe(offline_lpips, tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(3)
    original = _smooth(gen, (1, 3, 24, 24))
    protected = (original + 4 / 255 * torch.sign(torch.randn(original.shape, generator=gen))).clamp(0, 1)
    report = image_report(original, protected)
    text = json.dumps(report, allow_nan=False)  # no inf / NaN anywhere
    assert json.loads(text) == report
    assert report["linf_255"] == pytest.approx(4.0, abs=1e-4)
    assert report["linf"] == pytest.approx(4 / 255, abs=1e-6)
    assert report["psnr_db"] == pytest.approx(float(psnr(original, protected)[0]), abs=1e-3)
    assert report["ssim"] == pytest.approx(_skimage_ssim(original[0], protected[0]), abs=1e-4)
    assert report["lpips"] is None and "unavailable" in report["notes"]["lpips"]

    same = image_report(original, original)
    assert same["psnr_db"] is None and "identical" in same["notes"]["psnr_db"] and same["linf"] == 0.0
    json.dumps(same, allow_nan=False)

    tiny = image_report(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))
    assert tiny["ssim"] is None and "11x11" in tiny["notes"]["ssim"]
    json.dumps(tiny, allow_nan=False)

    # Paths and PIL images are accepted too.
    Image.fromarray((original[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(tmp_path / "o.png")
    from_path = image_report(tmp_path / "o.png", Image.open(tmp_path / "o.png"))
    assert from_path["linf"] == 0.0
    with pytest.raises(InvalidArgumentError):
        image_report(original, protected, lpips_net="resnet")
    assert metrics.SSIM_WIN_SIZE == 11
