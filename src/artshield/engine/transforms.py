"""Differentiable image transforms for robust perturbations (expectation over transforms, EOT).

A mimic rarely trains on the exact pixels the artist published: images are JPEG-compressed by the
platform, resized, cropped, or noised before they reach a fine-tuning script. A perturbation that
only works on the exact pixels is therefore fragile. Following Athalye et al., "Synthesizing Robust
Adversarial Examples" (ICML 2018), the perturbation engine draws one random transform per
optimisation step and differentiates *through* it, so the objective holds in expectation over the
transform distribution.

This module is the one place to import transforms from; the code lives by job in:

* :mod:`.transform_base`: the contract (:class:`Transform`), the shared base class and argument
  helpers, :class:`Identity`, the combinators :class:`Compose` and :class:`RandomChoice`, and
  :func:`pad_to_multiple`;
* :mod:`.jpeg`: :class:`DiffJPEG`, :func:`quantization_tables` and the real round trip :func:`jpeg_pil`;
* :mod:`.image_transforms`: :class:`Resize`, :class:`RandomCrop`, :class:`GaussianNoise`,
  :class:`GaussianBlur`;
* :mod:`.transform_spec`: the spec language (:func:`parse_transforms`, grammar in its docstring),
  :func:`transform_from_config`, :data:`TRANSFORMS` and :func:`default_robust_transforms`.
"""

from __future__ import annotations

from .image_transforms import GaussianBlur, GaussianNoise, RandomCrop, Resize
from .jpeg import DiffJPEG, jpeg_pil, quantization_tables
from .transform_base import Compose, Identity, RandomChoice, Transform, pad_to_multiple
from .transform_spec import TRANSFORMS, default_robust_transforms, parse_transforms, transform_from_config

__all__ = [
    "Transform",
    "Identity",
    "DiffJPEG",
    "Resize",
    "RandomCrop",
    "GaussianNoise",
    "GaussianBlur",
    "Compose",
    "RandomChoice",
    "jpeg_pil",
    "quantization_tables",
    "default_robust_transforms",
    "transform_from_config",
    "pad_to_multiple",
    "parse_transforms",
    "TRANSFORMS",
]
