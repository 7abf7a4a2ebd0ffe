"""The demo model's inpainting variant: the training script (2 steps on the tiny model), its initialisation
and condition, ``load("demo-inpaint")`` and DiffusionGuard on the shipped weights."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import artshield.models.demo as demo_package
from artshield.engine import norm_of
from artshield.errors import ModelNotFoundError
from artshield.models import load
from artshield.models.demo import DEMO_WEIGHTS
from artshield.models.demo.train_inpaint import (
    INFO_FILE,
    UNET_FOLDER,
    inpainting_unet,
    main,
    random_mask,
)
from artshield.protect import DiffusionGuard


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """The script run for 2 steps on the tiny model; returns its output folder."""
    out = tmp_path_factory.mktemp("inpaint-out")
    assert main(["--output-dir", str(out), "--base", str(tiny_model_dir), "--tiny", "--steps", "2"]) == 0
    return out


def test_conv_in_is_widened_with_zeros_and_the_rest_copied(tiny_model):
    base = tiny_model.unet
    unet = inpainting_unet(base)
    assert unet.config.in_channels == 9 and base.config.in_channels == 4
    weight = unet.conv_in.weight
    assert torch.equal(weight[:, :4], base.conv_in.weight) and not weight[:, 4:].any()
    base_state = base.state_dict()
    for name, tensor in unet.state_dict().items():
        if name != "conv_in.weight":
            assert torch.equal(tensor, base_state[name]), name
    # So before training it is the base model, whatever the condition.
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 5, 4, 4, generator=g)
    embeds = torch.randn(2, 16, base.config.cross_attention_dim, generator=g)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        assert torch.allclose(unet(torch.cat([x, cond], 1), t, embeds).sample, base(x, t, embeds).sample, atol=1e-5)


def test_condition_is_built_as_the_inpainting_pipeline_builds_it(tiny_inpaint_dir):
    model = load(str(tiny_inpaint_dir), device="cpu", dtype="fp32")
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    mask = torch.from_numpy(np.stack([random_mask(32, np.random.default_rng(s)) for s in (0, 1)]))[:, None]
    ours = model.inpaint_condition(images, mask, torch.Generator().manual_seed(5))
    pipe = model.pipeline("inpaint")
    masked = (images * 2 - 1) * (mask < 0.5)  # StableDiffusionInpaintPipeline.__call__
    latent_mask, latents = pipe.prepare_mask_latents(
        mask, masked, 2, 32, 32, torch.float32, torch.device("cpu"), torch.Generator().manual_seed(5), False
    )
    assert torch.equal(ours[:, :1], latent_mask) and set(latent_mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(ours[:, 1:], latents, atol=1e-5)


def test_script_runs_two_steps_and_writes_a_loadable_unet(trained, tiny_model_dir, tmp_path, monkeypatch):
    assert sorted(p.name for p in trained.iterdir()) == [INFO_FILE, UNET_FOLDER]
    assert sorted(p.name for p in (trained / UNET_FOLDER).iterdir()) == [
        "config.json", "diffusion_pytorch_model.safetensors"
    ]
    info = json.loads((trained / INFO_FILE).read_text())
    assert info["steps"] == 2 and info["seed"] == 0 and len(info["loss"]["curve"]) == 2
    for key in ("zero_init", "trained", "trained_empty_prompt"):
        assert np.isfinite(info["evaluation"][key]["denoising_loss"]["masked_region"])
        assert np.isfinite(info["evaluation"][key]["psnr_masked_region_db"])
    assert info["cpu_seconds"] > 0 and info["size_bytes"] > 0
    # The tiny model with the new UNet: as "demo-inpaint" (demo weights swapped for the tiny model's) ...
    folder = tmp_path / "weights"
    shutil.copytree(tiny_model_dir, folder)
    shutil.copytree(trained / UNET_FOLDER, folder / UNET_FOLDER)
    monkeypatch.setattr(demo_package, "DEMO_WEIGHTS", folder)
    model = load("demo-inpaint", device="cpu", dtype="fp32")
    assert model.is_inpainting and model.source == "demo-inpaint"
    assert model.unet.dtype == torch.float32
    # ... and as a plain diffusers folder whose unet/ is the inpainting UNet.
    shutil.rmtree(folder / "unet")
    (folder / UNET_FOLDER).rename(folder / "unet")
    model = load(str(folder), device="cpu", dtype="fp32")
    assert model.is_inpainting
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = model.pipeline("inpaint")(
        prompt="a circle", image=images, mask_image=torch.ones(1, 1, 32, 32), height=32, width=32,
        num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt",
    ).images
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()


def test_masked_loss_weight_is_recorded_and_changes_the_training(trained, tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    argv = ["--output-dir", str(tmp_path), "--base", str(tiny_model_dir), "--tiny", "--steps", "2"]
    assert main([*argv, "--masked-loss-weight", "4"]) == 0
    info = json.loads((tmp_path / INFO_FILE).read_text())
    assert info["masked_loss_weight"] == 4.0
    assert json.loads((trained / INFO_FILE).read_text())["masked_loss_weight"] == 1.0
    name = "diffusion_pytorch_model.safetensors"
    ours, theirs = load_file(tmp_path / UNET_FOLDER / name), load_file(trained / UNET_FOLDER / name)
    assert max(float((ours[k].float() - theirs[k].float()).abs().max()) for k in ours) > 0


def test_an_interrupted_inpainting_run_resumes_to_the_same_unet(trained, tiny_model_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from artshield.models.demo.training import PhaseCheckpoints

    saved = PhaseCheckpoints.step_done

    def stop_after_step_1(self, step, total, *args):
        saved(self, step, total, *args)
        if step == 1:
            raise KeyboardInterrupt

    argv = ["--output-dir", str(tmp_path), "--base", str(tiny_model_dir), "--tiny", "--steps", "2",
            "--checkpoint-every", "1"]
    monkeypatch.setattr(PhaseCheckpoints, "step_done", stop_after_step_1)
    with pytest.raises(KeyboardInterrupt):
        from artshield.models.demo.train_inpaint import parse_args, train

        train(parse_args(argv))
    assert (tmp_path / f"{UNET_FOLDER}.partial" / "inpaint.pt").is_file()
    monkeypatch.setattr(PhaseCheckpoints, "step_done", saved)
    assert main(argv) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [INFO_FILE, UNET_FOLDER]
    name = "diffusion_pytorch_model.safetensors"
    ours, theirs = load_file(tmp_path / UNET_FOLDER / name), load_file(trained / UNET_FOLDER / name)
    assert max(float((ours[k].float() - theirs[k].float()).abs().max()) for k in ours) < 1e-6


def test_missing_inpainting_unet_says_how_to_train_it(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(demo_package, "DEMO_WEIGHTS", tiny_model_dir)  # a model folder without unet_inpaint
    with pytest.raises(ModelNotFoundError, match=r"train_inpaint --output-dir"):
        load("demo-inpaint", device="cpu")
    with pytest.raises(ModelNotFoundError, match="'demo-inpaint'"):
        load("no-such-model", device="cpu")


def test_shipped_demo_inpaint_shares_the_demo_components():
    model, demo = load("demo-inpaint", device="cpu"), load("demo", device="cpu")
    assert model.is_inpainting and not demo.is_inpainting and model.source == "demo-inpaint"
    assert model.native_resolution == demo.native_resolution == 128
    for a, b in ((model.vae, demo.vae), (model.text_encoder, demo.text_encoder)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert model.scheduler.config == demo.scheduler.config
    info = json.loads((DEMO_WEIGHTS / INFO_FILE).read_text())
    evaluation = info["evaluation"]
    # What the shipped run measured: the trained UNet uses its condition.
    assert (evaluation["trained"]["denoising_loss"]["masked_region"]
            < evaluation["zero_init"]["denoising_loss"]["masked_region"])
    assert evaluation["trained"]["psnr_masked_region_db"] > evaluation["zero_init"]["psnr_masked_region_db"]


def test_diffusionguard_on_demo_inpaint_keeps_its_budget_and_beats_random_noise():
    from artshield.models.demo.world import render

    model = load("demo-inpaint", device="cpu")
    images = torch.from_numpy(np.stack([render("ink", "house", (64, 64), seed=7), render("neon", "star", (64, 64))]))
    images = images.permute(0, 3, 1, 2).float() / 255
    method = DiffusionGuard(model, eps=8 / 255, step_size=1 / 255, steps=10, augment=False, seed=0)
    protected = method.protect(images).images
    assert bool((norm_of(protected - images, "linf") <= method.eps + 1e-5).all())
    mask = method.editable_mask(images)
    assert float(((protected - images) * mask).abs().max()) == 0.0
    generator = torch.Generator().manual_seed(1)
    noise = (torch.randint(0, 2, images.shape, generator=generator).float() * 2 - 1) * method.eps
    random = (images + noise * (1 - mask)).clamp(0, 1)
    clean = method.evaluate(images, samples=8)
    gain = float((method.evaluate(protected, samples=8) - clean).mean())
    gain_random = float((method.evaluate(random, samples=8) - clean).mean())
    assert gain > max(0.0, gain_random), (gain, gain_random)
