"""Federated LoRA on Flower (fl_bridge.lora) and the curious server's attacks, on the tiny random model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from artshield.errors import InvalidArgumentError
from artshield.fl_bridge.lora import (
    DPFedAvg,
    LoraSettings,
    UserDP,
    clip_update,
    match_images,
    reconstruct_from_update,
    run_lora_federation,
)
from artshield.fl_bridge.privacy import epsilon_spent

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def federation(tiny_model_dir):
    """2 clients x 2 rounds of 2 local steps on the tiny model (its own copy: adapters are added in place)."""
    from artshield.models import load

    model = load(str(tiny_model_dir), device="cpu", dtype="fp32")
    side = model.pixel_multiple * 2
    gen = torch.Generator().manual_seed(0)
    clients = [torch.rand(2, 3, side, side, generator=gen), torch.rand(2, 3, side, side, generator=gen) * 0.5]
    settings = LoraSettings(rounds=2, local_steps=2, batch_size=2, resolution=side, learning_rate=1e-2,
                            prompt="a painting of a circle", record_draws=True)
    return model, clients, run_lora_federation(model, clients, settings)


def test_federated_lora_changes_the_lora_and_loads_with_with_lora(federation, tiny_model_dir, tmp_path):
    from artshield.models import load

    model, clients, result = federation
    assert result.rounds == 2 and len(result.globals) == 3
    assert set(result.updates) == {1, 2} and all(set(u) == {0, 1} for u in result.updates.values())
    assert all(name.startswith("unet.") and "lora" in name for name in result.layout.names)
    moved = [float((g - result.globals[0]).norm()) for g in result.globals[1:]]
    assert all(m > 0 for m in moved)
    # FedAvg of two equally sized clients: the new global is the old one plus the mean of the two deltas
    mean = (result.updates[2][0] + result.updates[2][1]) / 2
    assert torch.allclose(result.globals[2], result.globals[1] + mean, atol=1e-6)
    assert result.metrics[2]["aggregated"] == 2 and result.metrics[2]["dropped"] == 0
    assert set(result.draws) == {(1, 0), (1, 1), (2, 0), (2, 1)}
    assert result.draws[(1, 0)].index.shape == (2, 2)

    result.save(2, tmp_path / "lora")
    base = load(str(tiny_model_dir), device="cpu", dtype="fp32")
    adapted = base.with_lora(tmp_path / "lora")
    side = model.pixel_multiple * 2 // model.vae_scale_factor
    latents = torch.randn(1, model.latent_channels, side, side, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([500])
    with torch.no_grad():
        a = base.predict_noise(latents, t, base.embed_prompt("a painting of a circle", 1))
        b = adapted.predict_noise(latents, t, adapted.embed_prompt("a painting of a circle", 1))
    assert not torch.allclose(a, b)


def test_reconstruction_objective_decreases_and_is_lowest_near_the_truth(federation):
    model, clients, result = federation
    settings = result.settings
    update, pre = result.updates[2][0], result.globals[1]
    with torch.no_grad():
        truth = model.encode(clients[0], mode="mean")
    draws = result.draws[(2, 0)]
    at_truth = reconstruct_from_update(model, result.layout, pre, update, num_images=2, settings=settings,
                                       draws=draws, steps=0, init=truth)
    rec = reconstruct_from_update(model, result.layout, pre, update, num_images=2, settings=settings,
                                  draws=draws, steps=6, step_size=0.1)
    assert rec.images.shape == clients[0].shape and 0 <= rec.images.min() and rec.images.max() <= 1
    assert min(rec.losses[1:] + [rec.final_loss]) < rec.losses[0]
    assert at_truth.final_loss < rec.losses[0]  # the client's own images explain its update better than noise
    expected = reconstruct_from_update(model, result.layout, pre, update, num_images=2, settings=settings,
                                       samples=2, steps=3, simulate="sgd")
    assert expected.config["known_draws"] is False and len(expected.losses) == 3
    report = match_images(clients[0], rec.images)
    assert len(report["psnr"]) == 2 and sorted(report["order"]) == [0, 1]
    with pytest.raises(InvalidArgumentError, match="delta"):
        reconstruct_from_update(model, result.layout, pre, update[:-1], num_images=2, settings=settings)


def test_membership_score_per_candidate(federation, tiny_model_dir, tmp_path):
    from artshield.models import load

    spec = importlib.util.spec_from_file_location("fl_lora_audit", ROOT / "examples" / "fl_lora_audit.py")
    audit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(audit)
    model, clients, result = federation
    clean = load(str(tiny_model_dir), device="cpu", dtype="fp32")
    pair = audit.round_pair(result, result.globals[1], result.globals[1] + result.updates[2][0], base=clean,
                            folder=tmp_path)
    assert pair.prompt == result.settings.prompt
    candidates = {"own": clients[0], "other": torch.rand_like(clients[1])}
    scores = audit.candidate_scores(pair, candidates, methods=("loss", "loss-diff"))
    assert set(scores) == {"loss", "loss-diff"} and set(scores["loss-diff"]) == {"own", "other"}
    assert all(isinstance(v, float) and v == v for s in scores.values() for v in s.values())
    # the suspect differs from the base, so the calibrated score is not identically zero
    assert any(abs(v) > 0 for v in scores["loss-diff"].values())
    summary = audit.which_artist_summary([{"artist": "own", "scores": scores}], "loss-diff")
    assert summary["n"] == 1 and summary["mean_rank"] in (1.0, 2.0)


def test_user_dp_clips_and_noises():
    from artshield.fl_bridge.defenses.base import RoundUpdates
    from artshield.fl_bridge.defenses.registry import make_defense
    from artshield.fl_bridge.updates import ParameterLayout

    layout = ParameterLayout({"w": (4,)})
    deltas = torch.tensor([[3.0, 4.0, 0, 0], [0.3, 0.4, 0, 0]])
    updates = RoundUpdates(deltas, torch.tensor([1.0, 9.0]), torch.zeros(4), 1, [1, 2], layout)
    exact = DPFedAvg(make_defense("fedavg"), clip=1.0, noise_multiplier=0.0)(updates)
    assert torch.allclose(exact.delta, torch.tensor([0.45, 0.6, 0, 0]))  # clipped, equal weights
    assert exact.metrics["dp-clipped"] == 1
    noisy = DPFedAvg(make_defense("fedavg"), clip=1.0, noise_multiplier=1.0, seed=3)(updates)
    assert not torch.allclose(noisy.delta, exact.delta) and noisy.metrics["dp-noise-std"] == 0.5
    assert float(clip_update(torch.tensor([3.0, 4.0]), 1.0).norm()) == pytest.approx(1.0)
    assert UserDP(1.0, 1.0).epsilon(3, 1e-2) == pytest.approx(epsilon_spent(1.0, 1.0, 3, 1e-2))  # one accountant
    assert 5.0 < UserDP(1.0, 1.0).epsilon(3, 1e-2) < 6.5
    for bad in (dict(clip=0.0, noise_multiplier=1.0), dict(clip=1.0, noise_multiplier=-1.0),
                dict(clip=1.0, noise_multiplier=1.0, placement="both")):
        with pytest.raises(InvalidArgumentError):
            UserDP(**bad)
    with pytest.raises(InvalidArgumentError, match="local_steps"):
        LoraSettings(local_steps=0)


def test_client_side_dp_bounds_what_the_server_sees(tiny_model_dir):
    from artshield.models import load

    model = load(str(tiny_model_dir), device="cpu", dtype="fp32")
    side = model.pixel_multiple * 2
    clients = [torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    settings = LoraSettings(rounds=1, local_steps=1, batch_size=2, resolution=side, learning_rate=1e-2,
                            prompt="a painting of a circle", dp=UserDP(1e-3, 0.0, placement="client"))
    result = run_lora_federation(model, clients, settings)
    assert all(float(d.norm()) <= 1e-3 * (1 + 1e-4) for d in result.updates[1].values())
