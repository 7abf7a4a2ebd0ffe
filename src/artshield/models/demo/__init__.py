"""The embedded demo model: a small model with the Stable Diffusion architecture, trained by
:mod:`artshield.models.demo.train` on a procedural world of named styles, shipped in the diffusers
folder layout under ``weights/``. It makes every feature runnable and testable offline; it is not real
protection (see the README for which real checkpoints to pass)."""

from __future__ import annotations

from pathlib import Path

DEMO_WEIGHTS = Path(__file__).resolve().parent / "weights"

__all__ = ["DEMO_WEIGHTS"]
