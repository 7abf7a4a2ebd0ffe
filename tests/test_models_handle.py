"""The diffusion operations the model handle owns (noise schedule, ε/x₀/v conversions, the DDIM sampler,
the inpainting condition) and its copies (``with_lora``, ``dataclasses.replace``), on tiny models."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from artshield.errors import DependencyError, IncompatibleModelError, InvalidArgumentError, ModelNotFoundError
from artshield.models import DiffusionModel, load
from tiny_lora import train_lora

PROMPT = "a painting of a circle"


def _load(spec) -> DiffusionModel:
    return load(str(spec), device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def tiny_lora(tiny_model_dir, tmp_path_factory):
    return train_lora(tiny_model_dir, tmp_path_factory.mktemp("tiny-lora"), resolution=32)


# ============================================================================================ schedule
@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_noise_and_sample_inverts_the_training_target(tiny_model_dir, tmp_path, kind):
    folder = shutil.copytree(tiny_model_dir, tmp_path / kind)
    config = folder / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "prediction_type": kind}))
    model = _load(folder)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 4, 4, generator=g), torch.randn(3, 4, 4, 4, generator=g)
    t = torch.tensor([1, 500, 998])
    alpha = model.alphas_cumprod_at(t, x0)
    assert alpha.shape == (3, 1, 1, 1)
    torch.testing.assert_close(alpha.flatten(), model.scheduler.alphas_cumprod[t].float())
    noisy = model.add_noise(x0, eps, t)
    got_eps, got_x0 = model.noise_and_sample(model.training_target(x0, eps, t), noisy, alpha)
    torch.testing.assert_close(got_eps, eps, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(got_x0, x0, rtol=1e-4, atol=1e-3)
    # One integer timestep gives a 0-d ᾱ that broadcasts over any batch.
    assert model.alphas_cumprod_at(500, x0).dim() == 0


def test_unknown_prediction_type_is_named(tiny_model):
    model = dataclasses.replace(tiny_model)
    model.scheduler = type(tiny_model.scheduler).from_config({**tiny_model.scheduler.config, "prediction_type": "flow"})
    with pytest.raises(InvalidArgumentError, match="flow"):
        model.noise_and_sample(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), torch.tensor(0.5))


def test_ddim_scheduler_is_fresh_and_has_the_training_schedule(tiny_model):
    from diffusers import DDIMScheduler

    first, second = tiny_model.ddim_scheduler(), tiny_model.ddim_scheduler()
    assert isinstance(first, DDIMScheduler) and first is not second
    torch.testing.assert_close(first.alphas_cumprod, tiny_model.scheduler.alphas_cumprod)
    assert first.config.prediction_type == tiny_model.prediction_type
    first.set_timesteps(4)
    assert second.num_inference_steps is None  # setting one sampler's steps leaves the other alone
    assert isinstance(tiny_model.pipeline("text2img").scheduler, DDIMScheduler)


# ============================================================================================ inpainting
def test_inpaint_condition_binarises_and_broadcasts_the_mask(tiny_inpaint_dir):
    model = _load(tiny_inpaint_dir)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0), requires_grad=True)
    soft = torch.zeros(1, 1, 32, 32)
    soft[..., :, 16:] = 0.7  # grey counts as white (repaint), as the pipeline binarises at 0.5
    condition = model.inpaint_condition(images, soft, torch.Generator().manual_seed(1))
    assert condition.shape == (2, 5, 4, 4)
    hard = (soft >= 0.5).float().expand(2, -1, -1, -1)
    again = model.inpaint_condition(images, hard, torch.Generator().manual_seed(1))
    torch.testing.assert_close(condition, again, rtol=0, atol=0)
    assert set(condition[:, 0].unique().tolist()) == {0.0, 1.0}
    expected = model.encode(DiffusionModel.masked_images(images, hard), "sample", torch.Generator().manual_seed(1))
    torch.testing.assert_close(condition[:, 1:], expected, rtol=0, atol=0)
    condition[:, 1:].sum().backward()  # differentiable with respect to the images (what protections need)
    assert images.grad is not None and images.grad[..., :16].abs().sum() > 0
    assert images.grad[..., 16:].abs().sum() == 0  # the repainted half is grey whatever the image


# ============================================================================================ copies
def test_copies_get_their_own_prompt_cache(tiny_model):
    copy = dataclasses.replace(tiny_model)
    assert copy._prompt_cache is not tiny_model._prompt_cache
    copy.embed_prompt("only in the copy")
    assert "only in the copy" not in tiny_model._prompt_cache


def test_with_lora_applies_the_adapters_to_a_copy_with_its_own_prompt_cache(tiny_model_dir, tiny_lora):
    base = _load(tiny_model_dir)
    before = {k: v.clone() for k, v in base.unet.state_dict().items()}
    base_embeds = base.embed_prompt(PROMPT)
    lora = base.with_lora(tiny_lora)
    assert lora.unet is not base.unet and lora.text_encoder is not base.text_encoder  # --train_text_encoder LoRA
    assert lora.vae is base.vae and lora.tokenizer is base.tokenizer
    assert "LoRA" in lora.source
    # The copy starts with an empty cache: it embeds with its own (adapted) text encoder ...
    assert lora._prompt_cache == {}
    lora_embeds = lora.embed_prompt(PROMPT)
    assert not torch.allclose(lora_embeds, base_embeds)
    # ... and what each embeds stays in its own cache, both ways.
    lora.embed_prompt("only the copy saw this")
    base.embed_prompt("only the original saw this")
    assert "only the copy saw this" not in base._prompt_cache
    assert "only the original saw this" not in lora._prompt_cache
    torch.testing.assert_close(base.embed_prompt(PROMPT), base_embeds, rtol=0, atol=0)
    # The original's weights are untouched, and its UNet has no adapters.
    after = base.unet.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    z, t = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([500])
    assert not torch.allclose(lora.predict_noise(z, t, base_embeds), base.predict_noise(z, t, base_embeds))


def test_with_lora_matches_stock_diffusers_load_lora_weights(tiny_model_dir, tiny_lora):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_model_dir))
    pipe.load_lora_weights(str(tiny_lora))
    model = _load(tiny_model_dir).with_lora(tiny_lora / "pytorch_lora_weights.safetensors")  # a file works too
    tokens = model.tokenizer([PROMPT], padding="max_length", max_length=model.tokenizer.model_max_length,
                             return_tensors="pt").input_ids
    with torch.no_grad():
        stock_embeds = pipe.text_encoder(tokens)[0]
        torch.testing.assert_close(model.embed_prompt(PROMPT), stock_embeds, rtol=0, atol=1e-6)
        z, t = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([300])
        stock = pipe.unet(z, t, encoder_hidden_states=stock_embeds).sample
    torch.testing.assert_close(model.predict_noise(z, t, stock_embeds), stock, rtol=0, atol=1e-5)


def test_with_lora_errors_are_named(tiny_model, tmp_path, tiny_model_dir, monkeypatch):
    with pytest.raises(ModelNotFoundError, match="no-such-lora"):
        tiny_model.with_lora(tmp_path / "no-such-lora")
    not_lora = tiny_model_dir / "unet" / "diffusion_pytorch_model.safetensors"
    with pytest.raises(IncompatibleModelError, match="LoRA"):
        tiny_model.with_lora(not_lora)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(IncompatibleModelError, match=str(empty)):
        tiny_model.with_lora(empty)

    import artshield.compat as compat

    def too_old(*, text_encoder=True):
        raise DependencyError("diffusers needs peft >= 99")

    monkeypatch.setattr(compat, "check_lora_stack", too_old)
    with pytest.raises(DependencyError, match="peft"):
        tiny_model.with_lora(empty)
