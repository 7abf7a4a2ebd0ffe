"""A LoRA surrogate of a model's UNet, fine-tuned a few steps at a time (for Anti-DreamBooth's ASPL).

This holds the only training loop under ``protect/``: it fits LoRA *weights* to images with AdamW on the
diffusion loss — what a mimic's DreamBooth run would do — and never touches a perturbation, which stays
the engine's job. It lives apart from the method files so that those hold objectives only
(``tests/test_protect_methods.py`` greps them for loops and checks this exception explicitly).
"""

from __future__ import annotations

import copy
import dataclasses

import torch

LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]  # attention projections, as diffusers' LoRA scripts


class LoraSurrogate:
    """A rank-`rank` LoRA on a *copy* of `model`'s UNet (the caller's model is never modified).

    Args:
        model (`DiffusionModel`): the frozen model to copy.
        rank (`int`, defaults to 4): LoRA rank (Mist-v2's surrogate); ``lora_alpha = rank``.
        learning_rate (`float`, defaults to 1e-4): AdamW learning rate (Mist-v2's LoRA surrogate).
        generator (`torch.Generator`, *optional*): seeds the LoRA initialisation (A ~ N(0, 1/rank²), B = 0,
            peft's "gaussian" init) so that runs are reproducible.

    Attributes:
        model: a :class:`DiffusionModel` sharing VAE, text encoder and tokenizer with `model`, whose UNet
            is the LoRA-adapted copy — pass it wherever a model is expected.
    """

    def __init__(self, model, *, rank: int = 4, learning_rate: float = 1e-4, generator: torch.Generator | None = None):
        from peft import LoraConfig

        from ..compat import check_lora_stack

        check_lora_stack(text_encoder=False)  # the surrogate trains a UNet LoRA through diffusers/peft

        unet = copy.deepcopy(model.unet)
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS))
        self.parameters = []
        for name, parameter in unet.named_parameters():
            if "lora_" not in name:
                continue
            # LoRA weights train in fp32 even over fp16/bf16 base weights (as diffusers' LoRA scripts do).
            parameter.data = parameter.data.float()
            if "lora_A" in name:
                draw = torch.randn(parameter.shape, generator=generator, device="cpu" if generator is None else generator.device)
                parameter.data.copy_(draw.to(parameter.device) / rank)
            else:
                parameter.data.zero_()
            parameter.requires_grad_(False)
            self.parameters.append(parameter)
        unet.eval()
        self.model = dataclasses.replace(model, unet=unet)
        self.learning_rate = learning_rate

    def state(self) -> list[torch.Tensor]:
        """A copy of the LoRA weights (what Anti-DreamBooth's ``copy.deepcopy(f)`` keeps)."""
        return [parameter.detach().clone() for parameter in self.parameters]

    def load(self, state: list[torch.Tensor]) -> None:
        for parameter, saved in zip(self.parameters, state, strict=True):
            parameter.data.copy_(saved)

    def train(self, images: torch.Tensor, prompt: str, steps: int, generator: torch.Generator) -> float:
        """`steps` AdamW steps of the diffusion loss on `images` (a fresh optimiser per call, as Anti-DreamBooth's
        ``train_one_epoch``); returns the last loss. Latents are re-drawn from the VAE posterior every step."""
        model = self.model
        embeds = model.embed_prompt(prompt, batch_size=images.shape[0])
        optimizer = torch.optim.AdamW(self.parameters, lr=self.learning_rate)
        loss = torch.zeros(())
        for parameter in self.parameters:
            parameter.requires_grad_(True)
        try:
            for _ in range(steps):
                with torch.no_grad():
                    latents = model.encode(images.detach(), mode="sample", generator=generator)
                with torch.enable_grad():
                    loss = model.training_loss(latents, embeds, generator=generator).mean()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                optimizer.step()
        finally:
            for parameter in self.parameters:  # PGD against the surrogate must not build graphs for its weights
                parameter.requires_grad_(False)
        return float(loss.detach())
