"""Memorization detection, location, pruning and the `artshield memorization` CLI on the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from artshield.errors import ImageWriteError, IncompatibleModelError, InvalidArgumentError
from artshield.finetune import memorization as M
from artshield.finetune.memorization_cli import main as memorization_main
from artshield.imageio import read_image, write_png

# Four DDIM steps at guidance 5 keep a tiny-model generation to a few milliseconds.
FAST = M.SamplerConfig(num_inference_steps=4, guidance_scale=5.0, batch_size=4)
CLI_FAST = ["--num-inference-steps", "4", "--steps", "2", "--seeds", "0,1", "--guidance-scale", "5", "-q"]


@pytest.fixture
def fresh_model(tiny_model_dir):
    """A private copy of the tiny model (pruning edits weights in place)."""
    from artshield.models import load

    return load(str(tiny_model_dir), device="cpu", dtype="fp32")


def no_hooks(module: torch.nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in module.modules())


# ------------------------------------------------------------------------------------------------ detection
def test_detection_metric_shape_determinism_and_empty_prompt(tiny_model):
    prompts = ["a painting of a circle", "", "a photo of a house"]
    scores, images = M.score_prompts(tiny_model, prompts, seeds=[0, 1], steps=2, sampler=FAST)
    assert images is None and [s.prompt for s in scores] == prompts
    for s in scores:
        assert len(s.per_seed) == 2 and len(s.per_step) == 2
        assert s.metric == pytest.approx(float(np.mean(s.per_seed)))
    # The empty prompt's conditional branch is the unconditional one: no text-conditional signal.
    assert scores[1].metric < 1e-6
    assert scores[0].metric > 1e-3 and scores[2].metric > 1e-3
    # Deterministic, and independent of how images are batched (one generator per image).
    again, _ = M.score_prompts(
        tiny_model, prompts, seeds=[0, 1], steps=2, sampler=M.SamplerConfig(4, 5.0, batch_size=1)
    )
    for a, b in zip(scores, again, strict=True):
        np.testing.assert_allclose(a.per_seed, b.per_seed, rtol=1e-4, atol=1e-6)
    assert no_hooks(tiny_model.unet)


def test_detect_calibrates_threshold_and_reports_auc(tiny_model):
    report, _ = M.detect(
        tiny_model, ["a painting of a circle"], reference_prompts=["", "a photo of a house"], seeds=[0], steps=2,
        sampler=FAST, fpr=0.0,
    )
    ref_metrics = [r["metric"] for r in report["reference_prompts"]]
    assert report["threshold"]["value"] == pytest.approx(max(ref_metrics))
    assert 0.0 <= report["auc"]["value"] <= 1.0
    assert not any(r["flagged"] for r in report["reference_prompts"])
    assert M.calibrate_threshold([1.0, 2.0, 3.0, 4.0], fpr=0.25) == 3.0
    with pytest.raises(InvalidArgumentError):
        M.detect(tiny_model, ["x"], sampler=M.SamplerConfig(4, guidance_scale=1.0))


def test_resolution_zero_is_refused_not_replaced_by_the_native_one(tiny_model):
    # An explicit 0 used to fall back to the model's native resolution (``resolution or native``).
    for bad in (0, -8, tiny_model.pixel_multiple + 1):
        with pytest.raises(InvalidArgumentError, match="resolution"):
            M.SamplerConfig(4, 5.0, resolution=bad).check(tiny_model)
    assert M.SamplerConfig(4, 5.0).check(tiny_model) == tiny_model.native_resolution
    assert M.SamplerConfig(4, 5.0, resolution=2 * tiny_model.pixel_multiple).check(tiny_model) == 2 * tiny_model.pixel_multiple


def test_cli_layer_names_match_the_layer_choices():
    from artshield.finetune.memorization_cli import LAYER_NAMES

    assert LAYER_NAMES == tuple(M.LAYER_CHOICES)


def test_demo_world_captions_are_read_by_the_demo_world():
    from artshield.models.demo.world import STYLES, caption, find_style, parse_world_caption, style_captions

    assert parse_world_caption("a tree in ink style") == ("tree", "ink")
    assert parse_world_caption(" a star in velmora style ") == ("star", "velmora")
    for other in ("an tree in ink style", "a tree in ink", "a dog in ink style", "a tree in oil style", ""):
        assert parse_world_caption(other) is None, other
    captions = style_captions()
    assert [parse_world_caption(c)[1] for c in captions] == list(STYLES)
    assert captions[0] == caption(STYLES[0], "circle")
    assert find_style("A Tree in Velmora style") == "velmora" and find_style(None, "a photo of sks dog") is None
    assert M.parse_world_caption is parse_world_caption  # still importable from the memorization package


def test_zero_perturbation_recheck_equals_plain_metric(tiny_model):
    plain, _ = M.score_prompts(tiny_model, ["a painting of a circle"], seeds=[0], steps=2, sampler=FAST)
    rows = M.robustness_check(tiny_model, ["a painting of a circle"], [0.0, 0.5], seeds=[0], steps=2, sampler=FAST)
    assert rows[0]["mean_metric"] == pytest.approx(plain[0].metric, rel=1e-5)
    assert rows[1]["mean_metric"] != pytest.approx(plain[0].metric, rel=1e-5)


# ------------------------------------------------------------------------------------------------ near duplicates
def test_near_duplicate_descriptor_finds_exact_copy(tmp_path):
    from artshield.models.demo.world import render

    styles = [("pointillism", "tree"), ("ink", "house"), ("mosaic", "star"), ("neon", "circle"),
              ("watercolor", "square"), ("pixelart", "tree"), ("ink", "tree"), ("pointillism", "house")]
    images = [torch.from_numpy(render(st, sub, (64, 64), seed=i)).permute(2, 0, 1).float() / 255
              for i, (st, sub) in enumerate(styles)]
    for i, img in enumerate(images):
        write_png(tmp_path / f"train_{i}.png", img)
    (tmp_path / "notes.txt").write_text("not an image")
    index = M.NearDuplicateIndex.from_folder(tmp_path)
    assert len(index.paths) == len(images)
    target = 5
    # The exact copy, an upscaled copy, and a JPEG-compressed copy all find their original.
    resized = torch.nn.functional.interpolate(images[target][None], size=(96, 96), mode="bilinear")[0]
    jpeg_path = tmp_path / "query.jpg"
    Image.fromarray((images[target].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(jpeg_path, quality=75)
    jpeg = read_image(jpeg_path).rgb[0]
    matches = index.query(torch.stack([images[target], jpeg])) + index.query(resized[None])
    for match in matches:
        assert Path(match.path).name == f"train_{target}.png"
        assert match.similarity > M.DCT_REPLICATION_THRESHOLD
    # One image without a batch axis, and a greyscale copy, are described like their RGB batch.
    assert torch.allclose(index.descriptor(images[target]), index.descriptor(images[target][None]))
    grey = images[target].mean(dim=0, keepdim=True)
    assert torch.allclose(index.descriptor(grey[None]), index.descriptor(grey.expand(3, -1, -1)[None]), atol=1e-6)
    sims = index.similarities(images[target][None])[0]
    others = torch.cat([sims[:target], sims[target + 1 :]])
    assert sims[target] == pytest.approx(1.0, abs=1e-5) and float(others.max()) < 0.9


# ------------------------------------------------------------------------------------------------ location
def test_hooks_capture_the_right_layers_and_are_removed(tiny_model):
    from diffusers.models.attention import BasicTransformerBlock

    n_blocks = sum(isinstance(m, BasicTransformerBlock) for m in tiny_model.unet.modules())
    expected_suffix = {"ffn2": ".ff.net.2", "ffn1": ".ff.net.0.proj", "attn_k": ".attn2.to_k", "attn_v": ".attn2.to_v"}
    for choice, suffix in expected_suffix.items():
        layers = M.find_target_layers(tiny_model.unet, [choice])
        assert len(layers) == n_blocks and all(name.endswith(suffix) for name in layers)
    layers = M.find_target_layers(tiny_model.unet, ["ffn2", "attn_v"])
    assert len(layers) == 2 * n_blocks
    with pytest.raises(InvalidArgumentError):
        M.find_target_layers(tiny_model.unet, ["fc2"])

    recorder = M.ActivationRecorder(tiny_model.unet, layers, max_steps=2)
    with recorder:
        assert all(len(m._forward_pre_hooks) == 1 for m in layers.values())
        recorder.start_run("target")
        embeds = tiny_model.embed_prompt(["a painting of a circle"])
        M.sample(tiny_model, embeds, [0], FAST, decode=False, stop_after=3)
    # Three UNet calls ran, but only the first two steps were recorded, once per layer each.
    assert recorder.calls == {name: 2 for name in layers}
    assert sorted(recorder.sumsq["target"]) == [0, 1]
    for name, module in layers.items():
        norms = recorder.column_norms("target", 0, name)
        assert norms.shape == (module.in_features,)
        # Rows are unit vectors, so the per-feature mean squares sum to one.
        assert float(norms.square().sum()) == pytest.approx(1.0, rel=1e-4)
    assert no_hooks(tiny_model.unet)


def test_wanda_select_matches_conceptprune_rule():
    weight = torch.tensor([[1.0, -4.0, 2.0, 0.5], [3.0, 1.0, -1.0, 2.0]])
    target = torch.tensor([1.0, 1.0, 3.0, 1.0])
    base = torch.tensor([2.0, 0.5, 1.0, 1.0])
    mask = M.wanda_select(weight, target, base, ratio=0.5)  # top-2 per row by |W| * target
    # Row 0: target scores (1, 4, 6, .5), top-2 = features 1 and 2, whose base scores (2, 2) are lower.
    # Row 1: target scores (3, 1, 3, 2), top-2 = features 0 and 2; feature 0's base score 6 beats 3, so only 2 stays.
    assert mask.tolist() == [[False, True, True, False], [False, False, True, False]]
    assert not M.wanda_select(weight, target, base, ratio=0.1).any()  # int(0.1 * 4) = 0 weights per row


def test_pruning_changes_exactly_the_selected_weights(fresh_model):
    masks = M.locate_memorization(
        fresh_model, ["a painting of a circle", "a photo of a house"], layers=["ffn2", "attn_v"], ratio=0.1,
        timesteps=3, sampler=FAST,
    )
    assert masks.total > 0 and no_hooks(fresh_model.unet)
    for name, counts in masks.per_step.items():
        assert len(counts) == 3 and max(counts) <= int(masks.masks[name].sum()) <= sum(counts)
    before = {k: v.clone() for k, v in fresh_model.unet.state_dict().items()}
    assert M.apply_masks(fresh_model.unet, masks) == masks.total
    after = fresh_model.unet.state_dict()
    zeroed = 0
    for key, old in before.items():
        new = after[key]
        name = key.removesuffix(".weight")
        if key.endswith(".weight") and name in masks.masks:
            mask = masks.masks[name]
            assert torch.equal(new[~mask], old[~mask])  # everything else bit-identical
            assert bool((new[mask] == 0).all())
            zeroed += int(mask.sum())
        else:
            assert torch.equal(new, old), key
    assert zeroed == masks.total
    # Masks that do not fit are refused before anything changes.
    name = next(iter(masks.masks))
    with pytest.raises(IncompatibleModelError):
        M.apply_masks(fresh_model.unet, {name: torch.ones(3, 3, dtype=torch.bool)})


def test_saved_checkpoint_loads_with_artshield_and_diffusers(fresh_model, tmp_path):
    from diffusers import StableDiffusionPipeline

    from artshield.models import load

    masks = M.locate_memorization(fresh_model, ["a painting of a circle"], ratio=0.1, timesteps=2, sampler=FAST)
    M.apply_masks(fresh_model.unet, masks)
    out = tmp_path / "pruned"
    M.save_pruned_checkpoint(fresh_model, masks, out, report={"hello": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]  # no temporary folder left behind
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((out / M.MASK_STATS_FILE).read_text())["total_selected"] == masks.total
    assert json.loads((out / M.REPORT_FILE).read_text()) == {"hello": 1}
    reloaded_masks = M.MemorizationMasks.load(out / M.MASKS_FILE)
    assert reloaded_masks.masks.keys() == masks.masks.keys()
    assert all(torch.equal(reloaded_masks.masks[k], masks.masks[k]) for k in masks.masks)
    assert reloaded_masks.config["ratio"] == 0.1

    model2 = load(str(out), device="cpu", dtype="fp32")
    for (k, a), b in zip(fresh_model.unet.state_dict().items(), model2.unet.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    pipe = StableDiffusionPipeline.from_pretrained(str(out), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a painting of a circle", num_inference_steps=2, height=32, width=32, output_type="pt").images
    assert image.shape == (1, 3, 32, 32)

    with pytest.raises(ImageWriteError, match="already exists"):
        M.save_pruned_checkpoint(fresh_model, masks, out)
    M.save_pruned_checkpoint(fresh_model, masks, out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]


# ------------------------------------------------------------------------------------------------ CLI
def run_cli(argv, capsys):
    try:
        rc = memorization_main([str(a) for a in argv])
    except SystemExit as exc:  # argparse refuses bad flags at parse time
        rc = exc.code
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_cli_user_errors_are_one_line(tiny_model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a painting of a circle\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    cases = [
        (["detect", "--model", tmp_path / "no-such-model", "--prompts", prompts], "no such file or folder"),
        (["detect", "--model", tiny_model_dir, "--prompts", empty], "holds no prompts"),
        (["detect", "--model", tiny_model_dir, "--prompts", tmp_path / "missing.txt"], "no such file"),
        (["detect", "--model", tiny_model_dir], "--prompts"),
        (["prune", "--model", tiny_model_dir, "--prompts", prompts], "--output"),
        (["prune", "--model", tiny_model_dir, "--prompts", prompts, "-o", tmp_path / "o", "--layers", "fc9"], "fc9"),
        (["detect", "--model", tiny_model_dir, "--prompts", prompts, "--seeds", "a,b"], "--seeds"),
        (["detect", "--model", tiny_model_dir, "--prompts", prompts, "--guidance-scale", "1"], "--guidance-scale"),
    ]
    for argv, needle in cases:
        rc, out, err = run_cli(argv, capsys)
        assert rc == 2, argv
        lines = err.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "o").exists()


def test_cli_detect_end_to_end(tiny_model_dir, tmp_path, capsys):
    train = tmp_path / "train"
    generator = torch.Generator().manual_seed(0)
    for i in range(3):
        write_png(train / f"img{i}.png", torch.rand(3, 32, 32, generator=generator))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a painting of a circle\na photo of a house\n")
    references = tmp_path / "reference.txt"
    references.write_text("a photo of a circle\n\n")
    report = tmp_path / "detect.json"
    gens = tmp_path / "gens"
    rc, out, err = run_cli(
        ["detect", "--model", tiny_model_dir, "--prompts", prompts, "--reference-prompts", references,
         "--training-images", train, "--report", report, "--save-generations", gens, *CLI_FAST], capsys,
    )
    assert rc == 0, err
    data = json.loads(report.read_text())
    assert [p["prompt"] for p in data["prompts"]] == ["a painting of a circle", "a photo of a house"]
    assert data["threshold"]["source"].startswith("calibrated") and "auc" in data
    near = data["prompts"][0]["near_duplicate"]
    assert Path(near["matched"]).parent == train and len(near["per_seed"]) == 2
    assert len(list(gens.glob("*.png"))) == 4 and "AUC" in out
    # Reruns refuse to clobber the report without --overwrite.
    rc, _, err = run_cli(["detect", "--model", tiny_model_dir, "--prompts", prompts, "--report", report, *CLI_FAST], capsys)
    assert rc != 0 and "already exists" in err


def test_cli_prune_end_to_end_through_the_umbrella_command(tiny_model_dir, tmp_path, capsys):
    from artshield.cli import main as artshield_main
    from artshield.models import load

    prompts = tmp_path / "memorized.txt"
    prompts.write_text("a painting of a circle\n")
    utility = tmp_path / "utility.txt"
    utility.write_text("a photo of a house\n")
    out = tmp_path / "pruned"
    rc = artshield_main(
        ["memorization", "prune", "--model", str(tiny_model_dir), "--prompts", str(prompts), "-o", str(out),
         "--utility-prompts", str(utility), "--ratio", "0.1", "--timesteps", "3", "--perturbations", "0.05",
         "--report", str(tmp_path / "r.json"), "--save-dtype", "fp16", *CLI_FAST]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = json.loads((out / M.REPORT_FILE).read_text())
    assert report == json.loads((tmp_path / "r.json").read_text())
    assert report["pruned_weights"] == report["location"]["total_selected"] > 0
    assert set(report["memorization"]) == {"before", "after"}
    assert 0.0 < report["utility"]["after"]["ssim_to_original"] <= 1.0
    assert [r["magnitude"] for r in report["robustness"]["after"]] == [0.05]
    assert "checkpoint:" in captured.out
    from safetensors.torch import load_file

    saved = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(t.dtype == torch.float16 for t in saved.values())
    masks = M.MemorizationMasks.load(out / M.MASKS_FILE)
    assert all(bool((saved[f"{name}.weight"][mask] == 0).all()) for name, mask in masks.masks.items())
    load(str(out), device="cpu", dtype="fp32")


def test_module_entry_point_runs():
    result = subprocess.run(
        [sys.executable, "-m", "artshield.finetune.memorization_cli", "--version"], capture_output=True, text=True,
        timeout=120,
    )
    assert result.returncode == 0 and result.stdout.startswith("artshield ")


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_epsilon_difference_is_the_difference_of_the_noise_estimates(kind, tiny_model):
    """Wen et al.'s metric is in ε units whatever the model predicts: converting a difference of two UNet
    outputs at one x_t equals the difference of the two outputs' ε estimates."""
    import dataclasses

    scheduler = tiny_model.scheduler.__class__.from_config(tiny_model.scheduler.config, prediction_type=kind)
    model = dataclasses.replace(tiny_model, scheduler=scheduler)
    generator = torch.Generator().manual_seed(0)
    noisy, text, uncond = (torch.randn(2, 4, 4, 4, generator=generator) for _ in range(3))
    t = 600
    alpha_bar = model.alphas_cumprod_at(t, noisy)
    expected = model.noise_and_sample(text, noisy, alpha_bar)[0] - model.noise_and_sample(uncond, noisy, alpha_bar)[0]
    got = M.epsilon_difference(model, text - uncond, torch.tensor([t]))
    assert torch.allclose(got, expected, atol=1e-5)
    if kind != "epsilon":
        assert not torch.allclose(got, text - uncond)  # a real conversion happened
