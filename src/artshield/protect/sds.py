"""SDS+, SDS− and SDST: AdvDM's objective with the score-distillation gradient (Xue et al., ICLR 2024).

Paper: "Toward Effective Protection Against Diffusion-Based Mimicry through Score Distillation",
https://arxiv.org/abs/2311.12832. Reference code: xavihart/Diff-Protect, ``code/attacks.py::pgd_sds``.

Distance measure: L-inf (pixel units of a [0, 1] image).

The semantic loss is the diffusion training loss of AdvDM, but its gradient skips the UNet's Jacobian:
g = (∂E(x′)/∂x′)ᵀ (ε_θ(z_t, t, c) − ε), one t ~ U[0, 1000) and one ε per step. The UNet runs under
``no_grad``; only the VAE encoder is differentiated (the paper reports about half AdvDM's time and memory;
``benchmarks/protect_methods.py`` measures ours). Here the objective returns a *surrogate*: its value is the SDS loss
½‖ε_θ(z_t, t, c) − ε‖² (summed per sample) and its gradient with respect to the latent is exactly
(ε_θ − ε), so autograd never enters the UNet.

- ``sds+`` (alias ``sds``) maximises the semantic loss; ``sds-`` minimises it (the paper's recommended
  variant: stronger, with more natural-looking perturbations).
- ``sdst`` is SDS− plus the textural term: the update is sign(−5·g_SDS − ∇‖E(x′) − E(x_T)‖²), x_T the
  Mist target pattern, i.e. it minimises 5·L_SDS + ‖E(x′) − E(x_T)‖²_sum.

Defaults follow ``configs/attack/base.yaml``: eps 16/255 (Diff-Protect doubles its [0, 1] budget into
[−1, 1], so this is 16 grey levels), step 1/255, 100 steps, no random start, ``target_rate`` 5, latents
sampled from the VAE posterior. Deviations: the prompt defaults to AdvDM's "a painting" (the reference
picks one from the folder name); the reference encodes the image twice per step (once under no_grad for
the UNet input, once for the backward pass), here once; with v-prediction models the residual is taken
against the velocity target. The Mist pattern is tiled, not resized (see :mod:`.targets`).

Example::

    >>> protected = SDSMinus(load("demo"), seed=0)(images)
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..models import randn_like
from .base import ProtectionMethod
from .targets import TargetPattern


class SDSPlus(ProtectionMethod):
    """SDS+ (see the module docstring): maximise the diffusion loss along the score-distillation gradient.

    Args:
        model (`DiffusionModel`): the model whose editing/fine-tuning the protection targets.
        prompt (`str`, defaults to `"a painting"`): the text condition c (AdvDM's default).
        eps (defaults to 16/255), steps (100), step_size (1/255) and the shared engine settings of
            :class:`ProtectionMethod` (Diff-Protect ``base.yaml``).

    Shape:
        images: (B, 3, H, W) or (B, 1, H, W) in [0, 1], any H and W. Output: the same.
    """

    name = "sds+"
    summary = "AdvDM's loss ascended along the score-distillation gradient, no UNet backward (Xue et al. 2024)"
    hyperparameters: ClassVar[tuple[str, ...]] = ("prompt",)
    default_eps = 16 / 255
    default_steps = 100
    default_step_size = 1 / 255

    def __init__(self, model, *, prompt: str = "a painting", **engine_settings):
        super().__init__(model, **engine_settings)
        self.prompt = prompt

    def sds_surrogate(self, latents: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B,) whose value is ½‖ε_θ(z_t) − ε‖² and whose gradient w.r.t. `latents` is (ε_θ(z_t) − ε)."""
        embeds = self.model.embed_prompt(self.prompt, batch_size=latents.shape[0])
        with torch.no_grad():  # the point of SDS: no graph through the UNet
            timesteps = self.model.sample_timesteps(latents.shape[0], generator)
            noise = randn_like(latents, generator)
            clean = latents.detach()
            noisy = self.model.add_noise(clean, noise, timesteps)
            prediction = self.model.predict_noise(noisy, timesteps, embeds)
            residual = prediction - self.model.training_target(clean, noise, timesteps)
            value = 0.5 * residual.square().flatten(1).sum(dim=1)
        linear = (latents * residual).flatten(1).sum(dim=1)
        return value + (linear - linear.detach())

    def objective(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        latents = self.model.encode(images, mode="sample", generator=generator)
        return self.sds_surrogate(latents, generator)


class SDSMinus(SDSPlus):
    """SDS− (see the module docstring): *minimise* the diffusion loss along the SDS gradient — Diff-Protect's
    recommended protection. Same arguments and defaults as :class:`SDSPlus`."""

    name = "sds-"
    summary = "SDS descending the diffusion loss: Diff-Protect's recommended variant (Xue et al. 2024)"
    minimize = True


class SDST(SDSMinus):
    """SDST (see the module docstring): SDS− plus a pull of the latent towards the Mist target pattern.

    Args:
        target_rate (`float`, defaults to 5): weight of the SDS term against the textural term
            (Diff-Protect ``target_rate``).
        target (*optional*): a target image (tensor (1, 3, h, w) in [0, 1], PIL image or path), tiled over
            the image; defaults to the shipped Mist-style pattern.
        prompt and the engine settings as :class:`SDSPlus`.
    """

    name = "sdst"
    summary = "SDS- plus Mist's textural target term, target rate 5 (Xue et al. 2024)"
    hyperparameters = ("prompt", "target_rate", "target")

    def __init__(self, model, *, target_rate: float = 5.0, target=None, **settings):
        super().__init__(model, **settings)
        self.target_rate = target_rate
        self.pattern = TargetPattern(model, target)
        self.target = self.pattern.description

    def objective(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        latents = self.model.encode(images, mode="sample", generator=generator)
        textural = (latents - self.pattern.latents(images)).square().flatten(1).sum(dim=1)
        return self.target_rate * self.sds_surrogate(latents, generator) + textural
