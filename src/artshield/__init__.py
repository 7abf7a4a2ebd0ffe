"""artshield: protect artwork against diffusion-model mimicry.

The four rooms are :mod:`artshield.protect`, :mod:`artshield.authenticate`,
:mod:`artshield.finetune` and :mod:`artshield.fl_bridge`; they stand on
:mod:`artshield.engine` (perturbation and inversion) and :mod:`artshield.models`.
"""

import os as _os
import sys as _sys

__version__ = "0.1.0"

if "torch" not in _sys.modules:
    # OpenMP workers that spin while waiting make CPU runs 10-50x slower whenever anything else uses the
    # cores (measured here: a tiny AdvDM run took 55 s instead of 1 s beside a second process). Sleeping
    # workers cost almost nothing when the machine is idle. A user's own setting wins.
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .errors import ArtshieldError  # noqa: E402

__all__ = ["ArtshieldError", "__version__"]
