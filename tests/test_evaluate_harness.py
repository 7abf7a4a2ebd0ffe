"""The evaluation harness: mimicry on clean vs protected+purified images, paired statistics, report, resume, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from artshield.errors import InvalidArgumentError, OutputWriteError
from artshield.evaluate import feature_distance as fdist
from artshield.evaluate.clip_score import clip_score, clip_unavailable_reason
from artshield.evaluate.harness import (
    Condition,
    EvaluationSettings,
    bootstrap_conditions,
    check_output_folder,
    evaluate,
    load_image_sets,
    summarise_score,
)
from artshield.evaluate.mimicry import (
    InpaintMimicry,
    LoraMimicry,
    SDEditMimicry,
    crop_to_multiple,
    default_masks,
)
from artshield.imageio import write_png
from artshield.models import load
from artshield.models.demo.style import StyleMetric
from artshield.models.demo.world import make_dataset


def _write_sets(root, count=3, size=(40, 36)):
    """Clean artist images (odd size: not a multiple of 16) and a 'protected' copy with ±8/255 noise."""
    images, _, _ = make_dataset(count, styles=["velmora"], size=size, seed=5)
    generator = torch.Generator().manual_seed(0)
    for i, image in enumerate(images):
        x = torch.from_numpy(image).permute(2, 0, 1).float() / 255
        write_png(root / "clean" / f"{i:02d}.png", x)
        noise = (torch.rand(x.shape, generator=generator) * 2 - 1) * 8 / 255
        write_png(root / "protected" / f"{i:02d}.png", (x + noise).clamp(0, 1))
    return root / "clean", root / "protected"


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_model_dir, tiny_inpaint_dir):
    root = tmp_path_factory.mktemp("evaluate")
    clean, protected = _write_sets(root)
    model = load(str(tiny_model_dir), device="cpu", dtype="fp32")
    inpaint_model = load(str(tiny_inpaint_dir), device="cpu", dtype="fp32")
    sets = load_image_sets(clean, {"noise": protected})
    common = {"samples": 2, "num_inference_steps": 2, "seed": 0}

    def settings():
        mimicries = [
            LoraMimicry(model, steps=2, batch_size=2, rank=2, resolution=32, **common),
            SDEditMimicry(model, **common),
            InpaintMimicry(inpaint_model, num_masks=2, samples=1, num_inference_steps=2),
        ]
        return EvaluationSettings(mimicries=mimicries, purifications=["none", "jpeg75", "noise0.05"],
                                  style_metric=StyleMetric.load_default(), bootstrap=200)

    out = root / "out"
    with pytest.MonkeyPatch.context() as patch:  # an empty CLIP cache, whatever this machine holds
        from huggingface_hub import constants

        patch.setattr(constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("empty_hub")))
        first = evaluate(sets, settings(), out, purification_model=model, quiet=True)
        second = evaluate(sets, settings(), out, purification_model=model, quiet=True)
    return out, first, second


def test_report_covers_every_mimicry_condition_and_score(evaluated):
    out, report, _ = evaluated
    assert (out / "report.json").is_file() and (out / "report.html").is_file()
    assert json.loads((out / "report.json").read_text())["headline"] == report["headline"]
    assert report["conditions"] == ["clean+none", "noise+none", "noise+jpeg75", "noise+noise0.05"]
    assert set(report["mimicry"]) == {"lora", "sdedit", "inpaint"}
    counts = {"lora": 2, "sdedit": 3 * 2, "inpaint": 3 * 2 * 1}  # prompts × seeds; images × seeds; images × masks × seeds
    for name, entry in report["mimicry"].items():
        for cell in entry["conditions"].values():
            assert cell["outputs"] == counts[name]
            assert (out / cell["grid"]).is_file() and (out / cell["input_grid"]).is_file()
            for score in ("artist_score", "kid", "fd"):
                value = cell["scores"][score]
                assert value["ci95"][0] <= value["value"] + 1e-12 and value["value"] <= value["ci95"][1] + 1e-12
        assert (out / f"plot_{name}.svg").read_text().startswith("<svg")
    # Image-to-image attacks say which input made each output (their grids line up with the inputs); LoRA does not.
    assert report["mimicry"]["inpaint"]["sources"] == [0, 0, 1, 1, 2, 2] and "sources" not in report["mimicry"]["lora"]
    # Image-to-image attacks are compared with the clean edit made with the same seed and mask.
    assert "ssim_to_clean" in report["mimicry"]["sdedit"]["scores"]
    assert "ssim_to_clean" not in report["mimicry"]["sdedit"]["conditions"]["clean+none"]["scores"]
    assert len(report["headline"]) == 3
    for row in report["headline"]:
        assert row["purification"] in ("none", "jpeg75", "noise0.05")
        assert row["effect_ci95"][0] <= row["effect_ci95"][1]
        assert row["protects"] == (row["effect_ci95"][0] > 0)
    quality = report["quality"]["noise"]["summary"]
    assert quality["linf_255_max"] <= 8.0 + 1e-6 and 30 < quality["psnr_db"]["mean"] < 40
    assert report["notes"]["clip_score"].startswith("CLIP score is unavailable")


def test_rerun_reuses_every_cell_and_gives_identical_numbers(evaluated):
    _, first, second = evaluated
    for entry in second["mimicry"].values():
        assert all(cell["reused"] for cell in entry["conditions"].values())
    # A reused cell still says how long it took to make (what the evaluation cost, not what the rerun cost).
    for name, entry in first["mimicry"].items():
        for condition, cell in entry["conditions"].items():
            assert not cell["reused"] and cell["made_in_seconds"] is not None and cell["made_in_seconds"] >= 0
            assert second["mimicry"][name]["conditions"][condition]["made_in_seconds"] == cell["made_in_seconds"]
    assert second["headline"] == first["headline"]
    for name in first["mimicry"]:
        assert second["mimicry"][name]["scores"] == first["mimicry"][name]["scores"]


def test_purified_inputs_are_saved_and_differ_from_the_protected_images(evaluated):
    out, report, _ = evaluated
    folder = out / "inputs" / "noise+jpeg75" / "images"
    assert sorted(p.name for p in folder.iterdir()) == ["0000.png", "0001.png", "0002.png"]
    assert report["purification_settings"]["jpeg75"]["quality"] == 75


def test_a_changed_setting_reruns_only_the_cells_it_affects(tmp_path, tiny_model_dir):
    clean, protected = _write_sets(tmp_path, count=2, size=(32, 32))
    model = load(str(tiny_model_dir), device="cpu", dtype="fp32")
    sets = load_image_sets(clean, {"p": protected})

    def run(strength, purifications):
        settings = EvaluationSettings(mimicries=[SDEditMimicry(model, strength=strength, samples=1, num_inference_steps=2)],
                                      purifications=purifications, bootstrap=50)
        return evaluate(sets, settings, tmp_path / "out", purification_model=model, quiet=True)

    run(0.5, ["none"])
    again = run(0.5, ["none", "noise0.05"])
    assert {c: cell["reused"] for c, cell in again["mimicry"]["sdedit"]["conditions"].items()} == {
        "clean+none": True, "p+none": True, "p+noise0.05": False}
    changed = run(0.8, ["none"])
    assert not any(cell["reused"] for cell in changed["mimicry"]["sdedit"]["conditions"].values())
    # Without a style metric the headline falls back to KID.
    assert changed["headline_score"] == "kid" and "artist_score" in changed["notes"]


# ------------------------------------------------------------------------------------------------ statistics
def test_paired_bootstrap_finds_protection_and_picks_the_worst_purification():
    rng = np.random.default_rng(0)
    clean = rng.uniform(0.6, 0.9, 24)
    data = {
        "clean+none": clean,
        "p+none": clean - 0.5,                     # protection works...
        "p+jpeg75": clean - 0.3,
        "p+noise0.05": clean - 0.05 + rng.normal(0, 0.01, 24),  # ...least after noise
        "q+none": clean + rng.normal(0, 0.05, 24),  # a protection that does nothing
    }
    sets = {"p": [Condition("p", "none"), Condition("p", "jpeg75"), Condition("p", "noise0.05")],
            "q": [Condition("q", "none")]}
    result = summarise_score("artist_score", data, np.zeros((2, 2)), sets, n_boot=500, alpha=0.05, seed=0)
    worst = result["protection"]["p"]["worst_case"]
    assert worst["purification"] == "noise0.05" and worst["effect"] == pytest.approx(0.05, abs=0.01)
    assert worst["protects"] and worst["effect_ci95"][0] > 0
    assert not result["protection"]["q"]["worst_case"]["protects"]
    per = result["protection"]["p"]["per_purification"]
    assert per["none"]["effect"] == pytest.approx(0.5) and per["none"]["effect_ci95"][0] == pytest.approx(0.5)
    assert "worst_case_vs_purified_clean" not in result["protection"]["p"]  # the clean images were not purified


def test_effect_net_of_purification_compares_with_the_purified_clean_images():
    rng = np.random.default_rng(0)
    clean = rng.uniform(0.6, 0.9, 24)
    data = {"clean+none": clean, "clean+blur": clean + 0.2,   # the purification alone raises the score...
            "p+none": clean - 0.3, "p+blur": clean + 0.1}      # ...so p+blur beats clean, but not clean+blur
    sets = {"p": [Condition("p", "none"), Condition("p", "blur")]}
    result = summarise_score("artist_score", data, np.zeros((2, 2)), sets, n_boot=300, alpha=0.05, seed=0)
    protection = result["protection"]["p"]
    assert protection["worst_case"]["purification"] == "blur" and not protection["worst_case"]["protects"]
    assert protection["per_purification"]["blur"]["effect_vs_purified_clean"] == pytest.approx(0.1)
    net = protection["worst_case_vs_purified_clean"]
    assert net["purification"] == "blur" and net["effect"] == pytest.approx(0.1) and net["protects"]


def test_each_training_run_gets_its_own_effect():
    clean = np.full(12, 0.5)
    protected = clean - np.repeat([0.3, 0.1, -0.2], 4)  # helps in two runs, harms in the third
    groups = ["seed0"] * 4 + ["seed1"] * 4 + ["seed2"] * 4
    result = summarise_score("artist_score", {"clean+none": clean, "p+none": protected}, np.zeros((2, 2)),
                             {"p": [Condition("p", "none")]}, n_boot=200, alpha=0.05, seed=0, groups=groups)
    per_run = result["protection"]["p"]["per_purification"]["none"]["effect_per_run"]
    assert list(per_run) == ["seed0", "seed1", "seed2"]
    assert per_run["seed0"] == pytest.approx(0.3) and per_run["seed2"] == pytest.approx(-0.2)
    single = summarise_score("artist_score", {"clean+none": clean, "p+none": protected}, np.zeros((2, 2)),
                             {"p": [Condition("p", "none")]}, n_boot=50, alpha=0.05, seed=0)
    assert "effect_per_run" not in single["protection"]["p"]["per_purification"]["none"]


def test_direction_of_distance_scores_is_respected():
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(20, 5))
    data = {"clean+none": rng.normal(size=(20, 5)), "p+none": rng.normal(size=(20, 5)) + 3.0}
    result = summarise_score("kid", data, reference, {"p": [Condition("p", "none")]}, n_boot=200, alpha=0.05, seed=0)
    # The protected outputs are far from the artist's images: KID is higher, and that is a positive effect.
    assert result["conditions"]["p+none"]["value"] > result["conditions"]["clean+none"]["value"]
    assert result["protection"]["p"]["worst_case"]["protects"]


def test_bootstrap_is_seeded_and_paired():
    data = {"a": np.arange(10.0), "b": np.arange(10.0) + 1}
    stat = lambda values, idx: float(values[idx].mean())  # noqa: E731
    est1, s1 = bootstrap_conditions(data, stat, 100, seed=3)
    est2, s2 = bootstrap_conditions(data, stat, 100, seed=3)
    assert est1 == est2 and np.array_equal(s1, s2)
    np.testing.assert_allclose(s1[:, 1] - s1[:, 0], 1.0)  # the same items are drawn for every condition


def test_frechet_distance_matches_the_covariance_formula():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(0)
    for n, m, d in ((10, 14, 67), (200, 300, 5)):
        x, y = rng.normal(size=(n, d)), rng.normal(size=(m, d)) * 1.5 + 0.3
        cx, cy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
        expected = ((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(cx + cy - 2 * scipy_linalg.sqrtm(cx @ cy).real)
        assert fdist.frechet_distance(x, y) == pytest.approx(expected, rel=1e-6)
    assert fdist.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)


def test_kid_is_unbiased_near_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    same = [fdist.kid(rng.normal(size=(30, 8)), rng.normal(size=(30, 8))) for _ in range(40)]
    assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(len(same)) + 1e-3
    assert fdist.kid(rng.normal(size=(30, 8)), rng.normal(size=(30, 8)) + 1.0) > 0.5
    with pytest.raises(InvalidArgumentError, match="N >= 2"):
        fdist.kid(np.zeros((1, 8)), np.zeros((3, 8)))


# ------------------------------------------------------------------------------------------------ inputs
def test_missing_or_resized_protected_images_are_named(tmp_path):
    clean, protected = _write_sets(tmp_path, count=3, size=(32, 32))
    (protected / "01.png").unlink()
    with pytest.raises(InvalidArgumentError, match="lacks 1 of the clean images: 01"):
        load_image_sets(clean, {"p": protected})
    write_png(protected / "01.png", torch.rand(3, 16, 16))
    with pytest.raises(InvalidArgumentError, match="protected image 01 .* is \\(16, 16\\)"):
        load_image_sets(clean, {"p": protected})


def test_masks_and_cropping_keep_pixels():
    masks = default_masks(48, 40, 3, seed=0)
    assert [m.shape for m in masks] == [(1, 48, 40)] * 3
    for mask in masks:
        assert set(mask.unique().tolist()) <= {0.0, 1.0} and 0.2 < float(mask.mean()) < 0.7
    assert torch.equal(default_masks(48, 40, 3, seed=0)[2], masks[2])
    image = torch.rand(3, 37, 45)
    cropped = crop_to_multiple(image, 8)
    assert cropped.shape == (3, 32, 40) and torch.equal(cropped, image[:, 2:34, 2:42])


def test_inpaint_mimicry_needs_an_inpainting_model(tiny_model):
    with pytest.raises(InvalidArgumentError, match="needs an inpainting model"):
        InpaintMimicry(tiny_model)


def test_clip_score_is_none_with_a_reason_when_weights_are_missing(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache, whatever this machine holds
    assert clip_score(torch.rand(1, 3, 32, 32), ["a tree"]) is None
    reason = clip_unavailable_reason()
    assert "not on disk" in reason or "cannot be imported" in reason


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_errors_are_one_line(tmp_path, capsys):
    from artshield.cli import main

    clean, protected = _write_sets(tmp_path, count=2, size=(32, 32))
    assert main(["evaluate", "--clean", str(clean), "--protected", str(protected), "--purify", "jpeg:bogus=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("artshield evaluate: error:") and "bogus" in err and len(err.splitlines()) == 1
    assert main(["evaluate", "--clean", str(tmp_path / "nope"), "--protected", str(protected)]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["evaluate", "--clean", str(clean), "--protected", str(protected), "--mimicry", "dreamweaver"]) == 2
    assert "unknown mimicry" in capsys.readouterr().err


def test_cli_runs_end_to_end(tmp_path, tiny_model_dir, capsys):
    from artshield.cli import main

    clean, protected = _write_sets(tmp_path, count=2, size=(32, 32))
    out = tmp_path / "eval"
    status = main(["evaluate", "--clean", str(clean), "--protected", f"mine={protected}", "--model", str(tiny_model_dir),
                   "--mimicry", "sdedit", "--purify", "none,blur", "--samples", "1", "--sampling-steps", "2",
                   "--style-metric", "demo", "--bootstrap", "50", "--output", str(out), "-q"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "sdedit" in printed and "mine" in printed and "report.html" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["conditions"] == ["clean+none", "mine+none", "mine+blur"]
    assert report["command"].startswith("artshield evaluate --clean")


def test_a_headline_that_cannot_be_computed_is_refused_before_any_work(tmp_path, tiny_model):
    clean, protected = _write_sets(tmp_path, count=2, size=(32, 32))
    sets = load_image_sets(clean, {"p": protected})
    settings = EvaluationSettings(mimicries=[SDEditMimicry(tiny_model, num_inference_steps=1)], headline="artist_score")
    with pytest.raises(InvalidArgumentError, match="needs a style metric"):
        evaluate(sets, settings, tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()


def test_image_sets_refuse_what_would_give_a_silently_wrong_result(tmp_path):
    clean, protected = _write_sets(tmp_path, count=3, size=(32, 32))
    for bad in (0, -1, True, 1.5):
        with pytest.raises(InvalidArgumentError, match="max_images"):
            load_image_sets(clean, {"p": protected}, max_images=bad)
    assert load_image_sets(clean, {"p": protected}, max_images=2).names == ["00", "01"]
    (tmp_path / "link").symlink_to(clean)
    for same in (clean, tmp_path / "clean" / ".." / "clean", tmp_path / "link"):
        with pytest.raises(InvalidArgumentError, match="is the clean folder"):
            load_image_sets(clean, {"p": same})
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in clean.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    with pytest.raises(InvalidArgumentError, match="unchanged"):
        load_image_sets(clean, {"p": copy})
    with pytest.raises(InvalidArgumentError, match="clashes"):
        load_image_sets(clean, {"a b": protected, "a_b": protected})


def test_output_folder_is_checked_before_any_work(tmp_path, tiny_model):
    clean, protected = _write_sets(tmp_path, count=2, size=(32, 32))
    (tmp_path / "file.txt").write_text("keep")
    inputs = {"clean": clean, "p": protected}
    for bad, match in [(tmp_path / "file.txt", "is a file"), (tmp_path / "file.txt" / "eval", "is a file"),
                       (clean, "clean folder"), (protected, r"protected folder \(p\)"),
                       (clean.parent / "clean" / "..", None)]:  # fmt: skip
        if match is None:  # the folder holding the inputs is a fine output (nothing there is rewritten)
            assert check_output_folder(bad, inputs) == bad
            continue
        with pytest.raises(OutputWriteError, match=match):
            check_output_folder(bad, inputs)
    nested = tmp_path / "out" / "cells" / "mine"
    nested.mkdir(parents=True)
    with pytest.raises(OutputWriteError, match="cells/"):
        check_output_folder(tmp_path / "out", {"clean": clean, "p": nested})
    (tmp_path / "out2" / "report.json").mkdir(parents=True)
    with pytest.raises(OutputWriteError, match="report.json"):
        check_output_folder(tmp_path / "out2", inputs)

    sets = load_image_sets(clean, {"p": protected})
    mimic = SDEditMimicry(tiny_model, num_inference_steps=1)
    for settings, match in [(EvaluationSettings(mimicries=[mimic], bootstrap=0), "bootstrap"),
                            (EvaluationSettings(mimicries=[mimic], alpha=1.0), "alpha"),
                            (EvaluationSettings(mimicries=[mimic, mimic]), "once")]:  # fmt: skip
        with pytest.raises(InvalidArgumentError, match=match):
            evaluate(sets, settings, tmp_path / "never", quiet=True)
    with pytest.raises(OutputWriteError, match="is a file"):
        evaluate(sets, EvaluationSettings(mimicries=[mimic]), tmp_path / "file.txt", quiet=True)
    assert not (tmp_path / "never").exists() and (tmp_path / "file.txt").read_text() == "keep"



def test_grid_shows_one_output_per_input_first_so_columns_line_up_with_the_inputs():
    from artshield.evaluate.report import grid_indices

    sources = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]  # 3 images × 2 masks × 2 seeds
    assert grid_indices(range(12), sources, 3) == [0, 4, 8]
    assert grid_indices(range(12), sources, 5) == [0, 4, 8, 1, 2]  # then the others, in order
    assert grid_indices(range(4), [None] * 4, 3) == [0, 1, 2]  # text-to-image outputs: as made
    assert grid_indices([4, 5, 6, 7], None, 2) == [4, 5]  # a checkpoint curve's last step
