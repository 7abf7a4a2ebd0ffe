"""ModelPair: a LoRA suspect toggled on the base's own weights, a full suspect checked for architecture, and
losses of both models at the same noised input."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file, save_file

from artshield.authenticate.pair import ModelPair
from artshield.errors import IncompatibleModelError, InvalidArgumentError, ModelNotFoundError
from artshield.models import DiffusionModel, load

PROMPT = "a painting of a circle"


def images(n: int = 2, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return torch.rand(n, 3, size, size, generator=g)


@pytest.fixture(scope="module")
def lora_dir(tiny_model_dir, tmp_path_factory):
    """A LoRA (UNet and text encoder) made by LocalTrainer on the tiny model, saved as the trainer saves it."""
    from artshield.finetune import LocalTrainer
    from artshield.finetune.saving import save_lora

    model = load(str(tiny_model_dir), device="cpu", dtype="fp32")
    trainer = LocalTrainer(model, rank=4, learning_rate=0.05, resolution=32, train_text_encoder=True, seed=0)
    trainer.train_steps(list(images()), 3, prompt=PROMPT)
    folder = tmp_path_factory.mktemp("lora")
    save_lora(folder, model.unet, model.text_encoder)
    return folder


@pytest.fixture()
def pair(tiny_model_dir, lora_dir):
    return ModelPair.load(str(tiny_model_dir), lora=lora_dir, prompt=PROMPT, device="cpu", dtype="fp32")


def draws(pair, n=2, t=300):
    latents = pair.encode(images(n))
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))
    return latents, torch.full((n,), t), noise


def test_lora_changes_the_suspect_and_toggling_restores_the_base(pair, tiny_model):
    latents, t, noise = draws(pair)
    with torch.no_grad():
        pre, ft = pair.losses(latents, t, noise)
        assert pre.shape == ft.shape == (2,)
        assert not torch.allclose(pre, ft)
        with pair.using("suspect") as suspect:
            suspect.predict_noise(latents, t, suspect.embed_prompt(PROMPT, 2))
        pre_again, ft_again = pair.losses(latents, t, noise)
        # the base outside any `using`, and a separately loaded base model, give the same numbers exactly
        fresh = tiny_model.training_loss(latents, tiny_model.embed_prompt(PROMPT, 2), timesteps=t, noise=noise)
        with pair.using("base") as base:
            direct = base.training_loss(latents, base.embed_prompt(PROMPT, 2), timesteps=t, noise=noise)
    assert torch.equal(pre, pre_again) and torch.equal(ft, ft_again)
    assert torch.equal(pre, fresh) and torch.equal(pre, direct)
    assert pair.is_lora and pair.prompt == PROMPT


def test_lora_keeps_one_set_of_weights(pair):
    with pair.using("base") as base, pair.using("suspect") as suspect:
        assert suspect.vae is base.vae and suspect.text_encoder is base.text_encoder and suspect.unet is base.unet
    reference = load(pair.base.source, device="cpu", dtype="fp32")
    counted = {id(p): p.numel() for m in (pair.base.vae, pair.base.unet, pair.base.text_encoder,
                                          pair.suspect.vae, pair.suspect.unet, pair.suspect.text_encoder)
               for p in m.parameters()}  # fmt: skip
    plain = sum(p.numel() for m in (reference.vae, reference.unet, reference.text_encoder) for p in m.parameters())
    lora = sum(n for m in (pair.base.unet, pair.base.text_encoder) for name, p in m.named_parameters()
               if "lora_" in name for n in [p.numel()])  # fmt: skip
    assert 0 < lora < plain / 2
    assert sum(counted.values()) == plain + lora  # one copy of every base weight, plus the adapter
    # the adapter's weights are frozen, whichever way it is switched
    with pair.using("suspect"):
        assert not any(p.requires_grad for m in (pair.base.unet, pair.base.text_encoder) for p in m.parameters())


def test_prompt_embeddings_follow_the_adapter(pair):
    with pair.using("base") as base:
        e_base = base.embed_prompt(PROMPT)
    with pair.using("suspect") as suspect:
        e_suspect = suspect.embed_prompt(PROMPT)
    with pair.using("base") as base:
        assert torch.equal(base.embed_prompt(PROMPT), e_base)
        assert torch.equal(base.encode_prompt_uncached([PROMPT]), e_base)
    assert not torch.allclose(e_base, e_suspect)  # the LoRA adapts the text encoder


def test_both_models_see_the_same_noised_input(pair, monkeypatch):
    seen = []
    original = DiffusionModel.predict_noise

    def recorder(self, noisy, timesteps, embeds, inpaint_condition=None):
        seen.append((self.source, noisy.detach().clone(), timesteps.clone()))
        return original(self, noisy, timesteps, embeds, inpaint_condition)

    monkeypatch.setattr(DiffusionModel, "predict_noise", recorder)
    latents, t, noise = draws(pair)
    with torch.no_grad():
        pair.losses(latents, t, noise)
    assert len(seen) == 2 and seen[0][0] != seen[1][0]
    assert torch.equal(seen[0][1], seen[1][1]) and torch.equal(seen[0][2], seen[1][2])
    assert torch.equal(seen[0][1], pair.base.add_noise(latents, noise, t))


def test_gradients_with_respect_to_latents_are_finite_fp32(pair):
    latents, t, noise = draws(pair)
    latents = latents.clone().requires_grad_(True)
    pre, ft = pair.losses(latents, t, noise)
    (pre - ft).sum().backward()
    assert latents.grad is not None and latents.grad.dtype == torch.float32
    assert torch.isfinite(latents.grad).all() and latents.grad.abs().sum() > 0


def test_half_precision_weights_give_fp32_gradients(tiny_model_dir, lora_dir):
    pair = ModelPair.load(str(tiny_model_dir), lora=lora_dir, device="cpu", dtype="bf16")
    assert pair.base.dtype == torch.bfloat16
    latents, t, noise = draws(pair)
    latents = latents.clone().requires_grad_(True)
    pre, ft = pair.losses(latents, t, noise)
    assert pre.dtype == ft.dtype == torch.float32
    (pre - ft).sum().backward()
    assert latents.grad.dtype == torch.float32 and torch.isfinite(latents.grad).all()


def test_full_suspect_shares_untouched_components(tiny_model_dir):
    pair = ModelPair.load(str(tiny_model_dir), suspect=str(tiny_model_dir), device="cpu", dtype="fp32")
    assert not pair.is_lora
    assert pair.suspect.vae is pair.base.vae and pair.suspect.text_encoder is pair.base.text_encoder
    assert pair.suspect.unet is not pair.base.unet
    latents, t, noise = draws(pair)
    with torch.no_grad():
        pre, ft = pair.losses(latents, t, noise)
    assert torch.equal(pre, ft)


def test_another_architecture_is_refused_in_one_line(tiny_model_dir, tiny_model):
    from diffusers import DDPMScheduler

    v_model = dataclasses.replace(
        tiny_model, scheduler=DDPMScheduler.from_config(tiny_model.scheduler.config, prediction_type="v_prediction"),
        source="v-suspect",
    )
    with pytest.raises(IncompatibleModelError) as info:
        ModelPair.load(str(tiny_model_dir), suspect=v_model)
    message = str(info.value)
    assert "\n" not in message and "v-suspect" in message and str(tiny_model_dir) in message
    assert "prediction type" in message

    other = load(str(tiny_model_dir), device="cpu", dtype="fp32")
    other.unet.register_to_config(cross_attention_dim=99)
    other.source = "wide-suspect"
    with pytest.raises(IncompatibleModelError, match="wide-suspect.*cross_attention_dim|wide-suspect.*cross-attention"):
        ModelPair.load(str(tiny_model_dir), suspect=other)


def test_a_lora_that_does_not_fit_is_refused_and_leaves_the_base_as_it_was(tiny_model_dir, lora_dir, tmp_path):
    state = load_file(str(lora_dir / "pytorch_lora_weights.safetensors"))
    key = next(k for k in state if k.startswith("unet.") and "down" in k.rsplit(".", 3)[-3:][0] + k)
    wrong_shape = dict(state)
    wrong_shape[key] = torch.zeros(wrong_shape[key].shape[0], wrong_shape[key].shape[1] + 3)
    (tmp_path / "shape").mkdir()
    save_file(wrong_shape, str(tmp_path / "shape" / "pytorch_lora_weights.safetensors"))
    renamed = {k.replace("unet.", "unet.nowhere_blocks.", 1) if k.startswith("unet.") else k: v for k, v in state.items()}
    save_file(renamed, str(tmp_path / "renamed.safetensors"))

    base = load(str(tiny_model_dir), device="cpu", dtype="fp32")
    latents = base.encode(images(), mode="mean")
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))
    t = torch.full((2,), 300)
    with torch.no_grad():
        before = base.training_loss(latents, base.embed_prompt(PROMPT, 2), timesteps=t, noise=noise)
    for bad in (tmp_path / "shape", tmp_path / "renamed.safetensors"):
        with pytest.raises(IncompatibleModelError) as info:
            ModelPair.load(base, lora=bad)
        message = str(info.value)
        assert "\n" not in message and str(bad) in message and str(tiny_model_dir) in message
        with torch.no_grad():
            after = base.training_loss(latents, base.encode_prompt_uncached([PROMPT]).expand(2, -1, -1),
                                       timesteps=t, noise=noise)  # fmt: skip
        assert torch.equal(before, after)
    # the refused LoRA left no adapter behind: a good one still loads on the same base
    ModelPair.load(base, lora=lora_dir)


def test_not_a_lora_and_missing_lora(tiny_model_dir, tmp_path):
    (tmp_path / "notes.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(IncompatibleModelError, match="notes.safetensors"):
        ModelPair.load(str(tiny_model_dir), lora=tmp_path / "notes.safetensors")
    save_file({"unet.conv_in.weight": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(IncompatibleModelError, match="plain.safetensors"):
        ModelPair.load(str(tiny_model_dir), lora=tmp_path / "plain.safetensors")
    with pytest.raises(ModelNotFoundError, match="missing"):
        ModelPair.load(str(tiny_model_dir), lora=tmp_path / "missing")


def test_exactly_one_suspect(tiny_model_dir, lora_dir, pair):
    with pytest.raises(InvalidArgumentError):
        ModelPair.load(str(tiny_model_dir))
    with pytest.raises(InvalidArgumentError):
        ModelPair.load(str(tiny_model_dir), suspect=str(tiny_model_dir), lora=lora_dir)
    with pytest.raises(InvalidArgumentError):
        with pair.using("other"):
            pass


def test_a_lora_file_written_by_the_trainer_command(tiny_model_dir, tiny_model, tmp_path):
    from tiny_lora import train_lora

    folder = train_lora(tiny_model_dir, tmp_path, resolution=32, text_encoder=True, steps=1)
    pair = ModelPair.load(str(tiny_model_dir), lora=folder / "pytorch_lora_weights.safetensors", device="cpu")
    assert pair.is_lora and pair.base.dtype == torch.float32
    latents, t, noise = draws(pair)
    with torch.no_grad():
        pre, ft = pair.losses(latents, t, noise)
        fresh = tiny_model.training_loss(latents, tiny_model.embed_prompt("", 2), timesteps=t, noise=noise)
    assert torch.equal(pre, fresh) and not torch.allclose(pre, ft)
    # the same LoRA through the handle's own copy-based loader gives the suspect's numbers
    copy = tiny_model.with_lora(folder)
    with torch.no_grad():
        via_copy = copy.training_loss(latents, copy.embed_prompt("", 2), timesteps=t, noise=noise)
    assert torch.allclose(ft, via_copy, atol=1e-6)
