"""Keep freed memory for reuse: glibc malloc settings for long CPU jobs.

glibc's malloc serves every block above 32 MB with a fresh ``mmap`` and returns it to the system on ``free``. A
protection step at Stable Diffusion size allocates and frees gigabytes of such blocks (VAE activations at
512² are 134 MB each), so every step faults the same pages in again: about 12 GB of fresh pages and 17 % of the
CPU time per AdvDM step (``benchmarks/sd_scale.py`` measures it). Serving large blocks from the heap and never
trimming it lets each step reuse the previous step's memory. The price: the process keeps its peak memory until
it exits, which is what a protection job does anyway.

Commands apply it at start-up (:func:`artshield.cli_support.run_cli`); library users may call
:func:`keep_freed_memory` themselves. ``ARTSHIELD_MALLOC=default`` leaves glibc as it is.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt(3) parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4

_applied = False


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to serve large blocks from the heap (no per-block ``mmap``) and never trim the heap.

    Returns True when the settings are in effect (now or from an earlier call); False on other C libraries
    (musl, macOS, Windows) or when ``ARTSHIELD_MALLOC=default``. Affects the whole process; safe to call twice.
    """
    global _applied
    if _applied:
        return True
    if os.environ.get("ARTSHIELD_MALLOC", "keep") == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success. A trim threshold of -1 is SIZE_MAX to glibc: the heap top is never returned.
    _applied = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, -1))
    return _applied
