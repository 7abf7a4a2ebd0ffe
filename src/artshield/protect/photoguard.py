"""PhotoGuard's encoder attack and diffusion attack (Salman et al., ICML 2023).

Paper: "Raising the Cost of Malicious AI-Powered Image Editing", https://arxiv.org/abs/2302.06588.
Reference code: MadryLab/photoguard (``notebooks/demo_simple_attack_img2img.ipynb``,
``demo_complex_attack_inpainting.ipynb``, ``demo/app.py``). Its budgets are applied to [−1, 1] images;
here they are halved into pixel units of a [0, 1] image.

Masks (``protect --mask``): white is what an editor may repaint; the perturbation stays in the black part,
as PhotoGuard's inpainting demos restrict it to the unmasked region.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..masks import centre_ellipse_mask
from ..models import randn_like
from .base import ProtectionMethod
from .targets import TargetImage


class PhotoGuard(ProtectionMethod):
    """PhotoGuard's encoder attack: minimise ‖E_μ(x′) − z_target‖₂, the VAE-mean latent's distance to a target.

    Args:
        model (`DiffusionModel`): the model whose img2img/inpainting the protection targets.
        target (*optional*): target image (tensor in [0, 1], PIL image or path), resized to the image;
            defaults to mid-grey, as the inpainting demo (``demo/app.py``). The img2img notebook targets the
            zero latent instead.
        eps (defaults to 0.03 ≈ 7.7/255: the img2img notebook's 0.06 in [−1, 1]), steps (1000), step_size
            (0.01: its 0.02), a random start in the ball and a step decaying linearly to step_size/100, as
            the notebook's ``pgd``; plus the shared engine settings of :class:`ProtectionMethod`.

    Shape:
        images: (B, 3, H, W) or (B, 1, H, W) in [0, 1], any H and W. Output: the same.

    Example::

        >>> protected = PhotoGuard(load("demo"), steps=200, seed=0)(images)
    """

    name = "photoguard"
    summary = "PhotoGuard encoder attack: push the VAE latent to a grey target's (Salman et al. 2023)"
    minimize = True
    hyperparameters: ClassVar[tuple[str, ...]] = ("target",)
    default_eps = 0.03
    default_steps = 1000
    default_step_size = 0.01
    engine_defaults: ClassVar[dict] = {"random_start": True, "schedule": "linear"}

    def __init__(self, model, *, target=None, **settings):
        super().__init__(model, **settings)
        self._target = TargetImage(target)
        self.target = self._target.description
        self._latents: dict[tuple, torch.Tensor] = {}

    def objective(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        key = (*images.shape[-2:], images.device)
        if key not in self._latents:
            with torch.no_grad():
                self._latents[key] = self.model.encode(self._target.like(images), mode="mean")
        latents = self.model.encode(images, mode="mean")
        return (latents - self._latents[key]).flatten(1).norm(dim=1)


class PhotoGuardDiffusion(ProtectionMethod):
    """PhotoGuard's diffusion attack: minimise ‖D(denoise(x′)) − x_target‖₂ through a short differentiable
    DDIM sampling run — inpainting from pure noise with the image's unmasked part as condition (an
    inpainting model), or img2img from the noised image (a text-to-image model).

    Args:
        model (`DiffusionModel`): an inpainting model (PhotoGuard's setting) or a text-to-image model.
        prompt (`str`, defaults to `""`): the notebook's prompt. With an empty prompt classifier-free
            guidance is the identity, so the unconditional pass is skipped (same result, half the UNet work).
        denoising_steps (`int`, defaults to 4): DDIM steps back-propagated through (``num_inference_steps``).
        guidance_scale (`float`, defaults to 7.5), eta (`float`, defaults to 1.0): as the notebook.
        strength (`float`, defaults to 0.5): img2img only (the img2img demo's); the schedule has
            ``denoising_steps / strength`` steps of which the last `denoising_steps` run.
        target (*optional*): target image, resized; defaults to mid-grey (the notebook's zero tensor).
        eps (defaults to 8.0 in L2: the notebook's 16 in [−1, 1], at 512²; scale it with the image's side),
            steps (200), step_size (0.5: its 1), normalised L2 steps, samples_per_step (10: ``grad_reps``).
            :meth:`from_strength` presets switch to L-inf, like the notebook's ``super_linf`` variant.

    Deviations: DDIM replaces the pipeline's PNDM; ``model.decode`` clips to [0, 1] before the loss.

    Shape:
        images: (B, 3, H, W) or (B, 1, H, W) in [0, 1], any H and W. Output: the same.
    """

    name = "photoguard-diffusion"
    summary = "PhotoGuard diffusion attack: steer a 4-step differentiable edit to grey (Salman et al. 2023)"
    minimize = True
    hyperparameters = ("prompt", "denoising_steps", "guidance_scale", "eta", "strength", "target")
    default_eps = 8.0
    default_steps = 200
    default_step_size = 0.5
    engine_defaults: ClassVar[dict] = {"norm": "l2", "samples_per_step": 10}

    def __init__(self, model, *, prompt: str = "", denoising_steps: int = 4, guidance_scale: float = 7.5,
                 eta: float = 1.0, strength: float = 0.5, target=None, **settings):
        super().__init__(model, **settings)
        self.prompt, self.denoising_steps, self.guidance_scale = prompt, denoising_steps, guidance_scale
        self.eta, self.strength = eta, strength
        self._target = TargetImage(target)
        self.target = self._target.description
        self.scheduler = model.ddim_scheduler()

    def default_mask(self, images: torch.Tensor) -> torch.Tensor | None:
        return centre_ellipse_mask(images) if self.model.is_inpainting else None

    def conditions(self, images: torch.Tensor, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        if not self.model.is_inpainting:
            return {}
        return {"mask": self.default_mask(images) if mask is None else mask}

    def objective(self, images: torch.Tensor, generator: torch.Generator, mask=None) -> torch.Tensor:
        model, batch = self.model, images.shape[0]
        condition = None
        if model.is_inpainting:
            mask = mask.expand(batch, -1, -1, -1)
            condition = model.inpaint_condition(images, mask, generator)
            self.scheduler.set_timesteps(self.denoising_steps)
            timesteps = self.scheduler.timesteps
            latents = randn_like(condition[:, 1:], generator) * self.scheduler.init_noise_sigma
        else:
            self.scheduler.set_timesteps(max(self.denoising_steps, round(self.denoising_steps / self.strength)))
            timesteps = self.scheduler.timesteps[-self.denoising_steps :]
            clean = model.encode(images, mode="sample", generator=generator)
            latents = model.add_noise(clean, randn_like(clean, generator), timesteps[:1].repeat(batch))
        guided = self.prompt != "" and self.guidance_scale != 1.0
        prompts = ["", self.prompt] if guided else [self.prompt]
        embeds = torch.cat([model.embed_prompt(p, batch_size=batch) for p in prompts])
        for t in timesteps:  # a sampling run, differentiated end to end (not an optimisation loop)
            copies = len(prompts)
            cond = None if condition is None else condition.repeat(copies, 1, 1, 1)
            prediction = model.predict_noise(latents.repeat(copies, 1, 1, 1), t.repeat(batch * copies), embeds, cond)
            if guided:
                uncond, text = prediction.chunk(2)
                prediction = uncond + self.guidance_scale * (text - uncond)
            noise = randn_like(latents, generator) if self.eta > 0 else None
            latents = self.scheduler.step(prediction, t, latents, eta=self.eta, variance_noise=noise).prev_sample
        decoded = model.decode(latents)
        return (decoded - self._target.like(decoded)).flatten(1).norm(dim=1)
