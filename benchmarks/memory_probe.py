"""Resident-memory probes the benchmarks share (Linux ``/proc``; every probe degrades to None/False elsewhere)."""

from __future__ import annotations

import ctypes
from pathlib import Path


def proc_status_kb(field: str) -> int | None:
    """A ``/proc/self/status`` field in kB (``VmRSS``: resident now, ``VmHWM``: the peak since the last reset)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def malloc_trim() -> None:
    """Give freed heap back to the OS (glibc), so that resident memory measures live memory."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
