"""Bayesian few-shot fine-tuning (Wu et al., arXiv 2405.19931) and the corruption-stage fidelity monitor."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from artshield.errors import InvalidArgumentError, ModelNotFoundError
from artshield.finetune.bayesian import (
    BayesianConfig,
    BayesianLinear,
    add_bayesian_args,
    bayesian_layers,
    bayesian_loss,
    deterministic_state,
    gaussian_kl,
    make_bayesian,
    strip_bayesian,
)
from artshield.finetune.monitor import FidelityMonitor, find_demo_style, read_fidelity_log

LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]


def _kl_closed_form(mu_q: float, s_q: float, mu_p: float, s_p: float) -> float:
    return math.log(s_p / s_q) + (s_q**2 + (mu_q - mu_p) ** 2) / (2 * s_p**2) - 0.5


def _small_layer(prior: str = "weights", **kwargs) -> tuple[BayesianLinear, nn.Linear]:
    torch.manual_seed(0)
    plain = nn.Linear(3, 2)
    return BayesianLinear.from_linear(plain, **kwargs, prior=prior), plain


def _cfg(**kwargs) -> BayesianConfig:
    return BayesianConfig(enabled=True, **kwargs)


def _load_unet(tiny_model_dir):
    from artshield.models import load

    return load(str(tiny_model_dir), device="cpu", dtype="fp32").unet


def _lora_unet(tiny_model_dir):
    from peft import LoraConfig

    unet = _load_unet(tiny_model_dir)
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights="gaussian", target_modules=LORA_TARGETS))
    return unet


# --------------------------------------------------------------------------------------------------
# flags and config
# --------------------------------------------------------------------------------------------------


def test_flags_defaults_and_config_round_trip():
    parser = argparse.ArgumentParser()
    add_bayesian_args(parser)
    args = parser.parse_args([])
    cfg = BayesianConfig.from_args(args)
    assert not cfg.enabled
    assert (cfg.init_sigma, cfg.prior_sigma, cfg.kl_weight) == (0.01, 0.01, 0.0)  # the released scripts
    assert cfg.kl_direction == "posterior_prior" and cfg.min_sigma == 1e-7 and cfg.max_sigma > cfg.init_sigma
    args = parser.parse_args(
        ["--bayesian", "--bayes_kl_weight", "0.2", "--bayes_kl_direction", "prior_posterior", "--bayes_blocks", "up.1,mid"]
    )
    cfg = BayesianConfig.from_args(args)
    assert cfg.enabled and cfg.kl_weight == 0.2 and cfg.kl_direction == "prior_posterior"
    assert cfg.blocks == ("up.1", "mid") and cfg.to_dict()["blocks"] == "up.1,mid"
    assert cfg.resolved_layers("lora") == "lora_up" and cfg.resolved_layers("dreambooth") == "attn_ff"
    with pytest.raises(InvalidArgumentError, match="bayes_init_sigma"):
        BayesianConfig.from_args(parser.parse_args(["--bayes_init_sigma", "0.5"]))  # above max_sigma
    with pytest.raises(InvalidArgumentError, match="bayes_blocks"):
        BayesianConfig.from_args(parser.parse_args(["--bayes_blocks", "left"]))


# --------------------------------------------------------------------------------------------------
# the layer
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["posterior_prior", "prior_posterior"])
def test_kl_matches_hand_computed_closed_form(direction):
    layer, plain = _small_layer(prior_sigma=0.02, max_sigma=1.0)
    mu_p = plain.weight.detach().clone()
    with torch.no_grad():
        layer.weight.add_(torch.tensor([[0.01, -0.02, 0.0], [0.03, 0.0, 0.05]]))
        layer.sigma.copy_(torch.tensor([[0.01, 0.02, 0.03], [0.005, 0.04, 0.02]]))
    expected = 0.0
    for i in range(2):
        for j in range(3):
            q = (layer.weight[i, j].item(), layer.sigma[i, j].item())
            p = (float(mu_p[i, j]), 0.02)
            expected += _kl_closed_form(*q, *p) if direction == "posterior_prior" else _kl_closed_form(*p, *q)
    assert layer.kl(direction).item() == pytest.approx(expected, rel=1e-5)
    # Zero-mean prior (LoRA up): the prior mean is 0, not the initial weight.
    lora_layer, _ = _small_layer(prior="zero", prior_sigma=0.02)
    mu = lora_layer.weight.detach().double()
    by_hand = sum(
        _kl_closed_form(float(m), 0.01, 0.0, 0.02) if direction == "posterior_prior" else _kl_closed_form(0.0, 0.02, float(m), 0.01)
        for m in mu.flatten()
    )
    assert lora_layer.kl(direction).item() == pytest.approx(by_hand, rel=1e-5)
    # At the prior itself KL(q||p) is zero.
    assert float(gaussian_kl(torch.tensor(0.3), torch.tensor(0.02), 0.3, 0.02)) == pytest.approx(0.0, abs=1e-7)


def test_bayesian_loss_weight_direction_and_normalisation():
    model = nn.Sequential(nn.Linear(3, 2))
    layer = BayesianLinear.from_linear(model[0], prior_sigma=0.02, max_sigma=1.0)
    model[0] = layer
    with torch.no_grad():
        layer.weight.add_(0.05)
    kl = layer.kl("posterior_prior").item()
    for norm, scale in (("examples", 1 / 5), ("weights", 1 / 6), ("none", 1.0)):
        loss = bayesian_loss(model, _cfg(kl_weight=0.2, prior_sigma=0.02, kl_normalization=norm), num_examples=5)
        assert loss.dim() == 0 and loss.item() == pytest.approx(0.2 * kl * scale, rel=1e-5)
    reverse = bayesian_loss(model, _cfg(kl_weight=1.0, kl_direction="prior_posterior", kl_normalization="none"), 5)
    assert reverse.item() == pytest.approx(layer.kl("prior_posterior").item(), rel=1e-6)
    for cfg in (BayesianConfig(enabled=False, kl_weight=1.0), _cfg(kl_weight=0.0)):
        zero = bayesian_loss(model, cfg, num_examples=5)
        assert zero.dim() == 0 and zero.item() == 0.0
    loss = bayesian_loss(model, _cfg(kl_weight=1.0), num_examples=5)
    loss.backward()
    assert layer.weight.grad is not None and layer.sigma.grad is not None


def test_eval_mode_is_exactly_the_mean_and_training_mode_samples():
    layer, plain = _small_layer(init_sigma=0.05)
    x = torch.randn(4, 3)
    reference = nn.functional.linear(x, plain.weight, plain.bias)
    layer.eval()
    assert torch.equal(layer(x), reference) and torch.equal(layer(x), layer(x))
    layer.train()
    with deterministic_state(layer):
        assert torch.equal(layer(x), reference)  # training mode, but the context forces the mean
    torch.manual_seed(1)
    draws = torch.stack([layer(x) for _ in range(4000)]).detach()
    assert not torch.equal(draws[0], draws[1])
    # E[x w^T] = x mu^T; the per-output std is sigma * ||x||, so 4000 draws pin the mean to ~2% of sigma*||x||.
    tolerance = 4 * 0.05 * x.norm(dim=1, keepdim=True) / math.sqrt(4000)
    assert ((draws.mean(0) - reference).abs() <= tolerance).all()
    assert draws.std(0).mean() == pytest.approx(float((0.05 * x.norm(dim=1)).mean()), rel=0.1)


def test_sigma_stays_within_bounds_after_optimiser_steps():
    layer, _ = _small_layer(init_sigma=0.01, min_sigma=1e-3, max_sigma=0.05)
    optimizer = torch.optim.SGD([layer.weight, layer.sigma], lr=1.0)
    for sign in (-1.0, 1.0):  # push sigma up (loss -sigma), then down
        for _ in range(3):
            optimizer.zero_grad()
            (sign * layer.clamped_sigma().sum()).backward()
            optimizer.step()
            # (bounds as float32 numbers: the parameter's dtype)
            assert layer.sigma.min() >= torch.tensor(1e-3) and layer.sigma.max() <= torch.tensor(0.05)
        assert torch.allclose(layer.sigma, torch.full_like(layer.sigma, 0.05 if sign < 0 else 1e-3))
    # A value written by hand is clamped where it is used.
    with torch.no_grad():
        layer.sigma.fill_(3.0)
    assert layer.clamped_sigma().max() == torch.tensor(0.05)


def test_gradients_reach_mean_and_sigma():
    layer, _ = _small_layer()
    layer.train()
    layer(torch.randn(5, 3)).square().sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert layer.sigma.grad is not None and layer.sigma.grad.abs().sum() > 0
    assert layer.bias.grad is not None


# --------------------------------------------------------------------------------------------------
# on a UNet
# --------------------------------------------------------------------------------------------------


def test_make_bayesian_dreambooth_selects_self_attention_and_ffn(tiny_model_dir):
    unet = _load_unet(tiny_model_dir)
    weights = {n: m.weight for n, m in unet.named_modules() if isinstance(m, nn.Linear)}
    names = make_bayesian(unet, _cfg(), "dreambooth")
    expected = [
        n for n in weights
        if "transformer_blocks" in n and (".attn1." in n or ".ff." in n)
    ]
    assert sorted(names) == sorted(expected) and names
    assert not any("attn2" in n or "time_emb_proj" in n for n in names)
    for name in names:
        layer = unet.get_submodule(name)
        assert isinstance(layer, BayesianLinear)
        assert layer.weight is weights[name]  # mu IS the pretrained Parameter
        assert torch.equal(layer.prior_mean, layer.weight) and layer.prior_mean is not layer.weight
        assert torch.all(layer.sigma == 0.01) and layer.sigma.requires_grad
    with_cross = make_bayesian(_load_unet(tiny_model_dir), _cfg(include_cross_attention=True), "full")
    assert {n for n in with_cross if "attn2" in n} and set(names) < set(with_cross)
    up_only = make_bayesian(_load_unet(tiny_model_dir), _cfg(blocks=("up",)), "dreambooth")
    assert up_only and all(n.startswith("up_blocks.") for n in up_only)
    assert make_bayesian(_load_unet(tiny_model_dir), BayesianConfig(), "dreambooth") == []
    with pytest.raises(InvalidArgumentError, match="lora"):
        make_bayesian(_load_unet(tiny_model_dir), _cfg(layers="lora_up"), "dreambooth")


def test_make_bayesian_lora_converts_only_lora_up(tiny_model_dir):
    unet = _lora_unet(tiny_model_dir)
    names = make_bayesian(unet, _cfg(), "lora")
    expected = [n for n, _ in unet.named_modules() if n.endswith("lora_B.default")]
    assert sorted(names) == sorted(expected) and len(names) == len(expected) > 0
    assert any(".attn2." in n for n in names)  # the reference makes every LoRA up Bayesian
    assert sorted(make_bayesian(unet, _cfg(), "lora")) == sorted(names)  # a second call converts nothing new
    for name, layer in bayesian_layers(unet):
        assert name.endswith("lora_B.default") and layer.prior_mean is None
        assert torch.count_nonzero(layer.weight) == 0  # peft's init: B = 0
    assert not any(isinstance(m, BayesianLinear) for n, m in unet.named_modules() if "lora_A" in n)
    with pytest.raises(InvalidArgumentError, match="LoRA up"):
        make_bayesian(_lora_unet(tiny_model_dir), _cfg(layers="attn_ff"), "lora")
    with pytest.raises(InvalidArgumentError, match="no LoRA up"):
        make_bayesian(_load_unet(tiny_model_dir), _cfg(), "lora")


def _unet_inputs(unet):
    torch.manual_seed(3)
    size = unet.config.sample_size
    return (
        torch.randn(1, 4, size, size),
        torch.tensor([10]),
        torch.randn(1, 4, unet.config.cross_attention_dim),
    )


def test_deterministic_state_serialises_as_plain_model(tiny_model_dir):
    plain = _load_unet(tiny_model_dir)
    unet = _load_unet(tiny_model_dir)
    make_bayesian(unet, _cfg(), "dreambooth")
    assert any(k.endswith(".sigma") for k in unet.state_dict())
    unet.train()
    sample, t, context = _unet_inputs(unet)
    with torch.no_grad():
        expected = plain(sample, t, context).sample
        with deterministic_state(unet):
            assert list(unet.state_dict()) == list(plain.state_dict())
            assert [n for n, _ in unet.named_parameters()] == [n for n, _ in plain.named_parameters()]
            assert not any("prior_mean" in n for n, _ in unet.named_buffers())
            assert torch.allclose(unet(sample, t, context).sample, expected, atol=1e-6)
        assert any(k.endswith(".sigma") for k in unet.state_dict())  # restored
        assert not torch.allclose(unet(sample, t, context).sample, expected, atol=1e-6)  # samples again
    with pytest.raises(RuntimeError, match="boom"), deterministic_state(unet):
        raise RuntimeError("boom")
    assert any(k.endswith(".sigma") for k in unet.state_dict()) and all(
        layer._force_mean == 0 for _, layer in bayesian_layers(unet)
    )
    names = strip_bayesian(unet)
    assert names and not list(bayesian_layers(unet))
    assert list(unet.state_dict()) == list(plain.state_dict())
    with torch.no_grad():
        assert torch.allclose(unet(sample, t, context).sample, expected, atol=1e-6)


def test_saved_bayesian_lora_loads_in_stock_pipeline(tiny_model_dir, tmp_path):
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    unet = _lora_unet(tiny_model_dir)
    make_bayesian(unet, _cfg(), "lora")
    torch.manual_seed(4)
    with torch.no_grad():
        for _, layer in bayesian_layers(unet):
            layer.weight.normal_(0.0, 0.1)  # as if trained
    assert any(k.endswith("sigma") for k in get_peft_model_state_dict(unet))
    with deterministic_state(unet):
        lora_state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
        StableDiffusionPipeline.save_lora_weights(tmp_path, unet_lora_layers=lora_state, safe_serialization=True)
    assert not any("sigma" in k for k in lora_state)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None, requires_safety_checker=False)
    pipe.load_lora_weights(tmp_path, weight_name="pytorch_lora_weights.safetensors")
    # The pipeline names its adapter itself ("default_0"): compare per adapted layer.
    loaded = {n.rpartition(".lora_B.")[0]: m.weight for n, m in pipe.unet.named_modules() if ".lora_B." in n}
    ours = {n.rpartition(".lora_B.")[0]: layer.weight for n, layer in bayesian_layers(unet)}
    assert len(loaded) == len(ours) > 0
    for name, weight in ours.items():
        assert torch.equal(loaded[name], weight.detach())


# --------------------------------------------------------------------------------------------------
# fidelity monitor
# --------------------------------------------------------------------------------------------------


def _world_images(style: str, n: int, size: int = 32, seed: int = 0) -> list[Image.Image]:
    from artshield.models.demo.world import SUBJECTS, render

    return [Image.fromarray(render(style, SUBJECTS[i % len(SUBJECTS)], (size, size), seed=seed + i)) for i in range(n)]


@pytest.fixture
def instance_dir(tmp_path):
    folder = tmp_path / "instance"
    folder.mkdir()
    for i, image in enumerate(_world_images("velmora", 3)):
        image.save(folder / f"{i}.png")
    return folder


class _FakeAccelerator:
    device = torch.device("cpu")
    is_main_process = True

    def __init__(self):
        self.logged = []

    def log(self, values, step=None):
        self.logged.append((step, values))


def test_monitor_writes_jsonl_with_style_and_weight_free_scores(instance_dir, tmp_path, monkeypatch):
    from artshield.models.demo.style import StyleMetric
    from artshield.models.demo.world import ALL_STYLES, make_dataset

    images, _, labels = make_dataset(2, ALL_STYLES, size=(32, 32))
    fitted = StyleMetric.fit(images, labels, max_iter=50)
    monkeypatch.setattr(StyleMetric, "load_default", classmethod(lambda cls: fitted))
    args = argparse.Namespace(
        validation_prompt="a tree in velmora style", instance_prompt="a painting in velmora style",
        instance_data_dir=str(instance_dir), pretrained_model_name_or_path="demo", resolution=32,
    )
    out = tmp_path / "run"
    monitor = FidelityMonitor.from_args(args, out)
    assert monitor.style == "velmora" and monitor.size == 32
    accelerator = _FakeAccelerator()
    copies = [Image.open(p) for p in sorted(instance_dir.iterdir())]
    rng = np.random.default_rng(0)
    noisy = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(3)]
    first = monitor.log(10, copies, accelerator)
    second = monitor.log(20, noisy)
    records = read_fidelity_log(out)
    assert [r["step"] for r in records] == [10, 20] and records[0] == json.loads(json.dumps(first))
    assert json.loads((out / "fidelity.jsonl").read_text().splitlines()[1]) == second
    for key in ("style_score", "artist_score", "hf_energy", "hf_energy_ratio", "nn_ssim", "nn_rmse",
                "pixel_diversity", "color_similarity", "dct_similarity"):
        assert key in first and key in second
    assert first["nn_ssim"] == pytest.approx(1.0) and first["nn_rmse"] == pytest.approx(0.0, abs=1e-6)
    assert first["dct_similarity"] == pytest.approx(1.0, abs=1e-5) and second["dct_similarity"] < 0.9
    assert second["nn_ssim"] < 0.5 and second["hf_energy_ratio"] > first["hf_energy_ratio"] == pytest.approx(1.0)
    assert first["style_score"] > second["style_score"]
    assert accelerator.logged[0][0] == 10 and "fidelity/nn_ssim" in accelerator.logged[0][1]


def test_monitor_skips_missing_optional_metrics(tmp_path, monkeypatch, caplog):
    from artshield.models.demo.style import StyleMetric

    def missing(cls):
        raise ModelNotFoundError("the demo style metric is missing from /nowhere")

    monkeypatch.setattr(StyleMetric, "load_default", classmethod(missing))
    args = argparse.Namespace(validation_prompt="a photo of sks dog", pretrained_model_name_or_path="demo")
    with caplog.at_level("INFO", logger="artshield.finetune.monitor"):
        monitor = FidelityMonitor.from_args(args, tmp_path)
    assert {"style_score", "artist_score", "clip_i", "nn_ssim"} <= set(monitor.unavailable)
    # Offline with no cached weights, CLIP-I and LPIPS are skipped with a reason rather than downloading.
    record = monitor.log(0, _world_images("neon", 2))
    assert "clip_i" not in record and "style_score" not in record and "hf_energy" in record
    assert ("lpips_diversity" in record) != ("lpips_diversity" in monitor.unavailable)
    assert read_fidelity_log(tmp_path)[0]["step"] == 0
    assert find_demo_style("A Tree in Velmora style") == "velmora" and find_demo_style("sks dog", None) is None
    with pytest.raises(InvalidArgumentError):
        monitor.log(1, [])
