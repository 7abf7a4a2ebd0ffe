"""Diffusion-model purifications: DiffPure, GrIDPure, Noisy Upscaling and IMPRESS (see
:mod:`artshield.evaluate.purify` for the calling convention and the spec grammar; the mechanics are in
:mod:`.purify_diffusion`)."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import torch

from ..engine import PerturbConfig, Perturber
from ..engine import transforms as T
from ..engine.transforms import pad_to_multiple
from ..errors import InvalidArgumentError
from ..imageio import as_rgb
from .purify_base import Purification, check_number, progress_bar
from .purify_diffusion import (
    UPSCALER_ALIASES,
    check_text_to_image,
    grid_passes,
    grid_purify,
    like_input,
    load_upscaler,
    purify_region,
    resize,
    run_upscaler,
    start_timestep,
)

logger = logging.getLogger(__name__)

class DiffPure(Purification):
    """DiffPure-style purification with a latent diffusion model: diffuse to t*, denoise back.

    x → z0 = E(x) (VAE posterior mean) → z_t* = sqrt(ᾱ_t*) z0 + sqrt(1 − ᾱ_t*) ε → `steps` DDIM steps back
    to t = 0 (η = 0 unless `eta` says otherwise) → D(z). The UNet sees `prompt` (default empty: the
    unconditional branch, no guidance). Images of any size are padded by reflection to the model's pixel
    multiple and cropped back; grey images are purified as RGB and returned as the mean of the channels.

    Reference and deviations:

    * DiffPure (Nie et al., ICML 2022) and the DiffPure baseline of GrIDPure (``diffpure.py`` in
      ZhengyueZhao/GrIDPure) diffuse **pixels** with the unconditional ImageNet-256 guided-diffusion model, to
      ``pure_steps = 100`` of 1000 DDPM steps — **t* = 0.1**, this class's default — and denoise with all
      100 ancestral DDPM steps, after resizing the image to 256² (and back to 512²).
    * Here the model is the latent diffusion model being attacked (or any SD checkpoint / the demo model),
      so the VAE round trip is part of the purification; denoising uses `steps` DDIM steps (default 10)
      rather than 100 DDPM ones (``eta=1`` gives DDPM-like stochastic steps); and the image is processed at
      its own resolution rather than resized to the model's.

    With ``grid=True`` it is GrIDPure (see :class:`GrIDPure` for the reference's defaults): the image is cut
    into patches of `patch` pixels (default: the model's native resolution; GrIDPure uses 256, its model's)
    at a stride of half a patch, each patch purified, overlaps averaged, and the four corners purified once
    more as a composite patch; this is repeated `iterations` times, each time blending
    ``(1 − gamma) · purified + gamma · input-of-this-iteration``.

    Args:
        model (`DiffusionModel`): a text-to-image model from :func:`artshield.models.load`.
        t_star (`float`, defaults to 0.1): diffusion depth as a fraction of the training schedule, in (0, 1).
        steps (`int`, defaults to 10): denoising steps from t* to 0 (at most one per integer timestep).
        eta (`float`, defaults to 0.0): DDIM η (0 deterministic given the first draw, 1 DDPM-like).
        prompt (`str`, defaults to `""`): the text condition.
        grid (`bool`, defaults to `False`): GrIDPure's patch grid.
        patch (`int`, *optional*): grid patch side; defaults to the model's native resolution.
        iterations (`int`, defaults to 1): purification passes.
        gamma (`float`, defaults to 0.0): weight of each pass's input in its output.
        progress (`bool`, defaults to `False`): a tqdm bar over passes × patches.
    """

    name = "diffpure"
    summary = "diffuse to t*=0.1 and DDIM-denoise with the model (DiffPure-style, latent)"
    primary = "t_star"
    random = True
    uses_model = True
    parameters = ("t_star", "steps", "eta", "prompt", "grid", "patch", "iterations", "gamma")
    _defaults: ClassVar[dict[str, Any]] = {"t_star": 0.1, "iterations": 1, "gamma": 0.0, "grid": False}

    def __init__(
        self,
        model,
        *,
        t_star: float | None = None,
        steps: int = 10,
        eta: float = 0.0,
        prompt: str = "",
        grid: bool | None = None,
        patch: int | None = None,
        iterations: int | None = None,
        gamma: float | None = None,
        progress: bool = False,
    ):
        check_text_to_image(model, f"purification {self.name!r}")
        settings = self.check_settings(t_star=t_star, steps=steps, eta=eta, prompt=prompt, grid=grid, patch=patch,
                                       iterations=iterations, gamma=gamma)  # fmt: skip
        self.model = model
        for key, value in settings.items():
            setattr(self, key, value)
        if self.patch is None:
            self.patch = check_number(model.native_resolution, "patch", 2, 1 << 16, integer=True)
        self.progress = progress

    @classmethod
    def check_settings(
        cls,
        *,
        t_star: float | None = None,
        steps: int = 10,
        eta: float = 0.0,
        prompt: str = "",
        grid: bool | None = None,
        patch: int | None = None,
        iterations: int | None = None,
        gamma: float | None = None,
    ) -> dict[str, Any]:
        defaults = cls._defaults
        t_star = check_number(defaults["t_star"] if t_star is None else t_star, "t_star", 0.0, 1.0, low_open=True,
                              high_open=True, why=" (a fraction of the schedule; 1 would discard the image)")
        if not isinstance(prompt, str):
            raise InvalidArgumentError(f"`prompt` must be a string, but is {prompt!r}.")
        grid = defaults["grid"] if grid is None else grid
        if not isinstance(grid, bool):
            raise InvalidArgumentError(f"`grid` must be true or false, but is {grid!r}.")
        gamma = check_number(defaults["gamma"] if gamma is None else gamma, "gamma", 0.0, 1.0, high_open=True,
                             why=" (1 would return the input unchanged)")
        return {
            "t_star": t_star,
            "steps": check_number(steps, "steps", 1, 1000, integer=True),
            "eta": check_number(eta, "eta", 0.0, 1.0),
            "prompt": prompt,
            "grid": grid,
            "patch": None if patch is None else check_number(patch, "patch", 2, 1 << 16, integer=True),
            "iterations": check_number(defaults["iterations"] if iterations is None else iterations, "iterations", 1,
                                       1000, integer=True),
            "gamma": gamma,
        }  # fmt: skip

    @property
    def t_start(self) -> int:
        """t* as an integer timestep of the model's schedule."""
        return start_timestep(self.model, self.t_star)

    def _apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        channels = images.shape[1]
        current = as_rgb(images).to(self.model.device)
        t_start = self.t_start
        height, width = current.shape[-2:]
        passes = grid_passes(height, width, self.patch) if self.grid else 1
        bar = progress_bar(self.progress, passes * self.iterations, self.name)
        tick = bar.update if bar is not None else None

        def purify(region: torch.Tensor) -> torch.Tensor:
            out = purify_region(self.model, region, t_start, self.steps, generator, prompt=self.prompt, eta=self.eta)
            if tick is not None and not self.grid:
                tick()
            return out

        try:
            for _ in range(self.iterations):
                purified = grid_purify(purify, current, self.patch, progress=tick) if self.grid else purify(current)
                current = (1.0 - self.gamma) * purified + self.gamma * current
        finally:
            if bar is not None:
                bar.close()
        return like_input(current, channels).to(images.device)


class GrIDPure(DiffPure):
    """GrIDPure (Zhao et al., "Can Protective Perturbation Safeguard Personal Data from Being Exploited by
    Stable Diffusion?", CVPR 2024, arXiv 2312.00084): iterative DiffPure on an overlapping grid.

    :class:`DiffPure` with ``grid=True`` and the reference README's settings: ``pure_steps=10`` (t* = 0.01),
    ``pure_iter_num=20`` iterations, ``gamma=0.1``; patches of the model's native resolution at a stride of
    half a patch, plus the corner composite (``gridpure.py``). Deviations are DiffPure's (latent model, DDIM
    steps, no 8-bit rounding between iterations): see :class:`DiffPure`. Cost: iterations × (patches + 1)
    passes of `steps` UNet calls each — on a CPU, lower `iterations` or use a small model.
    """

    name = "gridpure"
    summary = "GrIDPure: DiffPure on a native-resolution patch grid, t*=0.01 × 20 iterations, γ 0.1"
    _defaults: ClassVar[dict[str, Any]] = {"t_star": 0.01, "iterations": 20, "gamma": 0.1, "grid": True}


class NoisyUpscaling(Purification):
    """Noisy Upscaling (Hönig et al., 2024, ethz-spylab/robust-style-mimicry ``noise.py`` + ``upscale.py``):
    Gaussian noise σ = 0.1, then a diffusion upscaler that regenerates the detail the noise destroyed.

    * **Reference** (``upscaler="x4"`` or ``upscaler="stabilityai/stable-diffusion-x4-upscaler"``, or a local
      folder): the ``StableDiffusionUpscalePipeline`` with ``noise_level=320`` and its default 75 steps and
      guidance 9. Deviations: the reference prompts the upscaler with each image's caption (we use `prompt`,
      empty by default) and keeps the ×4 output; we resize the ×4 output back to the input's size
      (antialiased bicubic), because outputs keep their input's size here and a fine-tuning script resizes
      to its training resolution anyway.
    * **Default, model-based fallback** (no `upscaler`; the upscaler is 3.5 GB and absent offline): noise σ,
      downscale by `factor` (0.5) and bicubic upscale back, then an SDEdit refinement with the given model —
      :func:`~artshield.evaluate.purify_diffusion.diffuse_denoise` from t* = `strength` (0.3) in `steps`
      (10) DDIM steps. **This is not the reference attack**: the real upscaler is a diffusion model
      conditioned on the noisy low-resolution image and trained to restore detail; the fallback is the
      nearest thing a plain text-to-image model (e.g. the demo model) can do. Report which one was used
      (``config["upscaler"]``).

    Args:
        model (`DiffusionModel`, *optional*): required for the fallback; also sets the upscaler's device.
        sigma (`float`, defaults to 0.1): Gaussian noise σ in [0, 1] pixel units.
        upscaler (`str`, *optional*): ``"x4"``, a hub id or a diffusers folder of an x4 upscaler.
        noise_level (`int`, defaults to 320), upscaler_steps (`int`, defaults to 75), guidance_scale (`float`,
            defaults to 9.0), prompt (`str`, defaults to `""`): the upscaler pipeline's settings (`prompt` also
            conditions the fallback's refinement).
        factor (`float`, defaults to 0.5), strength (`float`, defaults to 0.3), steps (`int`, defaults to 10),
            eta (`float`, defaults to 0.0): the fallback's downscale factor, SDEdit depth and DDIM settings.
        device, dtype (*optional*): for the upscaler when no model is given (default: the best device).
    """

    name = "noisy-upscale"
    summary = "Noisy Upscaling: σ 0.1 noise, then the x4 upscaler (upscaler=x4) or a model-based fallback"
    primary = "sigma"
    random = True
    uses_model = True
    parameters = ("sigma", "upscaler", "noise_level", "upscaler_steps", "guidance_scale", "prompt",
                  "factor", "strength", "steps", "eta")  # fmt: skip

    @classmethod
    def needs_model(cls, settings: dict[str, Any]) -> bool:
        return settings.get("upscaler") is None

    def __init__(
        self,
        model=None,
        *,
        sigma: float = 0.1,
        upscaler: str | None = None,
        noise_level: int = 320,
        upscaler_steps: int = 75,
        guidance_scale: float = 9.0,
        prompt: str = "",
        factor: float = 0.5,
        strength: float = 0.3,
        steps: int = 10,
        eta: float = 0.0,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ):
        settings = self.check_settings(sigma=sigma, upscaler=upscaler, noise_level=noise_level,
                                       upscaler_steps=upscaler_steps, guidance_scale=guidance_scale, prompt=prompt,
                                       factor=factor, strength=strength, steps=steps, eta=eta)  # fmt: skip
        for key, value in settings.items():
            setattr(self, key, value)
        upscaler = self.upscaler
        self._noise = T.GaussianNoise(sigma=self.sigma)
        self.model = model if upscaler is None else None  # with the upscaler, a model only picks the device
        self._pipe = None
        if upscaler is not None:
            from ..models import resolve_device, resolve_dtype

            where = model.device if model is not None else resolve_device(device)
            precision = model.dtype if model is not None and dtype is None else resolve_dtype(dtype, where)
            self._pipe = load_upscaler(upscaler, where, precision)
            limit = int(getattr(self._pipe.config, "max_noise_level", 350))
            if self.noise_level > limit:
                raise InvalidArgumentError(f"`noise_level` must be at most {limit} for {upscaler}, but is {noise_level}.")
        elif model is None:
            raise InvalidArgumentError(
                "noisy-upscale needs either `upscaler` (the SD x4 upscaler: 'x4', a hub id or a folder) or a "
                "diffusion `model` for its model-based fallback."
            )
        else:
            check_text_to_image(model, "noisy-upscale's fallback")

    @classmethod
    def check_settings(
        cls,
        *,
        sigma: float = 0.1,
        upscaler: str | None = None,
        noise_level: int = 320,
        upscaler_steps: int = 75,
        guidance_scale: float = 9.0,
        prompt: str = "",
        factor: float = 0.5,
        strength: float = 0.3,
        steps: int = 10,
        eta: float = 0.0,
    ) -> dict[str, Any]:
        if not isinstance(prompt, str):
            raise InvalidArgumentError(f"`prompt` must be a string, but is {prompt!r}.")
        strength_value = check_number(strength, "strength", 0.0, 1.0, low_open=True, high_open=True)
        if upscaler is not None:
            if not isinstance(upscaler, str) or not upscaler.strip():
                raise InvalidArgumentError(f"`upscaler` must be a hub id, a folder or 'x4', but is {upscaler!r}.")
            upscaler = UPSCALER_ALIASES.get(upscaler.strip(), upscaler.strip())
        return {
            "sigma": check_number(sigma, "sigma", 0.0, 1.0),
            "noise_level": check_number(noise_level, "noise_level", 0, 1000, integer=True),
            "upscaler_steps": check_number(upscaler_steps, "upscaler_steps", 1, 1000, integer=True),
            "guidance_scale": check_number(guidance_scale, "guidance_scale", 0.0, 100.0),
            "prompt": prompt,
            "factor": check_number(factor, "factor", 0.0, 1.0, low_open=True),
            "strength": strength_value,
            "steps": check_number(steps, "steps", 1, 1000, integer=True),
            "eta": check_number(eta, "eta", 0.0, 1.0),
            "upscaler": upscaler,
        }

    def _apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        channels = images.shape[1]
        height, width = images.shape[-2:]
        noisy = as_rgb(self._noise(images, generator))
        if self._pipe is not None:
            device = self._pipe.device
            out = run_upscaler(
                self._pipe, noisy.to(device), generator, prompt=self.prompt, noise_level=self.noise_level,
                steps=self.upscaler_steps, guidance_scale=self.guidance_scale,
            )
        else:
            small = resize(noisy, (max(1, round(self.factor * height)), max(1, round(self.factor * width))))
            upscaled = resize(small, (height, width))
            t_start = start_timestep(self.model, self.strength)
            out = purify_region(
                self.model, upscaled.to(self.model.device), t_start, self.steps, generator, prompt=self.prompt, eta=self.eta
            )
        return like_input(out, channels).to(images.device)


# --------------------------------------------------------------------------------------------------
# IMPRESS (on the perturbation engine)
# --------------------------------------------------------------------------------------------------

_LPIPS_FALLBACK_LOGGED = False


class Impress(Purification):
    """IMPRESS (Cao et al., "IMPRESS: Evaluating the Resilience of Imperceptible Perturbations Against
    Unauthorized Data Usage in Diffusion-Based Generative AI", NeurIPS 2023; AAAAAAsuka/Impress ``impress.py``).

    Finds a purified x near the protected x_adv that the model's autoencoder reproduces (protective
    perturbations make D(E(x)) differ from x):

        minimise over x:  ‖D(E(x)) − x‖² + α · max(LPIPS(x, x_adv) − Δ, 0)

    run on :class:`artshield.engine.Perturber` (``minimize=True``, Adam steps, a cosine-decayed step size, an
    L-inf budget of 1 that never binds, ``bounds=(0, 1)``), starting from x_adv plus Gaussian noise.

    Defaults follow the reference's experiment script (``scripts/new/test_all.sh``: ``pur_eps=0.1``,
    ``pur_lr=0.01``, ``pur_iters=3000``, ``pur_alpha=0.1``, ``pur_noise=0.1``) and ``impress.py`` (Adam,
    ``CosineAnnealingLR`` to 1e-5, LPIPS with VGG, the reconstruction D(E(x)) through the VAE's posterior mode,
    the MSE a mean over pixels). The reference works on images in [−1, 1]; budgets here are in [0, 1] pixel
    units, so:

    * `lr` 0.005 and `start_noise` 0.05 are the reference's 0.01 and 0.1 in its [−1, 1] units (Adam moves each
      pixel by about the learning rate per step, whatever the loss scale);
    * the reconstruction term is computed on [−1, 1] values (4 × the [0, 1] MSE) so that α and Δ keep the
      reference's meaning; LPIPS takes [0, 1] inputs and rescales them itself, as the reference's calls do.

    Deviations:

    * `steps` defaults to 3000 on an accelerator, as the reference, but to **100 on the CPU**: each step is a
      VAE encode + decode with gradients, and 3000 of them per image are impractical on a CPU at Stable
      Diffusion's resolution. Set `steps` explicitly to reproduce the reference there.
    * The engine's Adam uses ε = 1e-8 (the reference passes ε = 1e-5), and the engine clamps to [0, 1] after
      every step as the reference does.
    * **LPIPS needs ImageNet backbone weights** that artshield never downloads. With ``perceptual="auto"``
      and the weights absent, the perceptual term is **1 − SSIM** (Wang et al., 2004; 11×11 Gaussian window)
      instead, with the same Δ and α, and one warning is logged; ``config["perceptual"]`` records which was
      used. 1 − SSIM is not calibrated to LPIPS: Δ = 0.1 then allows SSIM down to 0.9. Images must be at
      least 11 pixels on each side for SSIM.
    * Images are padded by reflection to the VAE's multiple (8) and cropped back; the whole image goes
      through the VAE at once, so memory grows with its size (the reference runs 512² images).

    Args:
        model (`DiffusionModel`): whose VAE defines D(E(·)).
        steps (`int`, *optional*): optimisation steps (see above).
        lr (`float`, defaults to 0.005): Adam step size in [0, 1] pixel units, cosine-decayed to ``lr / 1000``.
        alpha (`float`, defaults to 0.1): weight α of the perceptual hinge.
        delta (`float`, defaults to 0.1): perceptual budget Δ.
        start_noise (`float`, defaults to 0.05): σ of the Gaussian start noise in [0, 1] pixel units.
        perceptual (`str`, defaults to `"auto"`): ``"auto"`` (LPIPS when its weights exist, else 1 − SSIM),
            ``"lpips"`` (error if unavailable) or ``"ssim"``.
        lpips_net (`str`, defaults to `"vgg"`): the LPIPS backbone (the reference uses VGG).
        progress (`bool`, defaults to `False`): the engine's tqdm bar.
    """

    name = "impress"
    summary = "IMPRESS: minimise ‖D(E(x))−x‖² + α·max(LPIPS(x, x_adv)−Δ, 0) on the engine (Δ 0.1, α 0.1)"
    primary = "steps"
    random = True
    uses_model = True
    parameters = ("steps", "lr", "alpha", "delta", "start_noise", "perceptual", "lpips_net")

    #: The reference's iteration count, and the default on a CPU (see the class docstring).
    REFERENCE_STEPS = 3000
    CPU_STEPS = 100
    #: ``CosineAnnealingLR(eta_min=1e-5)`` from lr 0.01 ends at a thousandth of the initial rate.
    FINAL_LR_RATIO = 1e-3

    def __init__(
        self,
        model,
        *,
        steps: int | None = None,
        lr: float = 0.005,
        alpha: float = 0.1,
        delta: float = 0.1,
        start_noise: float = 0.05,
        perceptual: str = "auto",
        lpips_net: str = "vgg",
        progress: bool = False,
    ):
        settings = self.check_settings(steps=steps, lr=lr, alpha=alpha, delta=delta, start_noise=start_noise,
                                       perceptual=perceptual, lpips_net=lpips_net)  # fmt: skip
        self.model = model
        for key, value in settings.items():
            setattr(self, key, value)
        if self.steps is None:
            on_cpu = torch.device(model.device).type == "cpu"
            self.steps = self.CPU_STEPS if on_cpu else self.REFERENCE_STEPS
            if on_cpu:
                logger.info(
                    "IMPRESS: %d steps on the CPU instead of the reference's %d (set steps= to change).",
                    self.steps, self.REFERENCE_STEPS,
                )
        if self.perceptual == "auto":
            from ..metrics import lpips_unavailable_reason

            if lpips_unavailable_reason(lpips_net) is None:
                self.perceptual = "lpips"
            else:
                self.perceptual = "ssim"
                global _LPIPS_FALLBACK_LOGGED
                if not _LPIPS_FALLBACK_LOGGED:
                    _LPIPS_FALLBACK_LOGGED = True
                    logger.warning(
                        "IMPRESS: LPIPS (%s) is unavailable here, so its perceptual term is 1 - SSIM instead "
                        "(same delta and alpha; results are not comparable with the reference's).",
                        lpips_net,
                    )
        self.progress = progress
        self.last_result = None  # the engine's PerturbResult of the latest call (losses per step, etc.)

    @classmethod
    def check_settings(
        cls,
        *,
        steps: int | None = None,
        lr: float = 0.005,
        alpha: float = 0.1,
        delta: float = 0.1,
        start_noise: float = 0.05,
        perceptual: str = "auto",
        lpips_net: str = "vgg",
    ) -> dict[str, Any]:
        from ..metrics import LPIPS_BACKBONE_FILES, lpips_unavailable_reason

        if lpips_net not in LPIPS_BACKBONE_FILES:
            raise InvalidArgumentError(f"`lpips_net` must be one of {sorted(LPIPS_BACKBONE_FILES)}, but is {lpips_net!r}.")
        if perceptual not in ("auto", "lpips", "ssim"):
            raise InvalidArgumentError(f"`perceptual` must be auto, lpips or ssim, but is {perceptual!r}.")
        if perceptual == "lpips":
            reason = lpips_unavailable_reason(lpips_net)
            if reason is not None:
                raise InvalidArgumentError(f"IMPRESS with perceptual=lpips: {reason}")
        return {
            "steps": None if steps is None else check_number(steps, "steps", 1, 1_000_000, integer=True),
            "lr": check_number(lr, "lr", 0.0, 1.0, low_open=True),
            "alpha": check_number(alpha, "alpha", 0.0, 1e6),
            "delta": check_number(delta, "delta", 0.0, 1e6),
            "start_noise": check_number(start_noise, "start_noise", 0.0, 1.0),
            "perceptual": perceptual,
            "lpips_net": lpips_net,
        }

    @property
    def engine_config(self) -> PerturbConfig:
        """The engine settings IMPRESS runs with."""
        return PerturbConfig(
            eps=1.0,  # the whole [0, 1] box: the budget never binds, only the bounds do
            norm="linf",
            steps=self.steps,
            step_size=self.lr,
            step_rule="adam",
            schedule="cosine",
            final_step_ratio=self.FINAL_LR_RATIO,
            minimize=True,
            bounds=(0.0, 1.0),
        )

    def _distance(self, images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        if self.perceptual == "lpips":
            from ..metrics import lpips_distance

            dist = lpips_distance(images, reference, net=self.lpips_net)
            if dist is None:  # weights vanished mid-run
                raise InvalidArgumentError(f"LPIPS ({self.lpips_net}) became unavailable during IMPRESS.")
            return dist.float()
        from ..metrics import ssim

        return 1.0 - ssim(images, reference)

    def loss(self, images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """The IMPRESS objective (B,) of candidates `images` for protected images `reference` (both (B, C, H, W)
        in [0, 1] on the same device); differentiable with respect to `images`."""
        height, width = images.shape[-2:]
        rgb = as_rgb(images)
        padded = pad_to_multiple(rgb, self.model.vae_scale_factor)
        recon = self.model.decode(self.model.encode(padded, mode="mean"))[..., :height, :width].to(rgb.device)
        # The reference measures this on [-1, 1] images: (2a - 2b)^2 = 4 (a - b)^2.
        reconstruction = (2.0 * (recon - rgb)).pow(2).flatten(1).mean(dim=1)
        hinge = torch.relu(self._distance(images, reference) - self.delta)
        return reconstruction + self.alpha * hinge

    def _apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        reference = images.to(self.model.device)
        noise = torch.randn(reference.shape, generator=generator, device=generator.device, dtype=torch.float32)
        init = (self.start_noise * noise).to(reference.device)
        engine = Perturber(self.engine_config, progress=self.progress)

        def objective(candidates: torch.Tensor, _generator: torch.Generator) -> torch.Tensor:
            return self.loss(candidates, reference)

        objective.__qualname__ = "Impress.loss"
        result = engine.run(objective, reference, generator=generator, init_delta=init)
        self.last_result = result
        return result.images.to(images.device)



__all__ = ["DiffPure", "GrIDPure", "Impress", "NoisyUpscaling"]
