"""artshield: protect artwork against diffusion-model mimicry.

The four rooms are :mod:`artshield.protect`, :mod:`artshield.authenticate`,
:mod:`artshield.finetune` and :mod:`artshield.fl_bridge`; they stand on
:mod:`artshield.engine` (perturbation and inversion) and :mod:`artshield.models`.
"""

__version__ = "0.1.0"

from .errors import ArtshieldError  # noqa: E402

__all__ = ["ArtshieldError", "__version__"]
