"""Protection methods: objectives on the perturbation engine, configured once and called on images.

    >>> from artshield.models import load
    >>> from artshield.protect import AdvDM
    >>> protected = AdvDM(load("demo"), eps=8 / 255, steps=100)(images)
"""

from .advdm import AdvDM
from .base import STRENGTHS, ProtectionMethod, ProtectionResult, preset_step_size
from .registry import METHODS, describe_methods, get_method

__all__ = [
    "METHODS",
    "STRENGTHS",
    "AdvDM",
    "ProtectionMethod",
    "ProtectionResult",
    "describe_methods",
    "get_method",
    "preset_step_size",
]
