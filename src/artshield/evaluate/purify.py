"""Purification attacks: what a mimic does to strip a protective perturbation before fine-tuning.

A protection is only worth what survives these (Hönig et al., "Adversarial Perturbations Cannot Reliably
Protect Artists From Generative AI", 2024: "all protections are easily circumvented"), so robustness is
reported as the **worst case** over them. Each purification is a small class configured once and called
on a batch, in the spirit of torchattacks and of :mod:`artshield.protect`::

    >>> from artshield.evaluate.purify import get_purification
    >>> jpeg = get_purification("jpeg75")
    >>> clean = jpeg(images)                                      # (B, C, H, W) in [0, 1] -> same
    >>> diffpure = get_purification("diffpure", model=load("demo"))
    >>> clean = diffpure(images, generator=torch.Generator().manual_seed(1))

Convention (every purification): ``purification(images, generator=None) -> images``. The input is a float
tensor (B, C, H, W), C in {1, 3}, values in [0, 1]; the output has the same shape, dtype and device, values
in [0, 1]. All randomness comes from `generator` (a ``torch.Generator``, drawn on its own device so a CPU
generator gives the same numbers whatever device the model is on); with no generator a fresh CPU generator
seeded with :data:`DEFAULT_SEED` is used, so a purification is deterministic unless asked otherwise —
pass differently seeded generators for different draws. It is the same signature as the engine's
transforms. ``.name`` is the command-line name, ``.config`` a JSON-serialisable dict of the settings and
``.spec`` the command-line string that rebuilds it.

=================  =====================================================================================
name               what it does (defaults; reference)
=================  =====================================================================================
``none``           nothing (the baseline row of a robustness table)
``jpeg``           real JPEG round trip through Pillow/libjpeg, quality 75, 4:2:0 (a platform's re-encoding;
                   PDM-Pure issue #1; not the differentiable approximation)
``resize``         downscale by 0.5 and back, bicubic, antialiased when shrinking (as Mist's ``postprocess.py``)
``noise``          i.i.d. Gaussian noise σ = 0.05, clamped (Hönig et al. ``noise.py``; also σ 0.1)
``blur``           Gaussian blur σ = 1 px, edge-replicated borders
``noisy-upscale``  Noisy Upscaling (Hönig et al.): noise σ 0.1, then the SD x4 upscaler (noise_level 320)
                   when given ``upscaler=``; otherwise a model-based fallback (see :class:`NoisyUpscaling`)
``diffpure``       DiffPure-style diffuse (t* = 0.1) and DDIM-denoise with a latent diffusion model
``gridpure``       GrIDPure: the same on an overlapping grid of native-resolution patches, t* = 0.01,
                   20 iterations, blend γ = 0.1 (Zhao et al., CVPR 2024)
``impress``        IMPRESS (Cao et al., NeurIPS 2023): minimise ‖D(E(x)) − x‖² + α·max(LPIPS(x, x_adv) − Δ, 0)
                   on the perturbation engine; Δ 0.1, α 0.1, Adam, 3000 steps (100 on the CPU)
=================  =====================================================================================

Spec grammar (command line, config files), case-insensitive names, whitespace ignored::

    spec   := name [number] (":" key "=" value)*
    value  := number | "true" | "false" | "none" | word       (a word may contain "/", "-", ".")

* ``name`` is one of the names above (aliases: ``identity`` for ``none``, ``jpg``, ``gaussian`` for
  ``noise``, ``noisy-upscaling``/``upscale`` for ``noisy-upscale``).
* A number right after the name sets the purification's main parameter: ``jpeg75`` (quality),
  ``resize0.5`` (factor), ``noise0.05`` / ``noise0.1`` (σ), ``blur1.5`` (σ in pixels), ``noisy-upscale0.1``
  (σ), ``diffpure0.2`` / ``gridpure0.02`` (t* as a fraction of the schedule), ``impress500`` (steps).
* ``:key=value`` sets any other constructor argument: ``jpeg:quality=50``,
  ``diffpure:t_star=0.2:steps=20``, ``noisy-upscale:upscaler=stabilityai/stable-diffusion-x4-upscaler``,
  ``impress:steps=300:perceptual=ssim``.

A spec that cannot be read raises :class:`~artshield.errors.InvalidArgumentError` naming the spec.

Command line (user errors are one line on stderr and exit status 2)::

    python -m artshield.evaluate.purify METHOD INPUT_DIR OUTPUT_DIR [--model SPEC] [--seed N]
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from .. import __version__
from ..cli_support import EXIT_INTERRUPTED, EXIT_USER_ERROR, configure_logging, run_command  # noqa: F401 - re-exported
from ..engine import PerturbConfig, Perturber
from ..engine import transforms as T
from ..errors import ArtshieldError, ImageReadError, InvalidArgumentError
from ..fileio import write_json_atomic
from .purify_diffusion import (
    UPSCALER_ALIASES,
    as_rgb,
    check_text_to_image,
    grid_passes,
    grid_purify,
    like_input,
    load_upscaler,
    pad_to_multiple,
    purify_region,
    resize,
    run_upscaler,
    start_timestep,
)

logger = logging.getLogger(__name__)

#: Seed of the generator used when a purification is called without one.
DEFAULT_SEED = 0


# --------------------------------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------------------------------


def _check_images(images: Any) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise InvalidArgumentError(f"`images` must be a torch.Tensor (B, C, H, W) in [0, 1], but is {type(images).__name__}.")
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise InvalidArgumentError(f"`images` must have shape (B, 1 or 3, H, W), but has {tuple(images.shape)}.")
    if not images.is_floating_point():
        raise InvalidArgumentError(f"`images` must be a floating-point tensor in [0, 1], but has dtype {images.dtype}.")
    if images.numel() and not bool(torch.isfinite(images).all()):
        raise InvalidArgumentError("`images` contains NaN or infinite values.")
    if images.numel() and (float(images.min()) < -1e-6 or float(images.max()) > 1 + 1e-6):
        raise InvalidArgumentError(
            f"`images` must lie in [0, 1], but spans [{float(images.min()):.4g}, {float(images.max()):.4g}]."
        )
    return images


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if value is None or isinstance(value, (bool, int, float, str, list, dict)):
        return value
    return repr(value)


def _number(value: Any, name: str, low: float, high: float, *, integer: bool = False, low_open: bool = False) -> Any:
    """Validate a numeric constructor argument (bools are not numbers here: ``quality=True`` is a mistake)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and integer:
        ok = float(value).is_integer()
    if ok:
        ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        kind = "an integer" if integer else "a number"
        bracket = "(" if low_open else "["
        raise InvalidArgumentError(f"`{name}` must be {kind} in {bracket}{low}, {high}], but is {value!r}.")
    return int(value) if integer else float(value)


class Purification:
    """Base class: see the module docstring for the calling convention.

    Subclasses set `name`, `summary`, `primary` (the parameter a number after the name sets), `random`
    (whether the output depends on the generator), list their settings in `parameters`, and implement
    :meth:`_apply` on a float32 batch (the base class validates, converts and restores dtype and device).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    primary: ClassVar[str | None] = None
    random: ClassVar[bool] = False
    uses_model: ClassVar[bool] = False
    parameters: ClassVar[tuple[str, ...]] = ()

    model = None

    @classmethod
    def needs_model(cls, settings: dict[str, Any]) -> bool:
        """Whether building it with these settings needs a diffusion model."""
        return cls.uses_model

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Purify a batch (B, C, H, W) in [0, 1]; same shape, dtype and device out. See the module docstring."""
        images = _check_images(images)
        if generator is None:
            generator = torch.Generator(device="cpu").manual_seed(DEFAULT_SEED)
        elif not isinstance(generator, torch.Generator):
            raise InvalidArgumentError(f"`generator` must be a torch.Generator or None, but is {type(generator).__name__}.")
        if images.shape[0] == 0:
            return images.clone()
        # float32 throughout: a half-precision JPEG/blur/VAE round trip loses more than a perturbation's budget.
        out = self._apply(images.detach().float(), generator)
        return out.clamp(0.0, 1.0).to(device=images.device, dtype=images.dtype)

    def _apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    @property
    def settings(self) -> dict[str, Any]:
        """The constructor settings (JSON values), without the model."""
        return {key: _jsonable(getattr(self, key)) for key in self.parameters}

    @property
    def config(self) -> dict[str, Any]:
        """JSON-serialisable settings: ``name``, every parameter, and the model's source when one is used."""
        config: dict[str, Any] = {"name": self.name, **self.settings}
        if self.model is not None:
            config["model"] = getattr(self.model, "source", "unknown")
        return config

    @property
    def spec(self) -> str:
        """The command-line spec that rebuilds this purification (given the same model)."""
        parts = [self.name]
        for key, value in self.settings.items():
            if value is None or value == "":
                continue  # the default (None / empty prompt); an empty value would not parse back
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, float):
                text = repr(value)
            else:
                text = str(value)
            parts.append(f"{key}={text}")
        return ":".join(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.settings.items())})"


# --------------------------------------------------------------------------------------------------
# Image-processing purifications
# --------------------------------------------------------------------------------------------------


class NoPurification(Purification):
    """The identity: the baseline row ("no purification") of a robustness table."""

    name = "none"
    summary = "no purification (baseline)"

    def _apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return images.clone()


class JpegCompression(Purification):
    """Real JPEG compression: encode and decode through Pillow (libjpeg-turbo), not a differentiable model of it.

    The image is quantised to 8 bits, saved as a baseline JPEG at `quality` with Pillow's default 4:2:0 chroma
    subsampling, and decoded, exactly as a platform re-encoding an upload does. In PDM-Pure issue #1 a
    commenter argues plain JPEG suffices against non-adaptive protections (the authors disagree at
    ε = 16/255), so a robustness table should sweep the quality (``jpeg90``, ``jpeg75``, ``jpeg50``).

    Args:
        quality (`int`, defaults to 75): IJG quality in [1, 100] (Pillow's default is 75).
        subsampling (`str`, defaults to `"4:2:0"`): chroma subsampling, ``"4:2:0"``, ``"4:2:2"`` or ``"4:4:4"``.
    """

    name = "jpeg"
    summary = "real JPEG round trip through Pillow (quality 75)"
    primary = "quality"
    parameters = ("quality", "subsampling")

    def __init__(self, quality: int = 75, subsampling: str = "4:2:0"):
        self.quality = _number(quality, "quality", 1, 100, integer=True)
        if subsampling not in ("4:2:0", "4:2:2", "4:4:4"):
            raise InvalidArgumentError(f"`subsampling` must be 4:2:0, 4:2:2 or 4:4:4, but is {subsampling!r}.")
        self.subsampling = subsampling

    def _apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return T.jpeg_pil(images, self.quality, subsampling=self.subsampling)


class DownUpscale(Purification):
    """Downscale by `factor` and upscale back to the original size (Mist ``postprocess.py``'s resize attack).

    Bicubic both ways, antialiased when shrinking (as Pillow resamples), clamped to [0, 1] after each resize.
    Each side becomes ``max(1, round(factor * side))``.

    Args:
        factor (`float`, defaults to 0.5): side scale in (0, 1].
        mode (`str`, defaults to `"bicubic"`): ``"bicubic"``, ``"bilinear"`` or ``"nearest"``.
    """

    name = "resize"
    summary = "downscale ×0.5 and back up (bicubic, antialiased)"
    primary = "factor"
    parameters = ("factor", "mode")

    def __init__(self, factor: float = 0.5, mode: str = "bicubic"):
        self.factor = _number(factor, "factor", 0.0, 1.0, low_open=True)
        self.mode = mode
        self._transform = T.Resize(scale=self.factor, mode=mode)  # validates mode; a fixed scale draws nothing

    def _apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self._transform(images, generator)


class GaussianNoising(Purification):
    """Add i.i.d. Gaussian noise of standard deviation `sigma` (in [0, 1] pixel units) and clamp to [0, 1].

    Hönig et al. (2024) use σ = 0.05 as the "Gaussian noising" purification and σ = 0.1 as the first stage of
    Noisy Upscaling (``noise.py``: ``skimage.util.random_noise(mode='gaussian', var=σ², clip=True)``, which is
    what this computes).

    Args:
        sigma (`float`, defaults to 0.05): standard deviation in [0, 1].
    """

    name = "noise"
    summary = "Gaussian noise σ 0.05, clamped (Hönig et al.)"
    primary = "sigma"
    random = True
    parameters = ("sigma",)

    def __init__(self, sigma: float = 0.05):
        self.sigma = _number(sigma, "sigma", 0.0, 1.0)
        self._transform = T.GaussianNoise(sigma=self.sigma)

    def _apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self._transform(images, generator)


class GaussianBlurring(Purification):
    """Gaussian blur of standard deviation `sigma` pixels (kernel radius ⌈3σ⌉, edge-replicated borders).

    Args:
        sigma (`float`, defaults to 1.0): standard deviation in pixels, in [0, 20].
    """

    name = "blur"
    summary = "Gaussian blur σ 1 px"
    primary = "sigma"
    parameters = ("sigma",)

    def __init__(self, sigma: float = 1.0):
        self.sigma = _number(sigma, "sigma", 0.0, 20.0)
        self._transform = T.GaussianBlur(sigma=self.sigma)

    def _apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self._transform(images, generator)


# --------------------------------------------------------------------------------------------------
# Diffusion-model purifications
# --------------------------------------------------------------------------------------------------


def _progress_bar(enabled: bool, total: int, desc: str):
    if not enabled or total <= 1:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


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
        self.model = model
        defaults = self._defaults
        self.t_star = _number(defaults["t_star"] if t_star is None else t_star, "t_star", 0.0, 1.0, low_open=True)
        if self.t_star >= 1.0:
            raise InvalidArgumentError(f"`t_star` must be below 1 (1 would discard the image), but is {t_star!r}.")
        self.steps = _number(steps, "steps", 1, 1000, integer=True)
        self.eta = _number(eta, "eta", 0.0, 1.0)
        if not isinstance(prompt, str):
            raise InvalidArgumentError(f"`prompt` must be a string, but is {prompt!r}.")
        self.prompt = prompt
        grid = defaults["grid"] if grid is None else grid
        if not isinstance(grid, bool):
            raise InvalidArgumentError(f"`grid` must be true or false, but is {grid!r}.")
        self.grid = grid
        patch = model.native_resolution if patch is None else patch
        self.patch = _number(patch, "patch", 2, 1 << 16, integer=True)
        self.iterations = _number(defaults["iterations"] if iterations is None else iterations, "iterations", 1, 1000, integer=True)
        self.gamma = _number(defaults["gamma"] if gamma is None else gamma, "gamma", 0.0, 1.0)
        if self.gamma >= 1.0:
            raise InvalidArgumentError("`gamma` must be below 1 (1 would return the input unchanged).")
        self.progress = progress

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
        bar = _progress_bar(self.progress, passes * self.iterations, self.name)
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
        self.sigma = _number(sigma, "sigma", 0.0, 1.0)
        self.noise_level = _number(noise_level, "noise_level", 0, 1000, integer=True)
        self.upscaler_steps = _number(upscaler_steps, "upscaler_steps", 1, 1000, integer=True)
        self.guidance_scale = _number(guidance_scale, "guidance_scale", 0.0, 100.0)
        if not isinstance(prompt, str):
            raise InvalidArgumentError(f"`prompt` must be a string, but is {prompt!r}.")
        self.prompt = prompt
        self.factor = _number(factor, "factor", 0.0, 1.0, low_open=True)
        self.strength = _number(strength, "strength", 0.0, 1.0, low_open=True)
        if self.strength >= 1.0:
            raise InvalidArgumentError(f"`strength` must be below 1, but is {strength!r}.")
        self.steps = _number(steps, "steps", 1, 1000, integer=True)
        self.eta = _number(eta, "eta", 0.0, 1.0)
        self._noise = T.GaussianNoise(sigma=self.sigma)
        self.model = model if upscaler is None else None  # with the upscaler, a model only picks the device
        self._pipe = None
        if upscaler is not None:
            if not isinstance(upscaler, str) or not upscaler.strip():
                raise InvalidArgumentError(f"`upscaler` must be a hub id, a folder or 'x4', but is {upscaler!r}.")
            upscaler = UPSCALER_ALIASES.get(upscaler.strip(), upscaler.strip())
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
        self.upscaler = upscaler

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
        self.model = model
        if steps is None:
            on_cpu = torch.device(model.device).type == "cpu"
            steps = self.CPU_STEPS if on_cpu else self.REFERENCE_STEPS
            if on_cpu:
                logger.info(
                    "IMPRESS: %d steps on the CPU instead of the reference's %d (set steps= to change).",
                    steps, self.REFERENCE_STEPS,
                )
        self.steps = _number(steps, "steps", 1, 1_000_000, integer=True)
        self.lr = _number(lr, "lr", 0.0, 1.0, low_open=True)
        self.alpha = _number(alpha, "alpha", 0.0, 1e6)
        self.delta = _number(delta, "delta", 0.0, 1e6)
        self.start_noise = _number(start_noise, "start_noise", 0.0, 1.0)
        from ..metrics import LPIPS_BACKBONE_FILES, lpips_unavailable_reason

        if lpips_net not in LPIPS_BACKBONE_FILES:
            raise InvalidArgumentError(f"`lpips_net` must be one of {sorted(LPIPS_BACKBONE_FILES)}, but is {lpips_net!r}.")
        self.lpips_net = lpips_net
        if perceptual not in ("auto", "lpips", "ssim"):
            raise InvalidArgumentError(f"`perceptual` must be auto, lpips or ssim, but is {perceptual!r}.")
        if perceptual == "ssim":
            self.perceptual = "ssim"
        else:
            reason = lpips_unavailable_reason(lpips_net)
            if reason is None:
                self.perceptual = "lpips"
            elif perceptual == "lpips":
                raise InvalidArgumentError(f"IMPRESS with perceptual=lpips: {reason}")
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


# --------------------------------------------------------------------------------------------------
# Registry and spec parsing
# --------------------------------------------------------------------------------------------------

PURIFICATIONS: dict[str, type[Purification]] = {
    cls.name: cls
    for cls in (NoPurification, JpegCompression, DownUpscale, GaussianNoising, GaussianBlurring, NoisyUpscaling,
                DiffPure, GrIDPure, Impress)
}  # fmt: skip
ALIASES: dict[str, str] = {
    "identity": "none",
    "jpg": "jpeg",
    "gaussian": "noise",
    "downscale": "resize",
    "noisy-upscaling": "noisy-upscale",
    "noisyupscale": "noisy-upscale",
    "noisy_upscale": "noisy-upscale",
    "upscale": "noisy-upscale",
    "grid-pure": "gridpure",
}
#: Constructor arguments a spec may not set (objects, not values).
_NOT_IN_SPEC = {"self", "model", "progress", "device", "dtype"}
_HEAD_RE = re.compile(r"([a-z][a-z_-]*?)((?:\d+(?:\.\d*)?|\.\d+)(?:e-?\d+)?)?")
_PARAM_SPLIT_RE = re.compile(r":(?=\s*[A-Za-z_][A-Za-z0-9_]*\s*=)")
_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT_RE = re.compile(r"[+-]?\d+")
_FLOAT_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def _parse_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    if lowered == "none":
        return None
    if _INT_RE.fullmatch(text):
        return int(text)
    if _FLOAT_RE.fullmatch(text):
        return float(text)
    return text


def _spec_keys(cls: type[Purification]) -> list[str]:
    return [name for name in inspect.signature(cls.__init__).parameters if name not in _NOT_IN_SPEC]


def parse_spec(spec: str) -> tuple[type[Purification], dict[str, Any]]:
    """Read a purification spec (grammar in the module docstring) into its class and keyword arguments.

    Raises:
        InvalidArgumentError: naming the spec and what could not be read.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidArgumentError(f"purification spec must be a non-empty string, but is {spec!r}.")
    head, has_params, rest = spec.strip().partition(":")
    match = _HEAD_RE.fullmatch(head.strip().lower())
    name = ALIASES.get(match.group(1), match.group(1)) if match else None
    if name not in PURIFICATIONS:
        # "noise" + "0.05" fails above only when the name is unknown; say what is known.
        raise InvalidArgumentError(
            f"unknown purification {head.strip()!r} in spec {spec!r} (known: {', '.join(PURIFICATIONS)}; "
            "e.g. jpeg75, resize0.5, noise0.1, diffpure:t_star=0.2)."
        )
    cls = PURIFICATIONS[name]
    keys = _spec_keys(cls)
    kwargs: dict[str, Any] = {}
    if match.group(2):
        if cls.primary is None:
            raise InvalidArgumentError(f"purification {name!r} takes no number (in spec {spec!r}).")
        kwargs[cls.primary] = _parse_value(match.group(2))
    for assignment in (piece.strip() for piece in _PARAM_SPLIT_RE.split(rest)) if has_params else ():
        key, sep, value = (part.strip() for part in assignment.partition("="))
        if not sep or not _KEY_RE.fullmatch(key) or not value:
            raise InvalidArgumentError(f"bad parameter {assignment!r} in purification spec {spec!r} (expected key=value).")
        if key not in keys:
            raise InvalidArgumentError(
                f"purification {name!r} has no parameter {key!r} (in spec {spec!r}; it takes: {', '.join(keys) or 'none'})."
            )
        if key in kwargs:
            raise InvalidArgumentError(f"parameter {key!r} is given twice in purification spec {spec!r}.")
        kwargs[key] = _parse_value(value)
    return cls, kwargs


def get_purification(
    spec: str | Purification,
    model=None,
    *,
    progress: bool = False,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> Purification:
    """Build a purification from its spec (``"jpeg75"``, ``"noise0.1"``, ``"diffpure:t_star=0.2"``, ...).

    Args:
        spec: the spec (grammar in the module docstring), or a purification (returned as is).
        model (*optional*): a :class:`~artshield.models.DiffusionModel`, or a model spec string passed to
            :func:`artshield.models.load`; needed by ``diffpure``, ``gridpure``, ``impress`` and the fallback of
            ``noisy-upscale``, ignored by the others.
        progress: show a progress bar where the purification has one.
        device, dtype: where a purification that loads its own weights (``noisy-upscale`` with ``upscaler=``
            and no model) puts them; default: the best device.

    Raises:
        InvalidArgumentError: the spec cannot be read, a value is out of range, or a model is needed and missing.
    """
    if isinstance(spec, Purification):
        return spec
    cls, kwargs = parse_spec(spec)
    needs_model = cls.needs_model(kwargs)
    if needs_model and model is None:
        raise InvalidArgumentError(
            f"purification spec {spec!r} needs a diffusion model: pass model= (a loaded model, or 'demo', a hub id, "
            "a folder or a .safetensors file; --model on the command line)."
        )
    if isinstance(model, (str, os.PathLike)):
        # Load a model spec only when it is used (not, e.g., for noisy-upscale with its own upscaler).
        from ..models import load

        model = load(model, device=device, dtype=dtype) if needs_model else None
    accepted = inspect.signature(cls.__init__).parameters
    if "progress" in accepted:
        kwargs["progress"] = progress
    if "device" in accepted and model is None:
        kwargs["device"], kwargs["dtype"] = device, dtype
    try:
        if cls.uses_model:
            return cls(model, **kwargs)
        return cls(**kwargs)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"purification spec {spec!r}: {exc}") from None
    except TypeError as exc:  # e.g. a word where a number belongs, caught by no validator
        raise InvalidArgumentError(f"purification spec {spec!r}: {exc}") from None


def describe_purifications() -> list[tuple[str, str]]:
    """(name, one-line summary) for every purification, in table order."""
    return [(name, cls.summary) for name, cls in PURIFICATIONS.items()]


# --------------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------------

#: PNG text key carrying the purification settings. Deliberately not ``artshield`` (the key that marks a
#: *protected* image): a purified copy must not be mistaken for a protected one.
METADATA_KEY = "artshield-purification"


def image_seed(seed: int, name: str) -> int:
    """The seed of one file's generator: derived from the run's seed and the file's name, so an image gets the
    same draws whatever else is in its folder."""
    digest = hashlib.sha256(f"{int(seed)}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # a non-negative int64


def _output_names(sources: Sequence[Path]) -> list[str]:
    names, used = [], set()
    for source in sources:
        name = f"{source.stem}.png"
        if name in used:  # painting.jpg and painting.png both present
            name = f"{source.stem}_{source.suffix.lstrip('.').lower()}.png"
        used.add(name)
        names.append(name)
    return names


def _change_metrics(original: torch.Tensor, purified: torch.Tensor) -> dict[str, float | None]:
    """How far the purification moved the image: L-inf in grey levels, PSNR (capped) and SSIM (None if too small)."""
    from ..metrics import finite_psnr, linf, ssim

    with torch.no_grad():
        a, b = original.double(), purified.double()
        out: dict[str, float | None] = {
            "linf_255": round(float(linf(a, b)[0]) * 255.0, 4),
            "psnr_db": round(float(finite_psnr(a, b)[0]), 4),
        }
        try:
            out["ssim"] = round(float(ssim(a, b)[0]), 6)
        except InvalidArgumentError:
            out["ssim"] = None
    return out


def purify_folder(
    purification: Purification | str,
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    seed: int = 0,
    *,
    model=None,
    progress: bool = False,
) -> dict[str, Any]:
    """Purify every image in `input_dir` into `output_dir` and return a JSON-serialisable report.

    Each output is a PNG named after its source (``<stem>.png``; ``<stem>_<ext>.png`` when two sources share a
    stem), the same size, bit depth, alpha and ICC profile as its source, written atomically; the settings are
    stored in a PNG text chunk (:data:`METADATA_KEY`). Each image gets its own generator seeded by
    :func:`image_seed` from `seed` and its file name. Files that are not images, or cannot be read, are
    skipped with a reason; so is an image whose purification fails with a user error (recorded as
    ``"error: ..."``, and counted in ``"failed"``). Existing outputs are replaced; originals never are.

    Args:
        purification: a purification or a spec (then `model` as in :func:`get_purification`).
        input_dir, output_dir: folders; the output folder is created and must differ from the input folder.
        seed: the run's seed.
        progress: a tqdm bar over images.

    Returns:
        ``{"artshield_version", "purification" (its config), "spec", "input_dir", "output_dir", "seed",
        "images": [{"input", "output", "width", "height", "seed", "seconds", "linf_255", "psnr_db", "ssim"}],
        "skipped": [{"input", "reason"}], "failed", "total_seconds"}``.

    Raises:
        ImageReadError: `input_dir` is missing or not a folder.
        InvalidArgumentError: bad output folder or spec.
    """
    from ..imageio import iter_images, read_image, write_png

    started = time.perf_counter()
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidArgumentError(f"`seed` must be an integer, but is {seed!r}.")
    purification = get_purification(purification, model=model, progress=False)
    in_dir = Path(os.fspath(input_dir)).expanduser()
    out_dir = Path(os.fspath(output_dir)).expanduser()
    listing = iter_images(in_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidArgumentError(f"output {str(out_dir)!r} must be a folder.")
    if out_dir.resolve() == in_dir.resolve():
        raise InvalidArgumentError(
            f"output folder {str(out_dir)!r} is the input folder; choose another so originals are never replaced."
        )
    config = purification.config
    report: dict[str, Any] = {
        "artshield_version": __version__,
        "purification": config,
        "spec": purification.spec,
        "input_dir": str(in_dir),
        "output_dir": str(out_dir),
        "seed": seed,
        "images": [],
        "skipped": [{"input": str(path), "reason": reason} for path, reason in listing.skipped],
        "failed": 0,
    }
    sources = list(listing.images)
    iterator: Any = sources
    bar = None
    if progress and len(sources) > 1:
        from tqdm.auto import tqdm

        bar = tqdm(sources, desc=purification.name, unit="img", dynamic_ncols=True, file=sys.stderr)
        iterator = bar
    names = dict(zip(sources, _output_names(sources), strict=True))
    try:
        for source in iterator:
            try:
                loaded = read_image(source)
            except ImageReadError as exc:
                report["skipped"].append({"input": str(source), "reason": str(exc)})
                continue
            file_seed = image_seed(seed, source.name)
            generator = torch.Generator(device="cpu").manual_seed(file_seed)
            began = time.perf_counter()
            try:
                purified = purification(loaded.rgb, generator)
                destination = write_png(
                    out_dir / names[source],
                    purified,
                    alpha=loaded.alpha,
                    bit_depth=loaded.bit_depth,
                    icc_profile=loaded.icc_profile,
                    text={METADATA_KEY: json.dumps({"source_name": source.name, "seed": file_seed, **config}, sort_keys=True)},
                    reference=loaded,
                )
            except ArtshieldError as exc:
                report["failed"] += 1
                report["skipped"].append({"input": str(source), "reason": f"error: {exc}"})
                logger.warning("%s: %s", source, exc)
                continue
            report["images"].append({
                "input": str(source),
                "output": str(destination),
                "width": int(loaded.rgb.shape[-1]),
                "height": int(loaded.rgb.shape[-2]),
                "seed": file_seed,
                "seconds": round(time.perf_counter() - began, 4),
                **_change_metrics(loaded.rgb, purified),
            })  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    report["total_seconds"] = round(time.perf_counter() - started, 3)
    return report


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------



def build_parser(prog: str = "python -m artshield.evaluate.purify") -> argparse.ArgumentParser:
    names = ", ".join(PURIFICATIONS)
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Apply a purification attack (what a mimic does to strip protection) to every image in a folder.",
        epilog=f"Methods: {names}. Specs: jpeg75, resize0.5, noise0.05, noise0.1, blur, noisy-upscale, diffpure, "
        "gridpure, impress, or name:key=value (e.g. diffpure:t_star=0.2:steps=20). --list shows them.",
    )
    parser.add_argument("method", nargs="?", help="purification spec, e.g. jpeg75 or diffpure:t_star=0.2")
    parser.add_argument("input_dir", nargs="?", help="folder of images to purify")
    parser.add_argument("output_dir", nargs="?", help="folder for the purified PNGs (created)")
    parser.add_argument("--model", default="demo", help="diffusion model for diffpure/gridpure/impress/noisy-upscale "
                        "(demo, a hub id, a diffusers folder or a .safetensors file; default demo)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0: reruns are identical)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument("--dtype", default="auto", help="model weights' precision: auto, fp32, fp16, bf16")
    parser.add_argument("--report", help="report path (default: OUTPUT_DIR/purify_report.json)")
    parser.add_argument("--list", action="store_true", help="list the purifications and exit")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    parser.add_argument("--version", action="version", version=f"artshield {__version__}")
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m artshield.evaluate.purify") -> int:
    """Run the command; returns the exit status (0 ok, 1 some image failed, 2 user error, 130 interrupted)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    configure_logging(prog, args.verbose)
    return run_command(prog, lambda: _run(args, parser), "finished images are kept, no partial file was written.")


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.list:
        for name, summary in describe_purifications():
            print(f"{name:15s} {summary}")
        return 0
    if not (args.method and args.input_dir and args.output_dir):
        parser.error("the following arguments are required: method, input_dir, output_dir")
    cls, settings = parse_spec(args.method)  # a bad spec fails before a model is loaded
    in_dir = Path(args.input_dir).expanduser()
    if not in_dir.is_dir():
        raise InvalidArgumentError(f"input {args.input_dir!r}: no such folder.")
    model = None
    if cls.needs_model(settings):
        from ..models import load

        model = load(args.model, device=args.device, dtype=args.dtype)
    progress = not args.quiet and sys.stderr.isatty()
    purification = get_purification(args.method, model=model, progress=progress, device=args.device, dtype=args.dtype)
    report = purify_folder(purification, in_dir, args.output_dir, seed=args.seed, progress=progress)
    for item in report["skipped"]:
        print(f"skip {item['input']}: {item['reason']}", file=sys.stderr)
    for entry in report["images"]:
        print(
            f"{entry['input']} → {entry['output']}  {entry['width']}×{entry['height']}  "
            f"PSNR {entry['psnr_db']:.1f} dB  L∞ {entry['linf_255']:.0f}/255  {entry['seconds']:.2f} s"
        )
    if not report["images"] and not report["failed"]:
        raise InvalidArgumentError(f"input {args.input_dir!r}: no images to purify.")
    report_path = Path(args.report).expanduser() if args.report else Path(args.output_dir).expanduser() / "purify_report.json"
    write_json_atomic(report_path, report)
    print(f"report: {report_path}")
    return 1 if report["failed"] else 0


__all__ = [
    "ALIASES",
    "DEFAULT_SEED",
    "METADATA_KEY",
    "PURIFICATIONS",
    "DiffPure",
    "DownUpscale",
    "GaussianBlurring",
    "GaussianNoising",
    "GrIDPure",
    "Impress",
    "JpegCompression",
    "NoPurification",
    "NoisyUpscaling",
    "Purification",
    "describe_purifications",
    "get_purification",
    "image_seed",
    "main",
    "parse_spec",
    "purify_folder",
    "write_json_atomic",
]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
