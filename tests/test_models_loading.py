"""The model layer's loading paths: diffusers folders, single original-format files, hub ids (offline),
the demo model, and the named errors for everything a user can get wrong. Also the device/dtype policy.

All models are tiny random-weight ones built from configs (tests/conftest.py); single-file checkpoints are
made from them in the original LDM key layout by tests/ldm_format.py.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from artshield.errors import (
    IncompatibleModelError,
    InvalidArgumentError,
    ModelLoadError,
    ModelNotFoundError,
    UntrustedCheckpointError,
)
from artshield.models import DiffusionModel, hub, load, resolve_device, resolve_dtype
from ldm_format import folder_to_ldm, save_ldm_checkpoint

COMPONENTS = ("unet", "vae", "text_encoder")


def _load(spec, **kwargs) -> DiffusionModel:
    return load(str(spec), device="cpu", dtype=kwargs.pop("dtype", "fp32"), **kwargs)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _assert_same_weights(a: DiffusionModel, b: DiffusionModel) -> None:
    for name in COMPONENTS:
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert sa.keys() == sb.keys(), name
        different = [k for k in sa if not torch.equal(sa[k], sb[k])]
        assert not different, f"{name}: {different[:3]}"


def _assert_same_outputs(a: DiffusionModel, b: DiffusionModel) -> None:
    """Same input through both models' VAE, text encoder and UNet gives identical results."""
    g = torch.Generator().manual_seed(0)
    side = a.pixel_multiple * 2
    images = torch.rand(2, 3, side, side, generator=g)
    za, zb = a.encode(images, mode="mean"), b.encode(images, mode="mean")
    torch.testing.assert_close(za, zb, rtol=0, atol=0)
    torch.testing.assert_close(a.decode(za), b.decode(zb), rtol=0, atol=0)
    ea, eb = a.embed_prompt("a painting of a circle", 2), b.embed_prompt("a painting of a circle", 2)
    torch.testing.assert_close(ea, eb, rtol=0, atol=0)
    t = torch.tensor([10, 900])
    noisy = torch.randn(za.shape, generator=g)
    cond = torch.randn(2, 5, *za.shape[-2:], generator=g) if a.is_inpainting else None
    torch.testing.assert_close(a.predict_noise(noisy, t, ea, cond), b.predict_noise(noisy, t, eb, cond), rtol=0, atol=0)


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, so results do not depend on what the machine has downloaded."""
    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    return cache


def _fake_hub_snapshot(cache: Path, repo_id: str, folder: Path, commit: str = "0" * 40) -> None:
    """Lay `folder` out in `cache` as the hub client stores a downloaded repo."""
    root = cache / ("models--" + repo_id.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    shutil.copytree(folder, root / "snapshots" / commit)


@pytest.fixture(scope="module")
def sd2_style_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny model with SD 2.x's UNet details (linear attention projections) for the OpenCLIP layout."""
    from artshield.models.demo.architecture import ARCHITECTURES, build_components, save_components

    architecture = json.loads(json.dumps(ARCHITECTURES["tiny"]))
    architecture["unet"]["use_linear_projection"] = True
    folder = tmp_path_factory.mktemp("tiny-sd2")
    save_components(build_components(architecture, tiny_tokenizer, seed=2), str(folder))
    return folder


@pytest.fixture(scope="module")
def sd1_file(tiny_model_dir, tmp_path_factory) -> Path:
    return save_ldm_checkpoint(tiny_model_dir, tmp_path_factory.mktemp("ckpt") / "tiny-sd1.safetensors")


# ============================================================================================ folders
def test_folder_handle_properties(tiny_model):
    assert tiny_model.pixel_multiple == 16  # x8 VAE, then one UNet down-sampling
    assert tiny_model.native_resolution == 32
    assert not tiny_model.is_inpainting
    assert tiny_model.prediction_type == "epsilon"
    assert tiny_model.latent_channels == 4
    assert tiny_model.device == torch.device("cpu") and tiny_model.dtype == torch.float32
    for name in COMPONENTS:
        module = getattr(tiny_model, name)
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())


@pytest.mark.parametrize("height, width", [(16, 48), (48, 80)])
def test_encode_decode_shapes_at_odd_multiples(tiny_model, height, width):
    images = torch.rand(2, 3, height, width, requires_grad=True)
    latents = tiny_model.encode(images, generator=torch.Generator().manual_seed(0))
    assert latents.shape == (2, 4, height // 8, width // 8) and latents.dtype == torch.float32
    decoded = tiny_model.decode(latents)
    assert decoded.shape == (2, 3, height, width)
    assert decoded.min() >= 0 and decoded.max() <= 1
    decoded.mean().backward()  # frozen weights, but differentiable with respect to the images
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_training_loss_is_per_sample_and_seeded(tiny_model):
    latents = tiny_model.encode(torch.rand(3, 3, 32, 32), mode="mean")
    embeds = tiny_model.embed_prompt("a photo of a house", batch_size=3)
    loss = tiny_model.training_loss(latents, embeds, generator=torch.Generator().manual_seed(1))
    again = tiny_model.training_loss(latents, embeds, generator=torch.Generator().manual_seed(1))
    assert loss.shape == (3,) and torch.isfinite(loss).all()
    torch.testing.assert_close(loss, again)


def test_v_prediction_target(tiny_model_dir, tmp_path):
    folder = _copy(tiny_model_dir, tmp_path / "v-pred")
    _edit_json(folder / "scheduler" / "scheduler_config.json", prediction_type="v_prediction")
    model = _load(folder)
    assert model.prediction_type == "v_prediction"
    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 4, generator=g)
    t = torch.tensor([0, 999])
    alpha = model.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = alpha.sqrt() * noise - (1 - alpha).sqrt() * latents
    torch.testing.assert_close(model.training_target(latents, noise, t), expected)
    # The loss is measured against that target, not against the noise.
    embeds = model.embed_prompt("a painting of a circle", 2)
    prediction = model.predict_noise(model.add_noise(latents, noise, t), t, embeds)
    loss = model.training_loss(latents, embeds, timesteps=t, noise=noise)
    torch.testing.assert_close(loss, ((prediction - expected) ** 2).flatten(1).mean(1))
    # A weight (here: only the left half of each latent counts) makes it a weighted mean over the elements.
    weight = torch.zeros(2, 1, 4, 4)
    weight[..., :2] = 1.0
    weighted = model.training_loss(latents, embeds, timesteps=t, noise=noise, weight=weight)
    torch.testing.assert_close(weighted, ((prediction - expected)[..., :2] ** 2).flatten(1).mean(1))
    assert not torch.allclose(weighted, loss)


def test_inpainting_model_requires_its_condition(tiny_inpaint_dir, tiny_model):
    model = _load(tiny_inpaint_dir)
    assert model.is_inpainting and model.unet.config.in_channels == 9
    latents = model.encode(torch.rand(2, 3, 32, 32), mode="mean")
    embeds = model.embed_prompt("a photo of a house", 2)
    t = torch.tensor([5, 500])
    with pytest.raises(InvalidArgumentError, match="inpaint_condition"):
        model.predict_noise(latents, t, embeds)
    condition = torch.randn(2, 5, *latents.shape[-2:])
    assert model.predict_noise(latents, t, embeds, condition).shape == latents.shape
    assert model.training_loss(latents, embeds, inpaint_condition=condition).shape == (2,)
    with pytest.raises(InvalidArgumentError, match="not an inpainting model"):
        tiny_model.predict_noise(latents, t, embeds, condition)


def test_half_precision_weights_return_float32(tiny_model_dir):
    model = _load(tiny_model_dir, dtype="bf16")
    assert model.dtype == torch.bfloat16 and next(model.unet.parameters()).dtype == torch.bfloat16
    latents = model.encode(torch.rand(1, 3, 32, 32), mode="mean")
    assert latents.dtype == torch.float32
    assert model.decode(latents).dtype == torch.float32


def test_loading_is_quiet_and_restores_library_settings(tiny_model_dir, capfd):
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    before = (
        diffusers_logging.get_verbosity(),
        transformers_logging.get_verbosity(),
        diffusers_logging.is_progress_bar_enabled(),
        transformers_logging.is_progress_bar_enabled(),
    )
    capfd.readouterr()
    _load(tiny_model_dir)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    after = (
        diffusers_logging.get_verbosity(),
        transformers_logging.get_verbosity(),
        diffusers_logging.is_progress_bar_enabled(),
        transformers_logging.is_progress_bar_enabled(),
    )
    assert after == before


# ============================================================================================ folder errors
def test_nonexistent_paths(tmp_path):
    for spec in (tmp_path / "missing.safetensors", tmp_path / "missing-folder", "./nope", "nope"):
        with pytest.raises(ModelNotFoundError):
            _load(spec)


def test_folder_missing_a_component(tiny_model_dir, tmp_path):
    folder = _copy(tiny_model_dir, tmp_path / "no-unet")
    shutil.rmtree(folder / "unet")
    with pytest.raises(IncompatibleModelError, match="missing unet/config.json"):
        _load(folder)


def test_folder_of_single_file_suggests_the_file(tmp_path, sd1_file):
    folder = tmp_path / "downloads"
    folder.mkdir()
    shutil.copy(sd1_file, folder / "model.safetensors")
    with pytest.raises(IncompatibleModelError, match="pass that file"):
        _load(folder)


def test_sdxl_folder(tiny_model_dir, tmp_path):
    folder = _copy(tiny_model_dir, tmp_path / "sdxl")
    _edit_json(folder / "model_index.json", _class_name="StableDiffusionXLPipeline")
    with pytest.raises(IncompatibleModelError, match="SDXL"):
        _load(folder)


def test_folder_with_mismatched_components(tiny_model_dir, tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = _copy(tiny_model_dir, tmp_path / "mismatch")
    config = CLIPTextConfig.from_pretrained(folder / "text_encoder")
    config.hidden_size, config.intermediate_size = 32, 64
    shutil.rmtree(folder / "text_encoder")
    CLIPTextModel(config).save_pretrained(folder / "text_encoder")
    with pytest.raises(IncompatibleModelError, match="cross_attention_dim is 16 but the text encoder's hidden size is 32"):
        _load(folder)


def test_folder_whose_weights_lack_tensors(tiny_model_dir, tmp_path):
    # diffusers would leave the missing tensor on the meta device with only a log line.
    folder = _copy(tiny_model_dir, tmp_path / "partial")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    del state["conv_in.weight"]
    save_file(state, weights)
    with pytest.raises(IncompatibleModelError, match="conv_in.weight"):
        _load(folder)


def test_folder_with_pickle_weights_needs_trust(tiny_model_dir, tmp_path):
    from diffusers import UNet2DConditionModel

    folder = _copy(tiny_model_dir, tmp_path / "bin")
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    shutil.rmtree(folder / "unet")
    unet.save_pretrained(folder / "unet", safe_serialization=False)
    with pytest.raises(UntrustedCheckpointError, match="trust_pickle"):
        _load(folder)
    _assert_same_weights(_load(folder, trust_pickle=True), _load(tiny_model_dir))


def test_config_is_only_for_single_files(tiny_model_dir):
    with pytest.raises(InvalidArgumentError, match="only applies to single checkpoint files"):
        _load(tiny_model_dir, config=tiny_model_dir)


# ============================================================================================ single files
def test_ldm_converter_inverts_diffusers_conversion(tiny_model_dir, sd2_style_dir):
    """tests/ldm_format.py is exactly the inverse of diffusers' own LDM -> diffusers converters."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    for folder in (tiny_model_dir, sd2_style_dir):
        ldm = folder_to_ldm(folder)
        for name, convert in (("unet", convert_ldm_unet_checkpoint), ("vae", convert_ldm_vae_checkpoint)):
            config = json.loads((folder / name / "config.json").read_text())
            original = load_file(next((folder / name).glob("*.safetensors")))
            converted = convert(ldm, config)
            assert converted.keys() == original.keys(), name
            assert all(torch.equal(converted[k], original[k]) for k in original), name


def test_single_safetensors_file_matches_folder(sd1_file, tiny_model_dir, tiny_model):
    model = _load(sd1_file, config=tiny_model_dir)
    assert model.source == str(sd1_file)
    assert model.scheduler.config.prediction_type == tiny_model.prediction_type
    assert model.tokenizer.get_vocab() == tiny_model.tokenizer.get_vocab()
    _assert_same_weights(model, tiny_model)
    _assert_same_outputs(model, tiny_model)


def test_single_file_sd2_layout_matches_folder(sd2_style_dir, tmp_path):
    """SD 2.x files hold an OpenCLIP text tower (fused qkv) and linear attention projections."""
    path = save_ldm_checkpoint(sd2_style_dir, tmp_path / "tiny-sd2.safetensors", text="open_clip")
    assert "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight" in load_file(path)
    model, reference = _load(path, config=sd2_style_dir), _load(sd2_style_dir)
    _assert_same_weights(model, reference)
    _assert_same_outputs(model, reference)


@pytest.mark.parametrize("text", ["clip", "open_clip"])
def test_single_file_with_real_sd_block_structure(tiny_tokenizer, tmp_path, text):
    """Real SD 1.x/2.x block layout (4 levels, 2 layers per block, 3 cross-attention levels, 4-level VAE with
    2 layers per block) at tiny widths: the LDM indices (output_blocks.11, upsamplers after attentions, the
    VAE's reversed up levels) are those of real checkpoints."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    from artshield.models.demo.architecture import build_components, save_components
    from artshield.models.single_file import checkpoint_kind

    architecture = {
        "resolution": 64,
        "vae": {"block_out_channels": (8, 8, 8, 8), "layers_per_block": 2, "norm_num_groups": 4},
        "unet": {
            "block_out_channels": (8, 16, 16, 16),
            "layers_per_block": 2,
            "attention_head_dim": 2,
            "norm_num_groups": 4,
            "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            "use_linear_projection": text == "open_clip",  # as SD 2.x
        },
        "text": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2},
    }
    folder = tmp_path / "sd-structure"
    save_components(build_components(architecture, tiny_tokenizer, seed=3), str(folder))
    path = save_ldm_checkpoint(folder, tmp_path / "sd-structure.safetensors", text=text)
    state = load_file(path)
    assert "model.diffusion_model.output_blocks.11.0.skip_connection.weight" in state  # diffusers' SD 1.x marker
    assert infer_diffusers_model_type(state) == "v1"  # (its SD 2.x test needs 1024-wide attention)
    assert checkpoint_kind(state, path) == ("v2" if text == "open_clip" else "v1")
    model, reference = _load(path, config=folder), _load(folder)
    assert model.pixel_multiple == 64
    _assert_same_weights(model, reference)
    _assert_same_outputs(model, reference)


def test_single_file_inpainting_matches_folder(tiny_inpaint_dir, tmp_path):
    path = save_ldm_checkpoint(tiny_inpaint_dir, tmp_path / "tiny-inpaint.safetensors")
    model, reference = _load(path, config=tiny_inpaint_dir), _load(tiny_inpaint_dir)
    assert model.is_inpainting
    _assert_same_weights(model, reference)
    _assert_same_outputs(model, reference)


def test_single_file_without_vae_takes_the_configs(tiny_model_dir, tiny_model, tmp_path):
    path = save_ldm_checkpoint(tiny_model_dir, tmp_path / "no-vae.safetensors", drop=("first_stage_model.",))
    _assert_same_weights(_load(path, config=tiny_model_dir), tiny_model)


def test_single_file_with_cached_default_configs(sd1_file, tiny_model_dir, tiny_model, empty_hf_cache):
    """Offline, without `config`, the configs of diffusers' default repo for the kind come from the cache."""
    _fake_hub_snapshot(empty_hf_cache, "stable-diffusion-v1-5/stable-diffusion-v1-5", tiny_model_dir)
    _assert_same_weights(_load(sd1_file), tiny_model)
    # A cached hub id given as `config` is read the same way.
    _fake_hub_snapshot(empty_hf_cache, "someone/tiny-config", tiny_model_dir)
    _assert_same_weights(_load(sd1_file, config="someone/tiny-config"), tiny_model)


def test_single_file_offline_without_config(sd1_file, empty_hf_cache):
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError, match=r"--config FOLDER") as info:
        _load(sd1_file)
    assert time.monotonic() - start < 5
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in str(info.value)
    assert "\n" not in str(info.value)


def test_single_file_config_errors(sd1_file, tiny_model_dir, tiny_inpaint_dir, tmp_path, empty_hf_cache):
    with pytest.raises(ModelNotFoundError, match="no such folder"):
        _load(sd1_file, config=tmp_path / "missing")
    with pytest.raises(ModelNotFoundError, match="not in the local Hugging Face cache"):
        _load(sd1_file, config="someone/some-config")
    with pytest.raises(IncompatibleModelError, match="is a file"):
        _load(sd1_file, config=tiny_model_dir / "model_index.json")
    with pytest.raises(IncompatibleModelError, match="missing"):
        _load(sd1_file, config=tiny_model_dir / "unet")
    with pytest.raises(IncompatibleModelError, match="text-to-image model .* config .* is for 9"):
        _load(sd1_file, config=tiny_inpaint_dir)
    # Same widths, different depth: diffusers' converter cannot place the weights.
    other = _copy(tiny_model_dir, tmp_path / "deeper")
    _edit_json(other / "unet" / "config.json", layers_per_block=2)
    with pytest.raises(IncompatibleModelError, match="config"):
        _load(sd1_file, config=other)


def test_ckpt_needs_trust_flag(tiny_model_dir, tiny_model, tmp_path):
    path = save_ldm_checkpoint(tiny_model_dir, tmp_path / "tiny.ckpt")
    with pytest.raises(UntrustedCheckpointError, match=r"trust_pickle=True.*safetensors"):
        _load(path, config=tiny_model_dir)
    _assert_same_weights(_load(path, config=tiny_model_dir, trust_pickle=True), tiny_model)


class _RunsCode:
    """Unpickling this with a full unpickler would create `marker` (a stand-in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_malicious_pickle_is_refused_even_when_trusted(tiny_model_dir, tmp_path):
    marker = tmp_path / "code-ran"
    path = save_ldm_checkpoint(tiny_model_dir, tmp_path / "evil.ckpt", extra={"callbacks": _RunsCode(marker)})
    with pytest.raises(UntrustedCheckpointError, match="other than tensors"):
        _load(path, config=tiny_model_dir, trust_pickle=True)
    assert not marker.exists()
    # The payload is real: an unrestricted unpickle runs it (which is what weights_only prevents).
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(
    "keys, expected",
    [
        ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 8)}, "LoRA"),
        ({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": (4, 8)}, "LoRA"),
        ({"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": (8,)}, "SDXL"),
        ({"model.diffusion_model.label_emb.0.0.weight": (8, 8), "model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3)}, "SDXL"),
        ({"double_blocks.0.img_attn.norm.key_norm.scale": (8,)}, "FLUX"),
        ({"encoder.conv_in.weight": (8, 3, 3, 3), "decoder.conv_out.weight": (3, 8, 3, 3)}, "standalone VAE"),
        ({"down_blocks.0.resnets.0.conv1.weight": (8, 8, 3, 3)}, "one diffusers component"),
        ({"emb_params": (2, 768)}, "textual-inversion"),
        ({"model.diffusion_model.input_blocks.0.0.weight": (8, 8, 3, 3)}, "8 input channels"),
    ],
)
def test_files_that_are_not_sd_checkpoints(tmp_path, keys, expected, tiny_model_dir):
    path = tmp_path / "other.safetensors"
    save_file({k: torch.zeros(shape) for k, shape in keys.items()}, str(path))
    with pytest.raises(IncompatibleModelError, match=expected):
        _load(path, config=tiny_model_dir)


def test_corrupt_files(sd1_file, tiny_model_dir, tmp_path):
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(sd1_file.read_bytes()[: sd1_file.stat().st_size // 2])
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(os.urandom(4096))
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    ckpt = save_ldm_checkpoint(tiny_model_dir, tmp_path / "whole.ckpt")
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(ckpt.read_bytes()[:-4096])
    for path in (truncated, garbage, empty, cut):
        with pytest.raises(IncompatibleModelError, match="truncated or corrupt"):
            _load(path, config=tiny_model_dir, trust_pickle=True)


@pytest.mark.parametrize("content", [b"\x80\x02garbage" + bytes(range(256)) * 8, b"\0" * 4096, b"not a checkpoint\n" * 64])
def test_garbage_pickle_is_one_named_error_without_torch_advice(tmp_path, tiny_model_dir, content):
    """torch.load(weights_only=True)'s refusals advise re-running with weights_only=False; that advice (which
    would run whatever the file holds) must not reach the user, and the file must be named."""
    path = tmp_path / "garbage.ckpt"
    path.write_bytes(content)
    with pytest.raises(IncompatibleModelError) as info:
        _load(path, config=tiny_model_dir, trust_pickle=True)
    message = str(info.value)
    assert str(path) in message and "truncated or corrupt" in message
    assert "\n" not in message
    for advice in ("weights_only", "Re-running", "trusted source", "file an issue", "Could this error message"):
        assert advice not in message, message
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"\0" * 16)
    with pytest.raises(IncompatibleModelError, match="unsupported file type"):
        _load(onnx)


# ============================================================================================ hub ids
def test_hub_id_offline_fails_fast(empty_hf_cache):
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError, match="hf download stabilityai/stable-diffusion-2-1-base") as info:
        _load("stabilityai/stable-diffusion-2-1-base")
    assert time.monotonic() - start < 5
    assert "\n" not in str(info.value)


def test_hub_id_unreachable_fails_fast(empty_hf_cache, monkeypatch):
    """Not in offline mode but without network: one quick probe, no half-minute retry loop."""
    monkeypatch.setattr(hub, "hub_offline_mode", lambda: False)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError, match="cannot be reached"):
        _load("someone/some-model")
    assert time.monotonic() - start < 5


def test_hub_probe_respects_offline_mode(monkeypatch):
    monkeypatch.setattr(hub, "_reachability", None)
    probes = []
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: probes.append(timeout) or True)
    start = time.monotonic()
    assert hub.hub_online() is False  # tests run with HF_HUB_OFFLINE=1
    assert probes == []  # offline mode is answered without touching the network
    assert time.monotonic() - start < 5


def test_hub_id_from_cache(tiny_model_dir, tiny_model, empty_hf_cache):
    _fake_hub_snapshot(empty_hf_cache, "someone/tiny-sd", tiny_model_dir)
    model = _load("someone/tiny-sd")
    assert model.source == "someone/tiny-sd"
    _assert_same_weights(model, tiny_model)


def test_sdxl_hub_id_rejected_before_loading(tiny_model_dir, tmp_path, empty_hf_cache):
    folder = _copy(tiny_model_dir, tmp_path / "xl")
    _edit_json(folder / "model_index.json", _class_name="StableDiffusionXLPipeline")
    _fake_hub_snapshot(empty_hf_cache, "someone/tiny-xl", folder)
    with pytest.raises(IncompatibleModelError, match="SDXL"):
        _load("someone/tiny-xl")


# ============================================================================================ demo
def test_demo_model():
    """The demo weights ship inside the package: missing weights are a failure, not a skip."""
    from artshield.models.demo import DEMO_WEIGHTS

    assert (DEMO_WEIGHTS / "model_index.json").is_file(), f"the shipped demo weights are missing from {DEMO_WEIGHTS}"
    model = load("demo", device="cpu")
    assert model.source == "demo" and model.dtype == torch.float32
    assert model.native_resolution == 128 and not model.is_inpainting
    side = model.pixel_multiple * 3
    latents = model.encode(torch.rand(1, 3, side, side), mode="mean")
    assert model.decode(latents).shape == (1, 3, side, side)
    loss = model.training_loss(latents, model.embed_prompt("a painting"), generator=torch.Generator().manual_seed(0))
    assert loss.shape == (1,) and torch.isfinite(loss).all()


# ============================================================================================ device / dtype
@pytest.fixture
def no_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_resolve_device_without_accelerators(no_accelerator):
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(InvalidArgumentError, match="no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(InvalidArgumentError, match="no CUDA device"):
        resolve_device("cuda:1")
    with pytest.raises(InvalidArgumentError, match="MPS"):
        resolve_device("mps")
    with pytest.raises(InvalidArgumentError, match="`device` must be"):
        resolve_device("banana")


def test_load_checks_the_device_before_reading_anything(no_accelerator, tmp_path):
    with pytest.raises(InvalidArgumentError):
        load(tmp_path / "not-even-there", device="cuda")


def test_resolve_dtype_policy(monkeypatch):
    cpu, cuda, mps = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
    assert resolve_dtype(None, cpu) == torch.float32
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype(None, mps) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype(None, cuda) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype(None, cuda) == torch.float16
    for name, dtype in (("fp16", torch.float16), ("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        assert resolve_dtype(name, cpu) == dtype
    assert resolve_dtype(torch.float64, cpu) == torch.float64
    with pytest.raises(InvalidArgumentError, match="`dtype` must be one of"):
        resolve_dtype("float8", cpu)


def test_every_dtype_the_command_line_accepts_is_understood():
    """`--dtype` is validated at parse time against cli_support's list; the loader must take each of them."""
    from artshield.cli_support import DTYPE_CHOICES

    expected = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    for name in DTYPE_CHOICES:
        dtype = resolve_dtype(name, torch.device("cpu"))
        assert name == "auto" or dtype == expected[{"float32": "fp32", "float16": "fp16", "half": "fp16",
                                                      "bfloat16": "bf16"}.get(name, name)], name


def test_errors_are_model_load_errors():
    # The CLI catches ArtshieldError; every loading failure must be one.
    for cls in (ModelNotFoundError, IncompatibleModelError, UntrustedCheckpointError):
        assert issubclass(cls, ModelLoadError)
