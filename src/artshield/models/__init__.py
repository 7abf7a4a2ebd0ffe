"""Model layer: load any Stable Diffusion 1.x/2.x checkpoint (or the embedded demo model) into one handle.

    >>> from artshield.models import load
    >>> model = load("demo")                      # or a hub id, a diffusers folder, a .safetensors file
    >>> latents = model.encode(images)            # images: float (B, 3, H, W) in [0, 1]
"""

from .device import resolve_device, resolve_dtype
from .handle import DiffusionModel, randn_like
from .loading import load

__all__ = ["DiffusionModel", "load", "randn_like", "resolve_device", "resolve_dtype"]
