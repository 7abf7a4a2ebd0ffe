"""The demo model's training script, run for a few steps on the tiny architecture (CI never retrains the
real demo model; this checks the script end to end and that its output loads through the public loader)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
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
    assert [p.name for p in out.parent.iterdir()] == ["model"], "the staging folder must be swapped into place"
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
    assert info["parameters"]["unet"] > 0
    assert abs(info["size_bytes"] - sum(f.stat().st_size for f in out.rglob("*") if f.is_file())) < 100
    assert info["weights_dtype"]["unet"] == "float16" and info["weights_dtype"]["text_encoder"].startswith("float32")
    assert {"torch", "diffusers", "transformers"} <= set(info["versions"])
    assert "CANNOT" in info["note"]


def test_training_output_includes_a_working_style_metric(trained_tiny):
    """The saved metric is the one the recorded evaluation measured, and it tells the artist from the other
    styles on the held-out clean images even after a few seconds of training (it is fitted, not learned)."""
    from artshield.models.demo.style import StyleMetric
    from artshield.models.demo.train import METRIC_PER_STYLE
    from artshield.models.demo.world import ALL_STYLES, make_dataset
    from artshield.stats import roc_auc

    out, _ = trained_tiny
    info = json.loads((out / "training_info.json").read_text())
    metric = StyleMetric.load(out / "style_metric")
    assert metric.artist == ARTIST_STYLE and set(metric.styles) == set(ALL_STYLES)
    # The held-out images the script evaluated on (seed + 2, half as many per style as it fitted on).
    per_style = max(2, min(METRIC_PER_STYLE, info["images_per_style"] * 2))
    images, _, labels = make_dataset(max(2, per_style // 2), ALL_STYLES, (32, 32), seed=info["seed"] + 2)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        scores = metric.artist_score(x).numpy()
    is_artist = np.array(labels) == ARTIST_STYLE
    auc = roc_auc(scores[is_artist], scores[~is_artist])
    evaluation = info["evaluation"]
    assert auc == pytest.approx(evaluation["auc_artist_clean"], abs=1e-6)
    assert auc >= 0.9
    accuracy = float(np.mean(np.array(metric.predict(x)) == np.array(labels)))
    assert accuracy == pytest.approx(evaluation["style_accuracy_clean"], abs=1e-6)
    assert accuracy >= 2 / len(ALL_STYLES)  # at least twice chance on 8 styles


def test_training_output_loads_in_stock_diffusers_in_one_dtype(trained_tiny):
    from diffusers import StableDiffusionPipeline

    out, _ = trained_tiny
    pipe = StableDiffusionPipeline.from_pretrained(str(out))
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.float32}
    pipe.set_progress_bar_config(disable=True)
    images = pipe(f"a tree in {STYLES[0]} style", height=32, width=32, num_inference_steps=2,
                  generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()


def test_bad_arguments_exit_with_a_usage_error():
    result = subprocess.run(
        [sys.executable, "-m", "artshield.models.demo.train", "--output-dir", "x", "--unet-steps", "-1"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--unet-steps" in lines[0] and ">= 0" in lines[0], result.stderr


def test_an_interrupted_run_resumes_to_the_same_weights(trained_tiny, tmp_path, monkeypatch):
    """Stopped in the UNet phase (checkpoints every step), the same command picks up from the work folder and
    ends with the weights an uninterrupted run wrote; a run with other settings refuses the folder."""
    from safetensors.torch import load_file

    from artshield.errors import InvalidArgumentError
    from artshield.models.demo import train as demo_train
    from artshield.models.demo.training import PhaseCheckpoints

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "model"
    argv = ["--output-dir", str(out), "--architecture", "tiny", "--seed", "3", "--vae-steps", "4",
            "--unet-steps", "4", "--batch-size", "4", "--images-per-style", "2", "--threads", "1",
            "--checkpoint-every", "1"]
    saved = PhaseCheckpoints.step_done

    def stop_after_unet_step_2(self, step, total, *args):
        saved(self, step, total, *args)
        if self.phase == "unet" and step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(PhaseCheckpoints, "step_done", stop_after_unet_step_2)
    with pytest.raises(KeyboardInterrupt):
        demo_train.train(demo_train.parse_args(argv))
    work = tmp_path / "model.partial"
    assert not out.exists() and {"recipe.json", "vae-done.pt", "unet.pt"} <= {p.name for p in work.iterdir()}

    with pytest.raises(InvalidArgumentError, match="other settings.*unet_steps"):
        demo_train.train(demo_train.parse_args([*argv[:-1], "2", "--unet-steps", "5"]))

    monkeypatch.setattr(PhaseCheckpoints, "step_done", saved)
    info = demo_train.train(demo_train.parse_args(argv))
    assert not work.exists(), "the work folder is removed once the output is published"
    reference, _ = trained_tiny
    for part in ("unet", "vae"):
        ours = load_file(out / part / "diffusion_pytorch_model.safetensors")
        theirs = load_file(reference / part / "diffusion_pytorch_model.safetensors")
        assert ours.keys() == theirs.keys()
        # Equal up to the last bit of an fp16 weight near zero (one kernel's summation order may differ).
        assert max(float((ours[k].float() - theirs[k].float()).abs().max()) for k in ours) < 1e-6, part
    assert info["world_version"] == 2 and ARTIST_STYLE in info["vae_styles"]
    assert set(info["evaluation"]["vae_round_trip_psnr_db"]) == {*STYLES, ARTIST_STYLE}


def test_the_demo_tokenizer_is_learned_the_same_way_every_time():
    """The merges are learned with a fixed tie-break (tokenizers' trainer broke ties in hash order, so two runs
    of the training script built different vocabularies and could not be compared or resumed)."""
    from artshield.models.demo.tokenizer import build_tokenizer
    from artshield.models.demo.world import ALL_STYLES, SUBJECTS, caption

    corpus = [caption(style, subject) for style in ALL_STYLES for subject in SUBJECTS]
    first, second = build_tokenizer(corpus), build_tokenizer(list(reversed(corpus)))
    assert first.get_vocab() == second.get_vocab()
    assert first.tokenize(f"a tree in {ARTIST_STYLE} style, by sks") == [
        "a</w>", "tree</w>", "in</w>", f"{ARTIST_STYLE}</w>", "style</w>", ",</w>", "by</w>", "sks</w>"]
    assert first.tokenize("zq")  # unknown words fall back to byte-level pieces


def test_a_damaged_checkpoint_is_a_clear_error(tmp_path):
    from artshield.errors import InvalidArgumentError
    from artshield.models.demo.training import WorkFolder

    work = WorkFolder(tmp_path / "work", {"steps": 1})
    (tmp_path / "work" / "unet.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InvalidArgumentError, match=r"unet\.pt.*cannot be read.*delete"):
        work.load("unet")
    assert work.load("vae") is None
