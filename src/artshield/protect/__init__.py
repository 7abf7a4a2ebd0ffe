"""Protection methods: objectives on the perturbation engine, configured once and called on images.

    >>> from artshield.models import load
    >>> from artshield.protect import AdvDM
    >>> protected = AdvDM(load("demo"), eps=8 / 255, steps=100)(images)

The names below are imported on first use, so that ``import artshield.protect.cli`` (the ``protect``
command) starts without importing torch: a Ctrl-C while it starts up is then one line, not a traceback.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "ALIASES": ".registry",
    "ASPL": ".aspl",
    "INPAINTING_METHODS": ".registry",
    "METHODS": ".registry",
    "SDST": ".sds",
    "STRENGTHS": ".presets",
    "AdvDM": ".advdm",
    "DiffusionGuard": ".diffusionguard",
    "Mist": ".mist",
    "MistLunet": ".mist",
    "PhotoGuard": ".photoguard",
    "PhotoGuardDiffusion": ".photoguard",
    "ProtectionMethod": ".base",
    "ProtectionResult": ".base",
    "SDSMinus": ".sds",
    "SDSPlus": ".sds",
    "describe_methods": ".registry",
    "get_method": ".registry",
    "preset_step_size": ".presets",
}

if TYPE_CHECKING:  # pragma: no cover
    from .advdm import AdvDM
    from .aspl import ASPL
    from .base import ProtectionMethod, ProtectionResult
    from .diffusionguard import DiffusionGuard
    from .mist import Mist, MistLunet
    from .photoguard import PhotoGuard, PhotoGuardDiffusion
    from .presets import STRENGTHS, preset_step_size
    from .registry import ALIASES, INPAINTING_METHODS, METHODS, describe_methods, get_method
    from .sds import SDST, SDSMinus, SDSPlus


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "ALIASES",
    "ASPL",
    "AdvDM",
    "DiffusionGuard",
    "INPAINTING_METHODS",
    "METHODS",
    "Mist",
    "MistLunet",
    "PhotoGuard",
    "PhotoGuardDiffusion",
    "ProtectionMethod",
    "ProtectionResult",
    "SDSMinus",
    "SDSPlus",
    "SDST",
    "STRENGTHS",
    "describe_methods",
    "get_method",
    "preset_step_size",
]
