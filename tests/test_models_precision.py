"""The compute-precision policy (bf16 autocast on CPUs with native bf16), low-memory checkpointing and
channels-last weights: each must leave results where they were (within bf16's precision) and be reported."""

from __future__ import annotations

import json

import pytest
import torch

from artshield.errors import InvalidArgumentError
from artshield.models import device as device_policy
from artshield.models import load
from artshield.models.device import resolve_compute_dtype

CPU = torch.device("cpu")


@pytest.fixture
def native_bf16(monkeypatch):
    def set_to(value: bool) -> None:
        monkeypatch.setattr(device_policy, "cpu_has_native_bf16", lambda: value)

    return set_to


def test_auto_picks_bf16_only_on_cpus_with_native_bf16_and_fp32_weights(native_bf16):
    native_bf16(True)
    assert resolve_compute_dtype("auto", CPU, torch.float32) is torch.bfloat16
    assert resolve_compute_dtype(None, CPU, torch.float32) is torch.bfloat16
    assert resolve_compute_dtype("auto", CPU, torch.bfloat16) is None  # half weights compute in their own dtype
    assert resolve_compute_dtype("auto", torch.device("cuda"), torch.float16) is None
    # Small models (the demo, 6 M) stay exact: the casts cost more than bf16's kernels save.
    assert resolve_compute_dtype("auto", CPU, torch.float32, parameters=6_000_000) is None
    assert resolve_compute_dtype("auto", CPU, torch.float32, parameters=860_000_000) is torch.bfloat16
    native_bf16(False)  # emulated bf16 is slower than fp32: stay exact
    assert resolve_compute_dtype("auto", CPU, torch.float32) is None


def test_the_demo_model_loads_exact(native_bf16):
    native_bf16(True)
    assert load("demo", device="cpu").compute_dtype is None


def test_explicit_compute_dtypes(native_bf16):
    native_bf16(True)
    assert resolve_compute_dtype("fp32", CPU, torch.float32) is None
    assert resolve_compute_dtype("bf16", CPU, torch.float32) is torch.bfloat16
    assert resolve_compute_dtype(torch.float16, CPU, torch.float32) is torch.float16
    assert resolve_compute_dtype("bf16", CPU, torch.bfloat16) is None
    with pytest.raises(InvalidArgumentError, match="fp32 needs fp32 weights"):
        resolve_compute_dtype("fp32", CPU, torch.bfloat16)
    with pytest.raises(InvalidArgumentError, match="compute_dtype"):
        resolve_compute_dtype("int8", CPU, torch.float32)


def test_the_detection_reads_the_cpu(monkeypatch):
    device_policy.cpu_has_native_bf16.cache_clear()
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert device_policy.cpu_has_native_bf16()
    device_policy.cpu_has_native_bf16.cache_clear()
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(device_policy, "_arm_cpu_flags_have_bf16", lambda: False)
    assert not device_policy.cpu_has_native_bf16()
    device_policy.cpu_has_native_bf16.cache_clear()


def _input_gradient(model, images, seed=0):
    x = images.clone().requires_grad_(True)
    generator = torch.Generator().manual_seed(seed)
    latents = model.encode(x, generator=generator)
    loss = model.training_loss(latents, model.embed_prompt("a painting", batch_size=x.shape[0]), generator=generator)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad


def test_bf16_autocast_keeps_the_input_gradient(tiny_model_dir):
    exact = load(str(tiny_model_dir), device="cpu", dtype="fp32", compute_dtype="fp32")
    fast = load(str(tiny_model_dir), device="cpu", dtype="fp32", compute_dtype="bf16")
    assert exact.compute_dtype is None and fast.compute_dtype is torch.bfloat16
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    loss_exact, grad_exact = _input_gradient(exact, images)
    loss_fast, grad_fast = _input_gradient(fast, images)
    assert grad_fast.dtype == torch.float32 and loss_fast.dtype == torch.float32
    assert not torch.equal(grad_fast, grad_exact)  # it did compute in bf16
    cosine = torch.nn.functional.cosine_similarity(grad_fast.flatten(1), grad_exact.flatten(1), dim=1)
    assert cosine.min() > 0.99, cosine
    assert torch.allclose(loss_fast, loss_exact, rtol=0.05)
    # The posterior is sampled in fp32 from the encoder's moments, and decoding returns fp32 in [0, 1].
    assert fast.encode(images, mode="mean").dtype == torch.float32
    decoded = fast.decode(fast.encode(images, mode="mean"))
    assert decoded.dtype == torch.float32 and 0 <= decoded.min() and decoded.max() <= 1


def test_low_memory_gives_the_same_gradient(tiny_model_dir):
    model = load(str(tiny_model_dir), device="cpu", dtype="fp32", compute_dtype="fp32")
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    _, plain = _input_gradient(model, images)
    assert not model.low_memory
    model.enable_low_memory()
    assert model.low_memory and model.vae.encoder.gradient_checkpointing
    _, checkpointed = _input_gradient(model, images)
    assert torch.allclose(plain, checkpointed, atol=1e-6, rtol=1e-4)
    assert load(str(tiny_model_dir), device="cpu", dtype="fp32", low_memory=True).low_memory


def test_channels_last_changes_layout_not_values(tiny_model_dir):
    model = load(str(tiny_model_dir), device="cpu", dtype="fp32", compute_dtype="fp32")
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    before = model.encode(images, mode="mean")
    model.use_channels_last(vae=True)
    weight = model.vae.encoder.conv_in.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    assert torch.allclose(model.encode(images, mode="mean"), before, atol=1e-5)
    model.use_channels_last(vae=False)
    assert model.vae.encoder.conv_in.weight.is_contiguous()


def test_copies_keep_the_policy_and_moves_reset_it(tiny_model_dir):
    import dataclasses

    model = load(str(tiny_model_dir), device="cpu", dtype="fp32", compute_dtype="bf16")
    assert dataclasses.replace(model, unet=model.unet).compute_dtype is torch.bfloat16
    model.to("cpu", torch.bfloat16)  # chosen for fp32 weights: no longer meaningful
    assert model.compute_dtype is None


def test_protect_records_the_precision_and_memory_mode(tiny_model_dir, tmp_path):
    from PIL import Image

    from artshield.protect.cli import main

    Image.new("RGB", (32, 32), (120, 80, 40)).save(tmp_path / "a.png")
    status = main([str(tmp_path / "a.png"), "--model", str(tiny_model_dir), "--steps", "1", "-q",
                   "--compute-dtype", "fp32", "--low-memory", "-o", str(tmp_path / "out.png"),
                   "--report", str(tmp_path / "report.json")])
    assert status == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["compute_dtype"] == "float32" and report["low_memory"] is True


def test_bf16_autocast_on_the_cpu_brings_channels_last_weights(tiny_model_dir):
    fast = load(str(tiny_model_dir), device="cpu", dtype="fp32", compute_dtype="bf16")
    assert fast.vae.encoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    exact = load(str(tiny_model_dir), device="cpu", dtype="fp32", compute_dtype="fp32")
    assert exact.vae.encoder.conv_in.weight.is_contiguous() and exact.unet.conv_in.weight.is_contiguous()


def test_channels_last_unet_changes_layout_not_values(tiny_model_dir):
    model = load(str(tiny_model_dir), device="cpu", dtype="fp32", compute_dtype="fp32")
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    embeds = model.embed_prompt("a painting", batch_size=1)
    t = torch.tensor([500])
    before = model.predict_noise(latents, t, embeds)
    model.use_channels_last(vae=False, unet=True)
    assert model.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(model.predict_noise(latents, t, embeds), before, atol=1e-5)


def test_lora_trains_saves_and_applies_on_channels_last_weights(tiny_model_dir, tmp_path):
    """Under CPU bf16 autocast both the VAE and the UNet are channels-last: adapters must still train, save
    (safetensors refuses non-contiguous tensors) and apply to a fresh copy."""
    from artshield.finetune import LocalTrainer
    from artshield.finetune.saving import save_lora

    model = load(str(tiny_model_dir), device="cpu", dtype="fp32", compute_dtype="bf16")
    assert model.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    trainer = LocalTrainer(model, rank=4, learning_rate=0.05, resolution=32, train_text_encoder=True, seed=0)
    trainer.train_steps(list(images), 2, prompt="a painting")
    save_lora(tmp_path / "lora", model.unet, model.text_encoder)

    base = load(str(tiny_model_dir), device="cpu", dtype="fp32", compute_dtype="bf16")
    adapted = base.with_lora(tmp_path / "lora")
    latents = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([300])
    plain = base.predict_noise(latents, t, base.embed_prompt("a painting", batch_size=1))
    changed = adapted.predict_noise(latents, t, adapted.embed_prompt("a painting", batch_size=1))
    assert torch.isfinite(changed).all() and not torch.allclose(plain, changed)
