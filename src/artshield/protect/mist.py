"""Mist (fused textural + semantic) and Mist-v2's ``lunet`` target-latent attack.

Mist v1: "Mist: Towards Improved Adversarial Examples for Diffusion Models", https://arxiv.org/abs/2305.12683
(reference code psyker-team/mist, ``mist_v3.py``, ``--mode 2``). Mist-v2: "Understanding and Improving
Adversarial Attacks on Latent Diffusion Model", https://arxiv.org/abs/2310.04687 (reference code
mist-project/mist-v2, ``attacks/mist.py``, ``--mode lunet``).

Distance measure: L-inf (pixel units of a [0, 1] image).

Both pull the image towards a *target pattern* x_T, a black-and-white high-frequency texture. Ours is
``assets/mist_target.png``, drawn by ``assets/make_target.py`` (Mist ships its own ``MIST.png``). The
pattern is **tiled** over the image at its own pixel scale, not resized as the references do (they resize
image and pattern to 512² together): tiling keeps the texture's frequency in latent cells the same at
every image size and aspect ratio, and at 512² it is what the references see.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from ..models import randn_like
from .base import ProtectionMethod
from .targets import TargetPattern

# Mist weighs a summed textural loss against a mean semantic loss at 512² (a 64×64 latent); the textural
# sum is rescaled to that area so the balance does not drift with the image size.
REFERENCE_LATENT_AREA = 64 * 64


class Mist(ProtectionMethod):
    """Mist v1.2, fused mode: minimise ‖E(x′) − E(x_T)‖²_sum − w·L_AdvDM(x′).

    The textural term drags the latent towards the target pattern; the semantic term is AdvDM's training
    loss (one t and ε per step, gradients through UNet and encoder), *raised* with weight w = 10^(rate+3).

    Args:
        model (`DiffusionModel`): the model whose fine-tuning/img2img the protection targets.
        fusion_weight (`float`, defaults to 1e4): w; Mist's ``--rate 1`` (``mist_utils.py``).
        prompt (`str`, defaults to `"a painting"`): the text condition (``mist_v3.py``).
        target (*optional*): a target image (tensor in [0, 1], PIL image or path), tiled; defaults to the
            shipped pattern.
        eps (defaults to 16/255), steps (100), step_size (1/255), random start (advertorch's
            ``rand_init=True``) and the shared engine settings of :class:`ProtectionMethod`.

    Deviations: the target latent is the VAE mean (Mist re-samples it every step); the textural sum is
    rescaled to a 64×64 latent (exact at 512², see ``REFERENCE_LATENT_AREA``); no random-crop
    preprocessing (use ``robust=`` for EOT).

    Shape:
        images: (B, 3, H, W) or (B, 1, H, W) in [0, 1], any H and W. Output: the same.

    Example::

        >>> protected = Mist(load("demo"), eps=8 / 255, seed=0)(images)
    """

    name = "mist"
    summary = "Mist: pull the latent to a target texture while raising AdvDM's loss (Liang et al. 2023)"
    minimize = True
    hyperparameters: ClassVar[tuple[str, ...]] = ("prompt", "fusion_weight", "target")
    default_eps = 16 / 255
    default_steps = 100
    default_step_size = 1 / 255
    engine_defaults: ClassVar[dict] = {"random_start": True}

    def __init__(self, model, *, fusion_weight: float = 1e4, prompt: str = "a painting", target=None, **settings):
        super().__init__(model, **settings)
        self.fusion_weight, self.prompt = fusion_weight, prompt
        self.pattern = TargetPattern(model, target)
        self.target = self.pattern.description

    def objective(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        latents = self.model.encode(images, mode="sample", generator=generator)
        area = latents.shape[-2] * latents.shape[-1]
        textural = (latents - self.pattern.latents(images)).square().flatten(1).sum(dim=1)
        embeds = self.model.embed_prompt(self.prompt, batch_size=images.shape[0])
        semantic = self.model.training_loss(latents, embeds, generator=generator)
        return textural * (REFERENCE_LATENT_AREA / area) - self.fusion_weight * semantic


class MistLunet(ProtectionMethod):
    """Mist-v2 ``lunet``: minimise E_{t,ε}‖ε_θ(z′_t, t, c) − z^T‖², z′ = E_μ(x′) and z^T the target's latent.

    Fine-tuning on such images learns a fixed counter-bias towards the pattern ("chaotic texture").

    Args:
        model (`DiffusionModel`): the model whose fine-tuning the protection targets.
        prompt (`str`, defaults to `"a picture"`): Mist-v2's ``--instance_prompt``.
        target (*optional*): a target image, tiled; defaults to the shipped pattern.
        eps (defaults to 4/255: Mist-v2's 8/255 applied in [−1, 1]), steps (150: 5 × 30 PGD steps),
            step_size (0.0025 ≈ 0.64/255: its 0.005 in [−1, 1]) and the shared engine settings.

    Deviations: Mist-v2 alternates these PGD steps with LoRA training of a surrogate (ASPL-style, 5 rounds ×
    10 steps); here the objective runs against the frozen model (see :class:`ASPL` for the alternation);
    the target latent is the VAE mean (Mist-v2 samples it once); bf16 and encoder checkpointing are left to
    the model's dtype.

    Shape:
        images: (B, 3, H, W) or (B, 1, H, W) in [0, 1], any H and W. Output: the same.
    """

    name = "mist-lunet"
    summary = "Mist-v2: make the UNet's prediction match the target texture's latent (Zheng et al. 2023)"
    minimize = True
    hyperparameters: ClassVar[tuple[str, ...]] = ("prompt", "target")
    default_eps = 4 / 255
    default_steps = 150
    default_step_size = 0.0025

    def __init__(self, model, *, prompt: str = "a picture", target=None, **settings):
        super().__init__(model, **settings)
        self.prompt = prompt
        self.pattern = TargetPattern(model, target)
        self.target = self.pattern.description

    def objective(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        latents = self.model.encode(images, mode="mean")
        embeds = self.model.embed_prompt(self.prompt, batch_size=images.shape[0])
        timesteps = self.model.sample_timesteps(images.shape[0], generator)
        noise = randn_like(latents, generator)
        prediction = self.model.predict_noise(self.model.add_noise(latents, noise, timesteps), timesteps, embeds)
        target = self.pattern.latents(images)
        return F.mse_loss(prediction, target, reduction="none").flatten(1).mean(dim=1)
