"""The shipped demo model is an ordinary diffusers folder: stock diffusers loads it with no arguments and
generates, with or without a LoRA written by artshield's trainer (what any diffusers user would type)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from artshield.models import load
from artshield.models.demo import DEMO_WEIGHTS
from artshield.models.demo.world import ARTIST_STYLE, caption
from tiny_lora import train_lora

PROMPT = caption(ARTIST_STYLE, "tree")


def _generate(pipe, **kwargs) -> torch.Tensor:
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt=PROMPT, height=64, width=64, num_inference_steps=2,
                generator=torch.Generator().manual_seed(0), output_type="pt", **kwargs).images


@pytest.fixture(scope="module")
def stock_pipeline():
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(str(DEMO_WEIGHTS))  # no arguments, as a diffusers user types it


@pytest.fixture(scope="module")
def demo_lora(tmp_path_factory):
    return train_lora("demo", tmp_path_factory.mktemp("demo-lora"), resolution=64)


def test_text_encoder_is_stored_so_that_transformers_loads_it_in_fp32():
    config = json.loads((DEMO_WEIGHTS / "text_encoder" / "config.json").read_text())
    assert config["dtype"] == "float32"
    with safe_open(str(DEMO_WEIGHTS / "text_encoder" / "model.safetensors"), "pt") as handle:
        dtypes = {handle.get_slice(key).get_dtype() for key in handle.keys()}
        # fp16-rounded values: the fp32 file holds exactly what the fp16 file held.
        weight = handle.get_tensor("embeddings.token_embedding.weight")
    assert dtypes <= {"F32", "I64"}
    assert torch.equal(weight.half().float(), weight)


def test_stock_diffusers_loads_the_demo_folder_with_no_arguments_and_generates(stock_pipeline):
    from diffusers import StableDiffusionPipeline

    pipe = stock_pipeline
    assert isinstance(pipe, StableDiffusionPipeline)
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.float32}
    images = _generate(pipe)
    assert images.shape == (1, 3, 64, 64) and torch.isfinite(images).all()
    assert float(images.std()) > 0.01  # a picture, not a constant


def test_stock_pipeline_matches_artshields_own(stock_pipeline):
    """Same weights, same sampler: stock diffusers and ``load("demo").pipeline()`` give the same picture."""
    ours = load("demo", device="cpu").pipeline("text2img", scheduler=stock_pipeline.scheduler.__class__.from_config(
        stock_pipeline.scheduler.config))
    torch.testing.assert_close(_generate(ours), _generate(stock_pipeline), rtol=0, atol=1e-5)


def test_a_lora_from_artshields_trainer_loads_in_stock_diffusers_and_changes_the_output(demo_lora):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(DEMO_WEIGHTS))
    before = _generate(pipe)
    pipe.load_lora_weights(str(demo_lora))
    assert any("lora_" in name for name, _ in pipe.text_encoder.named_parameters())  # --train_text_encoder
    after = _generate(pipe)
    assert after.shape == (1, 3, 64, 64) and torch.isfinite(after).all()
    assert float((after - before).abs().mean()) > 0.01
    # The handle applies the same LoRA to the same effect.
    model = load("demo", device="cpu").with_lora(demo_lora)
    ours = model.pipeline("text2img", scheduler=pipe.scheduler.__class__.from_config(pipe.scheduler.config))
    torch.testing.assert_close(_generate(ours), after, rtol=0, atol=1e-4)


def test_demo_inpaint_unet_loads_in_stock_diffusers():
    """``weights/unet_inpaint`` is a UNet folder beside the demo's components: diffusers users pass it as the
    pipeline's UNet, the usual way to swap one component."""
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(DEMO_WEIGHTS), subfolder="unet_inpaint")
    pipe = StableDiffusionInpaintPipeline.from_pretrained(str(DEMO_WEIGHTS), unet=unet)
    assert pipe.unet.config.in_channels == 9
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.float32}
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1.0
    out = _generate(pipe, image=image, mask_image=mask)
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()
    # artshield's own "demo-inpaint" is the same model.
    ours = load("demo-inpaint", device="cpu")
    assert ours.is_inpainting
    state = ours.unet.state_dict()
    assert all(torch.equal(state[k], v) for k, v in pipe.unet.state_dict().items())
