"""DiffusionGuard: protect against inpainting by maximising the early-step noise prediction (Choi et al., ICLR 2025).

Paper: "DiffusionGuard: A Robust Defense Against Malicious Diffusion-based Image Editing",
https://arxiv.org/abs/2410.05694. Reference code: choi403/DiffusionGuard (``attacks/attack_diffusionguard.py``,
``attacks/common.py``, ``utils/mask_generation.py``, ``config/diffusionguard.yaml``).

Distance measure: L-inf (pixel units of a [0, 1] image).

Objective: maximise ‖ε_θ([z_T, m, E(x′ ⊙ (1 − m))], t₀, c = "")‖₂ — the inpainting UNet's noise prediction
at the first step of a 4-step schedule (t₀ = 751 for SD's schedule), z_T ~ N(0, I) redrawn every step, an
empty prompt, no guidance; gradients through the UNet and the VAE encoder. The masked-out part of the
image is mid-grey (0 in [−1, 1]), as diffusers' inpainting pipeline feeds it.

Mask convention (``protect --mask``): white (m = 1) is the region an editor may repaint; the protection
covers the rest, and the perturbation stays there. Without a mask, the default is :func:`centre_ellipse_mask`:
a centred ellipse (semi-axes 3/8 of the sides, ≈44 % of the image) is protected, its surroundings are editable.

Mask augmentation (every step): :func:`.masks.contour_shrink` shrinks the protected region by a smooth
random depth, inside the original region — a distance-transform version of the reference's contour-point
shuffling (see :mod:`.masks` for the deviation). The UNet sees the augmented mask; the perturbation stays
confined to the original one.

Defaults (``config/diffusionguard.yaml``): eps 8/255 and step 0.5/255 (its 16/255 and 1/255 applied to
[−1, 1] images), 800 steps, ``grad_reps`` 1.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from ..errors import InvalidArgumentError
from ..masks import centre_ellipse_mask, contour_shrink, distance_to_editable
from ..models import randn_like
from .base import ProtectionMethod


class DiffusionGuard(ProtectionMethod):
    """DiffusionGuard (see the module docstring). Requires an inpainting (9-channel) model.

    Args:
        model (`DiffusionModel`): an inpainting checkpoint, e.g. ``runwayml/stable-diffusion-inpainting``.
        prompt (`str`, defaults to `""`): the editing prompt assumed (the reference's empty prompt).
        num_inference_steps (`int`, defaults to 4): t₀ is the first timestep of a DDIM schedule this long.
        augment (`bool`, defaults to `True`): contour-shrink the mask every step (``contour_shrink``).
        contour_iters (15), contour_strength (1.1), contour_smoothness (0.1): the reference's ``mask`` config.
        eps (defaults to 8/255), steps (800), step_size (0.5/255) and the shared engine settings.

    Shape:
        images: (B, 3, H, W) or (B, 1, H, W) in [0, 1], any H and W; mask (1 or B, 1, H, W), white = editable.

    Example::

        >>> protected = DiffusionGuard(load("runwayml/stable-diffusion-inpainting"), seed=0)(images, mask)
    """

    name = "diffusionguard"
    summary = "DiffusionGuard: inflate an inpainting model's first-step noise, mask-robust (Choi et al. 2025)"
    hyperparameters: ClassVar[tuple[str, ...]] = (
        "prompt", "num_inference_steps", "augment", "contour_iters", "contour_strength", "contour_smoothness",
    )
    default_eps = 8 / 255
    default_steps = 800
    default_step_size = 0.5 / 255

    def __init__(self, model, *, prompt: str = "", num_inference_steps: int = 4, augment: bool = True,
                 contour_iters: int = 15, contour_strength: float = 1.1, contour_smoothness: float = 0.1,
                 **settings):
        if not model.is_inpainting:
            raise InvalidArgumentError(
                f"DiffusionGuard protects against inpainting and needs an inpainting model, but {model.source} is a "
                "text-to-image model; pass an inpainting checkpoint (e.g. runwayml/stable-diffusion-inpainting, or demo-inpaint offline)."
            )
        super().__init__(model, **settings)
        self.prompt, self.num_inference_steps, self.augment = prompt, num_inference_steps, augment
        self.contour_iters, self.contour_strength, self.contour_smoothness = contour_iters, contour_strength, contour_smoothness
        scheduler = model.ddim_scheduler()
        scheduler.set_timesteps(num_inference_steps)
        self.first_timestep = int(scheduler.timesteps[0])
        self.init_noise_sigma = float(scheduler.init_noise_sigma)

    def default_mask(self, images: torch.Tensor) -> torch.Tensor:
        return centre_ellipse_mask(images)

    def conditions(self, images: torch.Tensor, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        mask = self.default_mask(images) if mask is None else mask
        area = (mask < 0.5).flatten(1).sum(dim=1).float()
        radius = torch.sqrt(math.pi * area / 2).view(-1, 1, 1, 1).expand_as(mask)
        return {"mask": mask, "depth": distance_to_editable(mask), "radius": radius}

    def objective(self, images: torch.Tensor, generator: torch.Generator, mask, depth, radius) -> torch.Tensor:
        batch = images.shape[0]
        if self.augment:
            mask = contour_shrink(mask, depth, radius[..., :1, :1], generator, self.contour_iters,
                                  self.contour_strength, self.contour_smoothness)
        mask = mask.expand(batch, -1, -1, -1)
        condition = self.model.inpaint_condition(images, mask, generator)
        masked = condition[:, 1:]  # the masked image's latents
        latents = randn_like(masked, generator) * self.init_noise_sigma
        timesteps = torch.full((batch,), self.first_timestep, device=masked.device, dtype=torch.long)
        embeds = self.model.embed_prompt(self.prompt, batch_size=batch)
        prediction = self.model.predict_noise(latents, timesteps, embeds, inpaint_condition=condition)
        return prediction.flatten(1).norm(dim=1)
