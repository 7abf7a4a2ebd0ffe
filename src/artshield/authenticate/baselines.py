"""Membership-inference baselines: does the suspect model fit an image unusually well?

Each baseline is a small class configured once and applied with ``score(pair, images)``: it returns one
number per image, **higher = more likely a training member**, so every method (CGI-DM included) is read and
thresholded the same way (:mod:`artshield.authenticate.calibration`).

- :class:`LossAttack` (``"loss"``): −L_ft, the suspect's denoising loss averaged over a fixed set of timesteps
  and noise draws. Members are denoised better.
- :class:`CalibratedLoss` (``"loss-diff"``): L_pre − L_ft at the same draws. Subtracting the base model's loss
  cancels how easy the image is for *any* model (flat colours are easy), leaving what fine-tuning added.
- :class:`SecMI` (``"secmi"``, Duan et al., ICML 2023): the t-error of a deterministic DDIM step. Invert the
  image with DDIM to t_sec − k (steps of k), go one more step up to t_sec and back down; −‖x̃ − x̂‖². Members
  sit where the model's deterministic flow is self-consistent. Defaults t_sec=100, k=10 (SecMI's).
- :class:`PIA` (``"pia"``, Kong et al., ICLR 2024): proximal initialisation. Take ε₀ = the model's noise
  prediction on the clean latent at t = 0, noise the latent with it to t, predict again; −‖ε_t − ε₀‖ₚᵖ.
  Two queries per image. Defaults t=200, p=4 (PIA's ℓ4 distance).

All four run on the suspect in :class:`~artshield.authenticate.pair.ModelPair` (``loss-diff`` on both), on the
pair's prompt, with no gradients. Random draws (only the loss attacks draw noise) come from a generator seeded
by ``seed`` unless one is passed, and the same noise is used for every image of a call (common random
numbers: differences between images are not noise-draw differences), so scores are reproducible and members
and non-members scored in separate calls with the same seed see the same draws.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..errors import InvalidArgumentError
from .pair import ModelPair


def _check_int(name: str, value, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidArgumentError(f"`{name}` must be an integer, but is {value!r}.")
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise InvalidArgumentError(f"`{name}` must be {bound}, but is {value}.")
    return int(value)


def as_image_batch(images) -> torch.Tensor:
    """(B, 3, H, W) float images in [0, 1] from a tensor of that shape or a sequence of (3, H, W) tensors."""
    if isinstance(images, torch.Tensor):
        batch = images.unsqueeze(0) if images.dim() == 3 else images
    else:
        items = list(images)
        if not items:
            raise InvalidArgumentError("there are no images to score.")
        shapes = {tuple(item.shape) for item in items}
        if len(shapes) != 1:
            raise InvalidArgumentError(f"images to score must share one size, but have sizes {sorted(shapes)}.")
        batch = torch.stack([torch.as_tensor(item) for item in items])
    if batch.dim() != 4 or batch.shape[1] != 3 or batch.shape[0] == 0:
        raise InvalidArgumentError(f"images must be (B, 3, H, W), but have shape {tuple(batch.shape)}.")
    return batch.float()


class Baseline:
    """Common part of the baselines: batching, encoding, seeding.

    Args:
        batch_size: images per UNet call.
        seed: seed of the generator used when :meth:`score` is given none.
    """

    name = "baseline"

    def __init__(self, *, batch_size: int = 8, seed: int = 0) -> None:
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.seed = _check_int("seed", seed, 0)

    @torch.no_grad()
    def score(self, pair: ModelPair, images, generator: torch.Generator | None = None) -> np.ndarray:
        """One membership score per image (higher = more likely a member), as a float64 array (B,)."""
        batch = as_image_batch(images)
        generator = generator if generator is not None else torch.Generator().manual_seed(self.seed)
        latents = torch.cat([pair.encode(chunk) for chunk in batch.split(self.batch_size)])
        draws = self.draws(latents[:1], generator)
        scores = [self.score_latents(pair, chunk, draws) for chunk in latents.split(self.batch_size)]
        return torch.cat(scores).double().cpu().numpy()

    def draws(self, like: torch.Tensor, generator: torch.Generator) -> list:
        """Random draws shared by every image of a call (none by default)."""
        return []

    def score_latents(self, pair: ModelPair, latents: torch.Tensor, draws: list) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class LossAttack(Baseline):
    """−L_ft: the suspect's denoising loss, averaged over `timesteps` × `noises` draws (shared by all images).

    Args:
        timesteps: the diffusion timesteps to average over.
        noises: noise draws per timestep.
    """

    name = "loss"

    def __init__(
        self, *, timesteps: Sequence[int] = (50, 100, 200, 300, 400, 500), noises: int = 2, batch_size: int = 8,
        seed: int = 0,
    ) -> None:  # fmt: skip
        super().__init__(batch_size=batch_size, seed=seed)
        self.timesteps = tuple(_check_int("timesteps", t, 0, 999) for t in timesteps)
        if not self.timesteps:
            raise InvalidArgumentError("`timesteps` must hold at least one timestep.")
        self.noises = _check_int("noises", noises, 1)

    def draws(self, like: torch.Tensor, generator: torch.Generator) -> list:
        out = []
        for t in self.timesteps:
            for _ in range(self.noises):
                noise = torch.randn(like.shape, generator=generator, device=generator.device, dtype=torch.float32)
                out.append((t, noise.to(like.device)))
        return out

    def losses(self, pair: ModelPair, latents: torch.Tensor, draws: list, *, both: bool) -> tuple:
        pre = torch.zeros(latents.shape[0], device=latents.device)
        ft = torch.zeros_like(pre)
        for t, noise in draws:
            noise = noise.expand_as(latents)
            if both:
                l_pre, l_ft = pair.losses(latents, t, noise)
                pre += l_pre.to(pre.device)
            else:
                l_ft = suspect_loss(pair, latents, t, noise)
            ft += l_ft.to(ft.device)
        return pre / len(draws), ft / len(draws)

    def score_latents(self, pair: ModelPair, latents: torch.Tensor, draws: list) -> torch.Tensor:
        return -self.losses(pair, latents, draws, both=False)[1]


class CalibratedLoss(LossAttack):
    """L_pre − L_ft at the same timesteps and noise draws: how much better the suspect denoises the image than
    the base model does (arguments as :class:`LossAttack`)."""

    name = "loss-diff"

    def score_latents(self, pair: ModelPair, latents: torch.Tensor, draws: list) -> torch.Tensor:
        pre, ft = self.losses(pair, latents, draws, both=True)
        return pre - ft


def suspect_loss(pair: ModelPair, latents: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
    """The suspect's per-sample loss alone (one UNet call instead of :meth:`ModelPair.losses`' two)."""
    model = pair.base
    timesteps = torch.full((latents.shape[0],), int(t), dtype=torch.long, device=latents.device)
    noisy = model.add_noise(latents, noise, timesteps)
    target = model.training_target(latents, noise, timesteps)
    prediction = pair.predict("suspect", noisy, timesteps)
    return (prediction - target.to(prediction.device)).pow(2).flatten(1).mean(dim=1)


def ddim_step(pair: ModelPair, which: str, x: torch.Tensor, t_from: int, t_to: int) -> torch.Tensor:
    """One deterministic DDIM move of `x` from timestep `t_from` to `t_to` (up = inversion, down = denoising),
    with `which` model's noise and clean-sample estimates at `t_from`."""
    model = pair.base
    prediction = pair.predict(which, x, t_from)
    a_from = model.alphas_cumprod_at(int(t_from), x)
    a_to = model.alphas_cumprod_at(int(t_to), x)
    eps, x0 = model.noise_and_sample(prediction, x, a_from)
    return a_to.sqrt() * x0 + (1.0 - a_to).sqrt() * eps


class SecMI(Baseline):
    """SecMI's t-error on the suspect: DDIM-invert the latent from 0 to ``t_sec − k`` in steps of `k`, step up to
    `t_sec` and back down; the score is minus the mean squared gap between the two latents at ``t_sec − k``.

    Args:
        t_sec: the timestep of the error (SecMI: 100). k: the DDIM step interval (SecMI: 10).
    """

    name = "secmi"

    def __init__(self, *, t_sec: int = 100, k: int = 10, batch_size: int = 8, seed: int = 0) -> None:
        super().__init__(batch_size=batch_size, seed=seed)
        self.t_sec = _check_int("t_sec", t_sec, 2, 999)
        self.k = _check_int("k", k, 1, self.t_sec - 1)
        if self.t_sec % self.k:
            raise InvalidArgumentError(f"`t_sec` ({self.t_sec}) must be a multiple of `k` ({self.k}).")

    def score_latents(self, pair: ModelPair, latents: torch.Tensor, draws: list) -> torch.Tensor:
        x, t = latents.float(), 0
        for target in range(self.k, self.t_sec, self.k):  # inversion 0 -> t_sec - k
            x = ddim_step(pair, "suspect", x, t, target)
            t = target
        up = ddim_step(pair, "suspect", x, t, self.t_sec)
        back = ddim_step(pair, "suspect", up, self.t_sec, t)
        return -(back - x).pow(2).flatten(1).mean(dim=1)


class PIA(Baseline):
    """PIA on the suspect: ε₀ = its noise estimate on the clean latent at t = 0; ``z_t = √ᾱ_t z₀ + √(1−ᾱ_t) ε₀``;
    the score is minus the mean of ``|ε_θ(z_t, t) − ε₀|^p``. Two UNet calls per image.

    Args:
        t: the timestep of the second query (PIA: 200). p: the exponent of the distance (PIA: 4).
    """

    name = "pia"

    def __init__(self, *, t: int = 200, p: float = 4.0, batch_size: int = 8, seed: int = 0) -> None:
        super().__init__(batch_size=batch_size, seed=seed)
        self.t = _check_int("t", t, 1, 999)
        if not np.isfinite(p) or p <= 0:
            raise InvalidArgumentError(f"`p` must be a positive number, but is {p!r}.")
        self.p = float(p)

    def score_latents(self, pair: ModelPair, latents: torch.Tensor, draws: list) -> torch.Tensor:
        model = pair.base
        z0 = latents.float()
        a0 = model.alphas_cumprod_at(0, z0)
        eps0, _ = model.noise_and_sample(pair.predict("suspect", z0, 0), z0, a0)
        a_t = model.alphas_cumprod_at(self.t, z0)
        z_t = a_t.sqrt() * z0 + (1.0 - a_t).sqrt() * eps0
        eps_t, _ = model.noise_and_sample(pair.predict("suspect", z_t, self.t), z_t, a_t)
        return -(eps_t - eps0).abs().pow(self.p).flatten(1).mean(dim=1)


BASELINES: dict[str, type[Baseline]] = {cls.name: cls for cls in (LossAttack, CalibratedLoss, SecMI, PIA)}

__all__ = ["BASELINES", "PIA", "Baseline", "CalibratedLoss", "LossAttack", "SecMI", "as_image_batch", "ddim_step"]
