"""Purification attacks (artshield.evaluate.purify): the calling contract, each attack's defining property,
IMPRESS on the engine, folders and the command line. Tiny random-weight models; a few seconds in all."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from artshield.errors import ImageReadError, InvalidArgumentError, ModelNotFoundError, OutputWriteError
from artshield.evaluate import purify as P
from artshield.evaluate import purify_cli
from artshield.evaluate import purify_diffusion as PD
from artshield.evaluate import purify_model as PM
from artshield.evaluate.purify import (
    DiffPure,
    GaussianNoising,
    Impress,
    JpegCompression,
    NoisyUpscaling,
    get_purification,
    parse_spec,
    purify_folder,
)
from artshield.evaluate.purify_runner import output_names

SIMPLE_SPECS = ["none", "jpeg75", "resize0.5", "noise0.05", "noise0.1", "blur"]
MODEL_SPECS = ["noisy-upscale:steps=2", "diffpure:steps=2", "gridpure:steps=1:iterations=2", "impress:steps=3"]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    # 40x48: not a multiple of the tiny model's pixel multiple (16), so the padding paths run too.
    return torch.rand(2, 3, 40, 48, generator=gen(0))


# --------------------------------------------------------------------------------------------------
# The contract every purification keeps
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SIMPLE_SPECS + MODEL_SPECS)
def test_contract_shape_range_dtype_determinism(spec, tiny_model, images):
    purification = get_purification(spec, model=tiny_model)
    out = purification(images, gen(1))
    assert out.shape == images.shape and out.dtype == images.dtype and out.device == images.device
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.equal(out, purification(images, gen(1))), "same seed, same output"
    assert torch.equal(purification(images), purification(images)), "no generator: a fixed default seed"
    other = purification(images, gen(2))
    assert torch.equal(out, other) != purification.random, "random ones vary with the seed, the others do not"
    # Greyscale, half precision, one image: shape and dtype kept.
    grey = images[:1, :1].half()
    grey_out = purification(grey, gen(1))
    assert grey_out.shape == grey.shape and grey_out.dtype == torch.float16
    # Settings are JSON and the spec rebuilds the same purification.
    json.dumps(purification.config)
    assert get_purification(purification.spec, model=tiny_model).config == purification.config


def test_inputs_are_checked():
    none = get_purification("none")
    for bad in (torch.rand(3, 8, 8), torch.rand(1, 2, 8, 8), torch.rand(1, 3, 8, 8) + 1.5, torch.zeros(1, 3, 4, 4, dtype=torch.uint8)):
        with pytest.raises(InvalidArgumentError):
            none(bad)
    with pytest.raises(InvalidArgumentError, match="generator"):
        none(torch.rand(1, 3, 4, 4), generator=3)


# --------------------------------------------------------------------------------------------------
# Image-processing purifications
# --------------------------------------------------------------------------------------------------


def _pillow_round_trip(array: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as reopened:
        return np.asarray(reopened, dtype=np.uint8)


@pytest.mark.parametrize("channels", [3, 1])
def test_jpeg_is_pillows_round_trip(channels):
    pixels = torch.randint(0, 256, (2, channels, 24, 40), generator=gen(5), dtype=torch.uint8)
    out = get_purification("jpeg:quality=60")(pixels.float() / 255)
    for index in range(2):
        array = pixels[index].permute(1, 2, 0).numpy()
        expected = _pillow_round_trip(array[..., 0] if channels == 1 else array, 60)
        got = (out[index] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(got[..., 0] if channels == 1 else got, expected)


@pytest.mark.parametrize("sigma", [0.05, 0.1])
def test_noise_has_the_stated_sigma(sigma):
    grey = torch.full((4, 3, 64, 64), 0.5)
    diff = get_purification(f"noise{sigma}")(grey, gen(3)) - grey
    assert abs(float(diff.std()) - sigma) < 0.02 * sigma
    assert abs(float(diff.mean())) < 4 * sigma / diff.numel() ** 0.5
    assert get_purification(f"noise{sigma}").random


def test_resize_removes_fine_detail_and_keeps_flat_areas():
    checker = ((torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2).float().expand(1, 3, 32, 32)
    assert float(get_purification("resize0.5")(checker).std()) < 0.1 * float(checker.std())
    flat = torch.full((1, 3, 30, 22), 0.3)
    torch.testing.assert_close(get_purification("resize")(flat), flat)
    assert torch.equal(get_purification("resize:factor=1")(checker), checker)


# --------------------------------------------------------------------------------------------------
# Spec grammar
# --------------------------------------------------------------------------------------------------


def test_spec_shorthands_and_parameters():
    assert parse_spec("jpeg75") == (JpegCompression, {"quality": 75})
    assert parse_spec(" JPEG:quality=50 ") == (JpegCompression, {"quality": 50})
    assert parse_spec("resize0.5")[1] == {"factor": 0.5}
    assert parse_spec("noise0.1") == (GaussianNoising, {"sigma": 0.1})
    assert parse_spec("noisy-upscaling")[0] is NoisyUpscaling
    assert parse_spec("diffpure:t_star=0.2:steps=20") == (DiffPure, {"t_star": 0.2, "steps": 20})
    assert parse_spec("gridpure:grid=false")[1] == {"grid": False}
    upscaler = "noisy-upscale:upscaler=stabilityai/stable-diffusion-x4-upscaler:sigma=0.1"
    assert parse_spec(upscaler)[1] == {"upscaler": "stabilityai/stable-diffusion-x4-upscaler", "sigma": 0.1}
    assert parse_spec("impress300")[1] == {"steps": 300}
    assert {"none", "jpeg", "resize", "noise", "blur", "noisy-upscale", "diffpure", "gridpure", "impress"} <= set(P.PURIFICATIONS)


@pytest.mark.parametrize(
    "spec",
    ["bogus", "jpeg500", "jpeg:quality=abc", "jpeg:foo=1", "noise:sigma=0.1:sigma=0.2", "noise0.1:sigma=0.2",
     "none5", "resize:factor", "resize0", "noise2", "diffpure"],
)  # fmt: skip
def test_bad_specs_name_the_spec(spec):
    with pytest.raises(InvalidArgumentError) as info:
        get_purification(spec)  # no model: "diffpure" must say it needs one
    assert repr(spec) in str(info.value)


@pytest.mark.parametrize(
    ("spec", "setting"),
    [("jpeg0", "quality"), ("jpeg101", "quality"), ("noise:sigma=-1", "sigma"), ("diffpure:t_star=2", "t_star"),
     ("diffpure:t_star=1", "t_star"), ("gridpure:gamma=1", "gamma"), ("impress:steps=0", "steps"),
     ("impress:perceptual=vibes", "perceptual"), ("noisy-upscale:strength=1", "strength"),
     ("noisy-upscale:upscaler=x4:noise_level=-1", "noise_level"), ("diffpure:prompt=1", "prompt")],
)  # fmt: skip
def test_check_spec_refuses_bad_values_without_a_model(spec, setting, monkeypatch):
    import artshield.models

    monkeypatch.setattr(artshield.models, "load", lambda *a, **k: pytest.fail("check_spec loaded a model"))
    with pytest.raises(InvalidArgumentError, match=setting) as info:
        P.check_spec(spec)
    assert repr(spec) in str(info.value)
    with pytest.raises(InvalidArgumentError, match=setting):
        get_purification(spec, model="demo")  # a model given by name is not loaded for a bad spec


def test_check_spec_accepts_what_builds():
    for spec in [*SIMPLE_SPECS, *MODEL_SPECS, "diffpure:t_star=0.2:patch=32", "noisy-upscale:upscaler=x4"]:
        cls, settings = P.check_spec(spec)
        assert (cls, settings) == parse_spec(spec)


# --------------------------------------------------------------------------------------------------
# Diffusion-model purifications
# --------------------------------------------------------------------------------------------------


def test_ddim_timesteps():
    assert PD.ddim_timesteps(100, 10) == [100, 90, 80, 70, 60, 50, 40, 30, 20, 10]
    assert PD.ddim_timesteps(5, 10) == [5, 4, 3, 2, 1]


@pytest.mark.parametrize("size", [(40, 48), (100, 70), (20, 20), (32, 32)])
def test_grid_covers_the_image_and_merges_exactly(size):
    height, width = size
    boxes = PD.grid_boxes(height, width, 32)
    covered = torch.zeros(height, width)
    for top, left, h, w in boxes:
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
        covered[top : top + h, left : left + w] += 1
    assert bool((covered > 0).all())
    x = torch.rand(2, 3, height, width, generator=gen(1))
    calls = []

    def shift(region):
        calls.append(region.shape)
        return region + 0.25

    torch.testing.assert_close(PD.grid_purify(shift, x, 32), x + 0.25)
    assert len(calls) == PD.grid_passes(height, width, 32)


def test_diffpure_defaults_and_gridpure_preset(tiny_model):
    diffpure = get_purification("diffpure", model=tiny_model)
    assert (diffpure.t_star, diffpure.grid, diffpure.iterations, diffpure.t_start) == (0.1, False, 1, 100)
    gridpure = get_purification("gridpure", model=tiny_model)
    assert (gridpure.t_star, gridpure.grid, gridpure.iterations, gridpure.gamma) == (0.01, True, 20, 0.1)
    assert gridpure.patch == tiny_model.native_resolution
    with pytest.raises(InvalidArgumentError):
        DiffPure(tiny_model, t_star=1.0)


def test_diffpure_rejects_inpainting_models(tiny_inpaint_dir):
    from artshield.models import load

    with pytest.raises(InvalidArgumentError, match="inpainting"):
        DiffPure(load(str(tiny_inpaint_dir), device="cpu", dtype="fp32"))


def test_noisy_upscale_needs_a_model_or_an_upscaler():
    with pytest.raises(InvalidArgumentError, match="upscaler"):
        NoisyUpscaling()


def test_missing_upscaler_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as info:
        NoisyUpscaling(upscaler="artshield-tests/no-such-upscaler", device="cpu")
    message = str(info.value)
    assert "\n" not in message and "artshield-tests/no-such-upscaler" in message and "fallback" in message


@pytest.fixture(scope="module")
def tiny_upscaler_dir(tmp_path_factory, tiny_tokenizer):
    """A random-weight StableDiffusionUpscalePipeline in the diffusers folder layout (the x4 upscaler's shape)."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableDiffusionUpscalePipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=7, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4, num_class_embeds=351,
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4, norm_num_groups=4, layers_per_block=1, scaling_factor=0.08333,
    )  # fmt: skip
    text = CLIPTextModel(CLIPTextConfig(
        hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1, vocab_size=len(tiny_tokenizer),
        max_position_embeddings=16, bos_token_id=tiny_tokenizer.bos_token_id, eos_token_id=tiny_tokenizer.eos_token_id,
        pad_token_id=tiny_tokenizer.pad_token_id,
    ))  # fmt: skip
    pipe = StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=text, tokenizer=tiny_tokenizer, unet=unet, low_res_scheduler=DDPMScheduler(),
        scheduler=DDIMScheduler(prediction_type="v_prediction"), max_noise_level=350,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("tiny-x4-upscaler")
    pipe.save_pretrained(str(folder))
    return folder


def test_noisy_upscale_through_an_x4_upscaler_pipeline(tiny_upscaler_dir):
    purification = get_purification(f"noisy-upscale:upscaler={tiny_upscaler_dir}:upscaler_steps=2", device="cpu")
    assert purification.config["upscaler"] == str(tiny_upscaler_dir) and purification.noise_level == 320
    x = torch.rand(1, 3, 20, 28, generator=gen(4))  # not a multiple of 8: padded, upscaled x4, resized back
    out = purification(x, gen(1))
    assert out.shape == x.shape and torch.equal(out, purification(x, gen(1)))
    assert not torch.equal(out, purification(x, gen(2)))
    with pytest.raises(InvalidArgumentError, match="noise_level"):
        get_purification(f"noisy-upscale:upscaler={tiny_upscaler_dir}:noise_level=400", device="cpu")


# --------------------------------------------------------------------------------------------------
# IMPRESS
# --------------------------------------------------------------------------------------------------


def test_impress_lowers_its_objective(tiny_model, images):
    impress = Impress(tiny_model, steps=15, perceptual="ssim")
    out = impress(images, gen(0))
    assert bool((impress.loss(out, images) < impress.loss(images, images)).all())
    assert impress.last_result.steps_run == 15
    assert impress.last_result.losses[-1] < impress.last_result.losses[0]


def test_impress_runs_on_the_engine(tiny_model, images, monkeypatch):
    seen, inside, outside = [], [0], [0]

    class Recording(PM.Perturber):
        def run(self, objective, images, **kwargs):
            seen.append(self.config)
            inside[0] += 1
            try:
                return super().run(objective, images, **kwargs)
            finally:
                inside[0] -= 1

    def counted(real):
        def wrapper(*args, **kwargs):
            if not inside[0]:
                outside[0] += 1
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(PM, "Perturber", Recording)
    monkeypatch.setattr(torch.autograd, "grad", counted(torch.autograd.grad))
    monkeypatch.setattr(torch.Tensor, "backward", counted(torch.Tensor.backward))
    Impress(tiny_model, steps=2)(images[:1])
    (config,) = seen
    assert config.minimize and config.step_rule == "adam" and config.bounds == (0.0, 1.0)
    assert config.eps >= 1.0 and config.norm == "linf"  # a budget that never binds
    assert (config.steps, config.step_size, config.schedule) == (2, 0.005, "cosine")
    assert outside[0] == 0  # every gradient was taken by the engine: no hand-written loop beside it


def test_impress_defaults_and_lpips_fallback(tiny_model, monkeypatch, caplog):
    from artshield.metrics import lpips_unavailable_reason

    impress = Impress(tiny_model)
    assert (impress.steps, impress.lr, impress.alpha, impress.delta, impress.start_noise) == (Impress.CPU_STEPS, 0.005, 0.1, 0.1, 0.05)
    if lpips_unavailable_reason("vgg") is None:
        pytest.skip("LPIPS weights are present here; the fallback is not used")
    monkeypatch.setattr(PM, "_LPIPS_FALLBACK_LOGGED", False)
    with caplog.at_level("WARNING", logger="artshield.evaluate.purify_model"):
        first, second = Impress(tiny_model, steps=1), Impress(tiny_model, steps=1)
    assert first.perceptual == second.perceptual == "ssim" and first.config["perceptual"] == "ssim"
    assert len([r for r in caplog.records if r.name == "artshield.evaluate.purify_model"]) == 1
    with pytest.raises(InvalidArgumentError, match="LPIPS"):
        Impress(tiny_model, perceptual="lpips")


# --------------------------------------------------------------------------------------------------
# Folders and the command line
# --------------------------------------------------------------------------------------------------


@pytest.fixture()
def folder(tmp_path) -> Path:
    source = tmp_path / "in"
    source.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(source / "a.png")
    Image.fromarray(rng.integers(0, 256, (36, 24), dtype=np.uint8)).save(source / "b.jpg", quality=95)
    Image.fromarray(rng.integers(0, 256, (16, 16, 4), dtype=np.uint8), "RGBA").save(source / "c.png")
    (source / "notes.txt").write_text("not an image")
    (source / "broken.png").write_bytes(b"\x89PNG garbage")
    return source


def test_purify_folder_end_to_end(folder, tmp_path):
    out = tmp_path / "out"
    report = purify_folder("noise0.05", folder, out, seed=3)
    json.dumps(report)
    assert [Path(e["output"]).name for e in report["images"]] == ["a.png", "b.png", "c.png"]
    skipped = {Path(s["input"]).name: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {"notes.txt", "broken.png"} and all(skipped.values())
    assert report["failed"] == 0 and report["purification"]["name"] == "noise" and report["seed"] == 3
    with Image.open(out / "a.png") as a, Image.open(out / "b.png") as b, Image.open(out / "c.png") as c:
        assert (a.size, a.mode) == ((40, 30), "RGB") and (b.size, b.mode) == ((24, 36), "L")
        assert c.mode == "RGBA" and P.METADATA_KEY in a.info and "artshield" not in a.info
        first = np.asarray(a).copy()
    assert report["images"][0]["psnr_db"] < 40  # σ 0.05 noise is far from lossless
    purify_folder("noise0.05", folder, tmp_path / "again", seed=3)
    with Image.open(tmp_path / "again" / "a.png") as again:
        np.testing.assert_array_equal(np.asarray(again), first)
    purify_folder("noise0.05", folder, tmp_path / "other", seed=4)
    with Image.open(tmp_path / "other" / "a.png") as other:
        assert not np.array_equal(np.asarray(other), first)
    with pytest.raises(InvalidArgumentError, match="input folder"):
        purify_folder("none", folder, folder)
    with pytest.raises(ImageReadError):
        purify_folder("none", tmp_path / "missing", out)


def test_cli(folder, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "out"
    assert purify_cli.main(["jpeg75", str(folder), str(out), "--seed", "1", "-q"]) == 0
    report = json.loads((out / "purify_report.json").read_text())
    assert len(report["images"]) == 3 and report["spec"].startswith("jpeg:quality=75")
    capsys.readouterr()
    for argv in (["bogus", str(folder), str(out)], ["noise0.1", str(tmp_path / "missing"), str(out)]):
        assert purify_cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "error:" in err
    model_out = tmp_path / "model-out"
    argv = ["diffpure:steps=1", str(folder), str(model_out), "--model", str(tiny_model_dir), "--device", "cpu", "-q"]
    assert purify_cli.main(argv) == 0
    assert sorted(p.name for p in model_out.glob("*.png")) == ["a.png", "b.png", "c.png"]


def test_diffpure_eta_adds_fresh_noise_per_step(tiny_model, images):
    deterministic = get_purification("diffpure:steps=3", model=tiny_model)(images, gen(1))
    stochastic = get_purification("diffpure:steps=3:eta=1", model=tiny_model)
    out = stochastic(images, gen(1))
    assert torch.equal(out, stochastic(images, gen(1))) and not torch.equal(out, deterministic)


def test_purify_folder_records_failures_and_goes_on(tmp_path, tiny_model):
    source = tmp_path / "in"
    source.mkdir()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(source / "tiny.png")  # below SSIM's 11-pixel window
    Image.new("RGB", (16, 16), (10, 20, 30)).save(source / "ok.png")
    report = purify_folder("impress:steps=1:perceptual=ssim", source, tmp_path / "out", model=tiny_model)
    assert report["failed"] == 1 and [Path(e["input"]).name for e in report["images"]] == ["ok.png"]
    (failure,) = report["skipped"]
    assert failure["reason"].startswith("error:") and "SSIM" in failure["reason"]


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_every_prediction_type_recovers_noise_and_sample(kind):
    from types import SimpleNamespace

    from artshield.models import DiffusionModel

    x0, eps = torch.randn(2, 4, 3, 3, generator=gen(1)), torch.randn(2, 4, 3, 3, generator=gen(2))
    alpha = torch.tensor(0.7)
    z = alpha.sqrt() * x0 + (1 - alpha).sqrt() * eps
    output = {"epsilon": eps, "sample": x0, "v_prediction": alpha.sqrt() * eps - (1 - alpha).sqrt() * x0}[kind]
    got_eps, got_x0 = DiffusionModel.noise_and_sample(SimpleNamespace(prediction_type=kind, source="fake"), output, z, alpha)
    torch.testing.assert_close(got_eps, eps)
    torch.testing.assert_close(got_x0, x0)


def test_output_names_never_collide():
    sources = [Path(n) for n in ["p.jpg", "p.png", "p_png.jpg", "P.webp", "q.png"]]
    names = output_names(sources)
    assert len({n.casefold() for n in names}) == len(names) == 5
    assert names[0] == "p.png" and names[-1] == "q.png" and all(n.endswith(".png") for n in names)


def test_cli_skips_unreadable_images_with_a_line_and_goes_on(folder, tmp_path, capsys):
    # A PNG whose header reads but whose pixels are cut off: listed as an image, fails only when decoded.
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    (folder / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    capsys.readouterr()
    assert purify_cli.main(["jpeg75", str(folder), str(tmp_path / "out"), "-q"]) == 0
    err = capsys.readouterr().err
    skipped = [line for line in err.splitlines() if line.startswith("skip ")]
    assert {Path(line[5:].split(":")[0]).name for line in skipped} == {"broken.png", "notes.txt", "truncated.png"}
    assert len(skipped) == len(err.splitlines())  # one line each, nothing else
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["a.png", "b.png", "c.png"]
    report = json.loads((tmp_path / "out" / "purify_report.json").read_text())
    assert len(report["images"]) == 3 and len(report["skipped"]) == 3


def test_purify_folder_refuses_an_output_that_is_an_input_before_any_work(folder, tmp_path):
    (tmp_path / "link").symlink_to(folder)
    with pytest.raises(InvalidArgumentError, match="input folder"):
        purify_folder("none", folder, tmp_path / "link")
    with pytest.raises(OutputWriteError, match="is a file"):
        purify_folder("none", folder, folder / "a.png")
    assert not (tmp_path / "out").exists()
