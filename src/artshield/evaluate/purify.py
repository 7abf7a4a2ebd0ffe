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

A spec that cannot be read raises :class:`~artshield.errors.InvalidArgumentError` naming the spec;
:func:`check_spec` also checks the values (``jpeg0``, ``diffpure:t_star=2``) without loading anything.

Command line (user errors are one line on stderr and exit status 2, before any model loads)::

    artshield purify METHOD INPUT_DIR OUTPUT_DIR [--model SPEC] [--seed N] [--report PATH]

This module is the public face; the code lives in one module per job:

==========================  ========================================================================
:mod:`.purify_base`         the :class:`Purification` base class, argument checks, :func:`image_seed`
:mod:`.purify_image`        none, jpeg, resize, noise, blur
:mod:`.purify_model`        diffpure, gridpure, noisy-upscale, impress (mechanics: :mod:`.purify_diffusion`)
:mod:`.purify_spec`         the registry and the spec language
:mod:`.purify_runner`       a folder run (:func:`purify_folder`) and its checks before work
:mod:`.purify_cli`          the command line (``artshield purify``, ``python -m artshield.evaluate.purify_cli``)
==========================  ========================================================================
"""

from __future__ import annotations

from .purify_base import DEFAULT_SEED, Purification, image_seed
from .purify_image import DownUpscale, GaussianBlurring, GaussianNoising, JpegCompression, NoPurification
from .purify_model import DiffPure, GrIDPure, Impress, NoisyUpscaling
from .purify_runner import METADATA_KEY, plan_folder_run, purify_folder
from .purify_spec import (
    ALIASES,
    PURIFICATIONS,
    check_spec,
    describe_purifications,
    get_purification,
    parse_spec,
)

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
    "check_spec",
    "describe_purifications",
    "get_purification",
    "image_seed",
    "parse_spec",
    "plan_folder_run",
    "purify_folder",
]

