"""What every artshield command does the same way: logging set-up, and user errors as one line with exit 2.

An :class:`~artshield.errors.ArtshieldError` (bad path, unreadable image, bad spec, incompatible model) is a
mistake the user can fix: it becomes ``<prog>: error: <message>`` on stderr and exit status 2, with no
traceback. Ctrl-C becomes one line saying what was kept, and exit status 130. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from .errors import ArtshieldError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def configure_logging(prog: str, verbose: bool) -> None:
    """INFO with ``-v``, else WARNING; without ``-v`` the "LPIPS/CLIP weights are missing" warnings are not
    printed (reports carry those reasons in their notes)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format=f"{prog}: %(message)s")
    if not verbose:
        for name in ("artshield.evaluate.metrics", "artshield.evaluate.clip_score"):
            logging.getLogger(name).setLevel(logging.ERROR)


def run_command(prog: str, body: Callable[[], int], kept_on_interrupt: str) -> int:
    """Run ``body()`` and return its exit status, turning user errors and Ctrl-C into one line on stderr."""
    try:
        return body()
    except ArtshieldError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {kept_on_interrupt}", file=sys.stderr)
        return EXIT_INTERRUPTED


__all__ = ["EXIT_INTERRUPTED", "EXIT_USER_ERROR", "configure_logging", "run_command"]
