"""The built-in LoRA mimic over several training runs and along its training (the checkpoint curve): outputs carry
their run and step, stages resume their own checkpoints, a changed recipe never resumes another's, and the
harness scores the last step as the result and every step as the curve."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from artshield.errors import InvalidArgumentError
from artshield.evaluate.harness import EvaluationSettings, evaluate, load_image_sets
from artshield.evaluate.mimicry import LoraMimicry, parse_steps
from artshield.imageio import write_png

RECIPE = {"steps": 2, "batch_size": 2, "rank": 2, "resolution": 32, "samples": 2, "num_inference_steps": 2}


def _images(count: int = 3, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(3, 32, 32, generator=generator) for _ in range(count)]


def test_runs_and_stages_are_labelled_and_stages_share_their_noise(tiny_model, tmp_path):
    mimicry = LoraMimicry(tiny_model, train_seeds=[0, 1], checkpoints=[1], **RECIPE)
    out = mimicry(_images(), tmp_path)
    assert out.keys == [f"r{r}-c{c}-p0-s{s}" for r in (0, 1) for c in (1, 2) for s in (0, 1)]
    assert out.groups == ["seed0"] * 4 + ["seed1"] * 4
    assert out.stages == [1, 1, 2, 2] * 2
    assert [(run["seed"], run["step"]) for run in out.info["runs"]] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert [run["steps"] for run in out.info["runs"]] == [1, 2, 1, 2]  # each stage trained to its own step
    assert mimicry.config["train_seeds"] == [0, 1] and mimicry.config["checkpoints"] == [1]
    # Two training seeds make two different LoRAs: the same generation noise gives different images.
    assert not torch.equal(out.images[2], out.images[6])


def test_a_rerun_reads_finished_stages_back_and_a_new_recipe_starts_afresh(tiny_model, tmp_path):
    images = _images()
    first = LoraMimicry(tiny_model, checkpoints=[1], **RECIPE)(images, tmp_path)
    again = LoraMimicry(tiny_model, checkpoints=[1], **RECIPE)(images, tmp_path)
    assert all(run.get("reused") for run in again.info["runs"])
    assert all(torch.allclose(a, b, atol=1 / 255) for a, b in zip(first.images, again.images, strict=True))
    # Other generation settings: the LoRA run is kept (same training), the images are made anew.
    more = LoraMimicry(tiny_model, checkpoints=[1], **{**RECIPE, "num_inference_steps": 3})(images, tmp_path)
    assert not any(run.get("reused") for run in more.info["runs"])
    marker = (tmp_path / "seed0" / "training.txt").read_text()
    # Another learning rate must not resume the first recipe's checkpoint (it would train nothing).
    changed = LoraMimicry(tiny_model, checkpoints=[1], learning_rate=0.01, **RECIPE)(images, tmp_path)
    assert (tmp_path / "seed0" / "training.txt").read_text() != marker
    assert [run["steps"] for run in changed.info["runs"]] == [1, 2]
    assert not any(run.get("reused") for run in changed.info["runs"])
    assert not all(torch.allclose(a, b, atol=1 / 255) for a, b in zip(first.images, changed.images, strict=True))


def test_checkpoints_must_lie_below_the_last_step(tiny_model):
    with pytest.raises(InvalidArgumentError, match="checkpoints"):
        LoraMimicry(tiny_model, checkpoints=[2], **RECIPE)
    with pytest.raises(InvalidArgumentError, match="train_seeds"):
        LoraMimicry(tiny_model, train_seeds=[0, 0], **RECIPE)
    assert parse_steps("600, 200,400") == [200, 400, 600]
    for text in ("0", "1,1", "x", ""):
        with pytest.raises(InvalidArgumentError, match="--lora-checkpoints"):
            parse_steps(text)


def test_the_harness_scores_the_last_step_and_draws_the_curve(tiny_model, tmp_path):
    for i, image in enumerate(_images(3, seed=1)):
        write_png(tmp_path / "clean" / f"{i}.png", image)
        write_png(tmp_path / "prot" / f"{i}.png", (image + 0.03).clamp(0, 1))
    sets = load_image_sets(tmp_path / "clean", {"prot": tmp_path / "prot"})
    mimicry = LoraMimicry(tiny_model, train_seeds=[0, 1], checkpoints=[1], **RECIPE)
    settings = EvaluationSettings(mimicries=[mimicry], purifications=["none"], use_clip=False, bootstrap=50)
    report = evaluate(sets, settings, tmp_path / "out", quiet=True)
    entry = report["mimicry"]["lora"]
    assert entry["runs"] == ["seed0", "seed1"] and entry["stages"] == [1, 1, 2, 2] * 2
    assert set(entry["curve"]) == {"1", "2"}
    assert entry["scores"] == entry["curve"]["2"]  # the result is the last step's
    assert entry["curve"]["1"]["kid"] != entry["curve"]["2"]["kid"]
    per_item = entry["conditions"]["clean+none"]["per_item"]
    assert all(len(values) == 8 for values in per_item.values())  # every item is kept, of every step
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Checkpoint curve" in html
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["mimicry"]["lora"]["curve"].keys() == {"1", "2"}
    # The effect at the last step, as the headline reports it, is the curve's last point.
    row = next(r for r in report["headline"] if r["mimicry"] == "lora")
    assert np.isclose(row["effect"], entry["curve"]["2"][report["headline_score"]]["protection"]["prot"]["worst_case"]["effect"])
