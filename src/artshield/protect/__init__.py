"""Protection methods: objectives on the perturbation engine, configured once and called on images.

    >>> from artshield.models import load
    >>> from artshield.protect import AdvDM
    >>> protected = AdvDM(load("demo"), eps=8 / 255, steps=100)(images)
"""

from .advdm import AdvDM
from .aspl import ASPL
from .base import STRENGTHS, ProtectionMethod, ProtectionResult, preset_step_size
from .diffusionguard import DiffusionGuard
from .mist import Mist, MistLunet
from .photoguard import PhotoGuard, PhotoGuardDiffusion
from .registry import ALIASES, INPAINTING_METHODS, METHODS, describe_methods, get_method
from .sds import SDST, SDSMinus, SDSPlus

__all__ = [
    "ALIASES",
    "ASPL",
    "INPAINTING_METHODS",
    "METHODS",
    "SDST",
    "STRENGTHS",
    "AdvDM",
    "DiffusionGuard",
    "Mist",
    "MistLunet",
    "PhotoGuard",
    "PhotoGuardDiffusion",
    "ProtectionMethod",
    "ProtectionResult",
    "SDSMinus",
    "SDSPlus",
    "describe_methods",
    "get_method",
    "preset_step_size",
]
