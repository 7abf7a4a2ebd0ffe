"""The demo model's training script, run for a few steps on the tiny architecture (CI never retrains the
real demo model; this checks the script end to end and that its output loads through the public loader)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from artshield.models.demo.world import ARTIST_STYLE, STYLES


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-train") / "model"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable, "-m", "artshield.models.demo.train", "--output-dir", str(out), "--architecture", "tiny",
        "--seed", "3", "--vae-steps", "4", "--unet-steps", "4", "--batch-size", "4", "--images-per-style", "2",
        "--threads", "1",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return out, result


def test_training_writes_a_loadable_diffusers_folder(trained_tiny):
    from artshield.models import load

    out, _ = trained_tiny
    for name in ("model_index.json", "vae", "unet", "text_encoder", "tokenizer", "scheduler", "style_metric"):
        assert (out / name).exists(), name
    assert not list(out.parent.glob(".model.tmp-*")), "the temporary folder must be renamed into place"
    model = load(str(out), device="cpu", dtype="fp32")
    assert model.native_resolution == 32
    assert model.vae.config.scaling_factor > 0
    # The artist's name is one token, as are the training styles' names.
    assert len(model.tokenizer.tokenize(ARTIST_STYLE)) == 1
    images = torch.rand(1, 3, 32, 32)
    latents = model.encode(images, "mean")
    assert model.decode(latents).shape == (1, 3, 32, 32)
    loss = model.training_loss(latents, model.embed_prompt(f"a tree in {STYLES[0]} style"),
                               generator=torch.Generator().manual_seed(0))
    assert loss.shape == (1,) and torch.isfinite(loss).all()


def test_training_info_records_how_the_weights_were_made(trained_tiny):
    out, _ = trained_tiny
    info = json.loads((out / "training_info.json").read_text())
    assert info["seed"] == 3 and info["architecture"] == "tiny"
    assert info["vae_steps"] == 4 and info["unet_steps"] == 4 and info["batch_size"] == 4
    assert info["artist_style"] == ARTIST_STYLE and info["training_styles"] == list(STYLES)
    assert set(info["seconds"]) >= {"dataset", "vae", "unet", "evaluation", "total"}
    evaluation = info["evaluation"]
    for key in ("auc_artist_clean", "auc_artist_vae_reconstructed", "generation_style_accuracy"):
        assert 0.0 <= evaluation[key] <= 1.0
    assert info["parameters"]["unet"] > 0 and info["size_bytes"] > 0
    assert {"torch", "diffusers", "transformers"} <= set(info["versions"])
    assert "CANNOT" in info["note"]


def test_training_output_includes_a_working_style_metric(trained_tiny):
    from artshield.models.demo.style import StyleMetric

    out, _ = trained_tiny
    metric = StyleMetric.load(out / "style_metric")
    assert metric.artist == ARTIST_STYLE
    assert metric.probabilities(torch.rand(2, 3, 40, 24)).shape == (2, len(metric.styles))


def test_bad_arguments_exit_with_a_usage_error():
    result = subprocess.run(
        [sys.executable, "-m", "artshield.models.demo.train", "--output-dir", "x", "--unet-steps", "-1"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "--unet-steps" in result.stderr
