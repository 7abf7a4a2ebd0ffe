"""What every artshield command does the same way: logging set-up, and user errors as one line with exit 2.

An :class:`~artshield.errors.ArtshieldError` (bad path, unreadable image, bad spec, incompatible model) is a
mistake the user can fix: it becomes ``<prog>: error: <message>`` on stderr and exit status 2, with no
traceback. Ctrl-C becomes one line saying what was kept, and exit status 130. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
from collections.abc import Callable, Sequence

from .allocator import keep_freed_memory
from .errors import ArtshieldError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

#: Names ``--dtype`` accepts (the model layer maps them to torch dtypes).
DTYPE_CHOICES = ("auto", "fp32", "float32", "fp16", "float16", "half", "bf16", "bfloat16")


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line, ``<prog>: error: <message> (see <prog> --help)``, exit status 2,
    like every other user error (no usage block). Sub-parsers inherit the class."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind: type, text: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a {'whole ' if kind is int else ''}number, not {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text!r}")
    return value


def bounded(kind: type = int, minimum: float | None = None, maximum: float | None = None) -> Callable[[str], float]:
    """An argparse ``type=`` that accepts a finite int/float within [minimum, maximum], checked at parse time
    (before any model loads)."""

    def parse(text: str):
        value = _number(kind, text)
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, not {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, not {text}")
        return value

    parse.__name__ = f"{kind.__name__} in [{minimum}, {maximum}]"
    return parse


positive_int = bounded(int, 1)
non_negative_int = bounded(int, 0)
finite_float = bounded(float)
positive_float = bounded(float, 1e-300)


def device_name(text: str) -> str:
    """``--device``: auto, cpu, cuda, cuda:N or mps (checked before anything loads)."""
    if re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", text.strip().lower()):
        return text.strip().lower()
    raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda, cuda:N or mps, not {text!r}")


def add_model_arguments(parser: argparse.ArgumentParser, *, model_help: str, default: str | None = "demo") -> None:
    """``--model``, ``--device`` and ``--dtype``, the same in every command that loads a diffusion model."""
    parser.add_argument("--model", default=default, help=model_help)
    parser.add_argument("--device", default="auto", type=device_name, help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, metavar="{auto,fp32,fp16,bf16}",
                        help="the model weights' precision (default auto: fp32 on CPU, bf16/fp16 on GPUs)")
    parser.add_argument("--compute-dtype", default="auto", choices=DTYPE_CHOICES, metavar="{auto,fp32,bf16,fp16}",
                        help="precision the VAE and UNet compute in (autocast); default auto: bf16 on CPUs with native "
                             "bf16 (AVX512-BF16/AMX) for SD-size models, the weights' own elsewhere; fp32 for exact fp32")
    parser.add_argument("--low-memory", action="store_true",
                        help="gradient checkpointing of the VAE and UNet: about half the memory, a third more time")


def model_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of ``artshield.models.load`` that :func:`add_model_arguments` parsed."""
    return {"device": args.device, "dtype": args.dtype, "compute_dtype": args.compute_dtype, "low_memory": args.low_memory}


def add_common_arguments(parser: argparse.ArgumentParser, version: str) -> None:
    """``--seed``, ``-q``, ``-v`` and ``--version``, the same in every command."""
    parser.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0: reruns are identical)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    parser.add_argument("--version", action="version", version=f"artshield {version}")


def configure_logging(prog: str, verbose: bool) -> None:
    """INFO with ``-v``, else WARNING; without ``-v`` the "LPIPS/CLIP weights are missing" warnings are not
    printed (reports carry those reasons in their notes)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format=f"{prog}: %(message)s")
    if not verbose:
        for name in ("artshield.metrics", "artshield.evaluate.clip_score"):
            logging.getLogger(name).setLevel(logging.ERROR)


def run_command(prog: str, body: Callable[[], int], kept_on_interrupt: str) -> int:
    """Run ``body()`` and return its exit status, turning user errors and Ctrl-C into one line on stderr."""
    try:
        return body()
    except ArtshieldError as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {kept_on_interrupt}", file=sys.stderr)
        return EXIT_INTERRUPTED


def run_cli(
    prog: str,
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    body: Callable[[argparse.Namespace], int],
    kept_on_interrupt: str = "nothing half-written was left.",
) -> int:
    """The whole life of a command: parse `argv` (one-line errors), set up logging (``args.verbose``), run
    ``body(args)``; a user error or Ctrl-C at any point, start-up included, is one line on stderr."""
    try:
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {kept_on_interrupt}", file=sys.stderr)
        return EXIT_INTERRUPTED
    configure_logging(prog, getattr(args, "verbose", False))
    keep_freed_memory()  # large tensors reuse freed memory instead of faulting fresh pages every step
    return run_command(prog, lambda: body(args), kept_on_interrupt)


def one_line(exc: BaseException) -> str:
    """An error message on one line (messages that wrap, or embed a library's multi-line text, are folded)."""
    return " ".join(str(exc).split())


__all__ = [
    "DTYPE_CHOICES",
    "EXIT_INTERRUPTED",
    "EXIT_USER_ERROR",
    "ArgumentParser",
    "add_common_arguments",
    "add_model_arguments",
    "bounded",
    "configure_logging",
    "device_name",
    "finite_float",
    "non_negative_int",
    "one_line",
    "positive_float",
    "positive_int",
    "run_cli",
    "run_command",
]
