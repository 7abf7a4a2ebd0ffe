"""AdvDM: maximise the latent-diffusion training loss of the image (Liang et al., ICML 2023).

Paper: "Adversarial Example Does Good: Preventing Painting Imitation from Diffusion Models via Adversarial
Examples", https://arxiv.org/abs/2302.04578. Reference code: psyker-team/mist, ``--mode 0``.

Distance measure: L-inf (pixel units of a [0, 1] image).

Objective: E_{t, ε} ‖ε_θ(z_t(E(x′)), t, c) − ε‖², differentiated through the UNet and the VAE encoder.
Each step is one Monte-Carlo draw of t ~ U[t_min, t_max) and ε ~ N(0, I) (the paper's "Monte-Carlo
estimation … upon different latent variables"); ``samples_per_step`` averages more draws per step.

Defaults follow the reference code (``mist_v3.py``): eps 16/255, step 1/255, 100 steps, prompt
"a painting", the full timestep range, and the latent *sampled* from the VAE posterior (LDM's
``get_first_stage_encoding``). Deviations: the loss is the plain MSE of the prediction per sample (the
reference's ``p_losses`` adds LDM's per-timestep logvar weighting, which is constant zero in SD's
config); with v-prediction checkpoints (SD 2.x 768) the target is the velocity, as in their training.

Example::

    >>> from artshield.models import load
    >>> from artshield.protect import AdvDM
    >>> protected = AdvDM(load("demo"), eps=8 / 255, steps=100, seed=0)(images)
"""

from __future__ import annotations

import torch

from ..errors import InvalidArgumentError
from .base import ProtectionMethod


class AdvDM(ProtectionMethod):
    """AdvDM (see the module docstring).

    Args:
        model (`DiffusionModel`): the model whose fine-tuning/img2img the protection targets.
        prompt (`str`, defaults to `"a painting"`): the text condition c.
        t_range (`tuple[int, int]`, defaults to the full `(0, 1000)`): timesteps are drawn from [t_min, t_max).
        latent (`str`, defaults to `"sample"`): ``"sample"`` from the VAE posterior or its ``"mean"``.
        eps (defaults to 16/255), steps (100), step_size (1/255) and the shared engine settings of
            :class:`ProtectionMethod`.

    Shape:
        images: (B, 3, H, W) or (B, 1, H, W) in [0, 1], any H and W. Output: the same.
    """

    name = "advdm"
    summary = "maximise the diffusion training loss through the UNet and VAE encoder (Liang et al. 2023)"
    hyperparameters = ("prompt", "t_range", "latent")
    default_eps = 16 / 255
    default_steps = 100
    default_step_size = 1 / 255

    def __init__(
        self,
        model,
        *,
        prompt: str = "a painting",
        t_range: tuple[int, int] | None = None,
        latent: str = "sample",
        **engine_settings,
    ):
        super().__init__(model, **engine_settings)
        if latent not in ("sample", "mean"):
            raise InvalidArgumentError(f"`latent` must be 'sample' or 'mean', but is {latent!r}.")
        t_range = tuple(t_range) if t_range is not None else (0, model.num_train_timesteps)
        if not 0 <= t_range[0] < t_range[1] <= model.num_train_timesteps:
            raise InvalidArgumentError(
                f"`t_range` must satisfy 0 <= t_min < t_max <= {model.num_train_timesteps}, but is {t_range}."
            )
        self.prompt, self.t_range, self.latent = prompt, t_range, latent

    def objective(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        latents = self.model.encode(images, mode=self.latent, generator=generator)
        embeds = self.model.embed_prompt(self.prompt, batch_size=images.shape[0])
        return self.model.training_loss(
            latents, embeds, generator=generator, t_min=self.t_range[0], t_max=self.t_range[1]
        )
