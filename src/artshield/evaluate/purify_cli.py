"""``artshield purify METHOD INPUT_DIR OUTPUT_DIR``: apply a purification to every image in a folder.

Everything a user can get wrong (the spec and its values, the folders, the report path, --device/--dtype)
is refused in one line, exit status 2, before a model is loaded; an image that cannot be read is skipped
with a line on stderr and the run goes on; exit status 1 when some image failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import __version__
from ..cli_support import ArgumentParser, add_common_arguments, add_model_arguments, model_options, run_cli
from ..errors import InvalidArgumentError
from ..fileio import write_json_atomic
from .purify_runner import plan_folder_run, purify_folder
from .purify_spec import PURIFICATIONS, check_spec, describe_purifications, get_purification

PROG = "python -m artshield.evaluate.purify_cli"
REPORT_NAME = "purify_report.json"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    names = ", ".join(PURIFICATIONS)
    parser = ArgumentParser(
        prog=prog,
        description="Apply a purification attack (what a mimic does to strip protection) to every image in a folder.",
        epilog=f"Methods: {names}. Specs: jpeg75, resize0.5, noise0.05, noise0.1, blur, noisy-upscale, diffpure, "
        "gridpure, impress, or name:key=value (e.g. diffpure:t_star=0.2:steps=20). --list shows them.",
    )
    parser.add_argument("method", nargs="?", help="purification spec, e.g. jpeg75 or diffpure:t_star=0.2")
    parser.add_argument("input_dir", nargs="?", help="folder of images to purify")
    parser.add_argument("output_dir", nargs="?", help="folder for the purified PNGs (created; not the input folder)")
    add_model_arguments(parser, model_help="diffusion model for diffpure/gridpure/impress/noisy-upscale (demo, a hub "
                        "id, a diffusers folder or a .safetensors file; default demo)")  # fmt: skip
    parser.add_argument("--report", help=f"report path (default: OUTPUT_DIR/{REPORT_NAME}); never an input")
    parser.add_argument("--list", action="store_true", help="list the purifications and exit")
    add_common_arguments(parser, __version__)
    return parser


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """Run the command; returns the exit status (0 ok, 1 some image failed, 2 user error, 130 interrupted)."""
    parser = build_parser(prog)
    return run_cli(prog, parser, argv, lambda args: _run(args, parser),
                   "finished images are kept, no partial file was written.")


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.list:
        for name, summary in describe_purifications():
            print(f"{name:15s} {summary}")
        return 0
    missing = [name for name in ("method", "input_dir", "output_dir") if not getattr(args, name)]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    # Everything is checked before a model loads: the spec and its values, the folders, the report path.
    cls, settings = check_spec(args.method)
    in_dir = Path(args.input_dir).expanduser()
    if not in_dir.exists():
        raise InvalidArgumentError(f"input {args.input_dir!r}: no such folder.")
    if not in_dir.is_dir():
        raise InvalidArgumentError(f"input {args.input_dir!r} is not a folder (purify takes a folder of images).")
    if args.report:
        report_label, report_path = "--report", Path(args.report).expanduser()
    else:
        report_label, report_path = "report", Path(args.output_dir).expanduser() / REPORT_NAME
    plan = plan_folder_run(in_dir, args.output_dir, report=(report_label, report_path))
    if not plan.sources:
        raise InvalidArgumentError(f"input {args.input_dir!r}: no images to purify.")
    model = None
    if cls.needs_model(settings):
        from ..models import load

        model = load(args.model, **model_options(args))
    progress = not args.quiet and sys.stderr.isatty()
    purification = get_purification(args.method, model=model, progress=progress, device=args.device, dtype=args.dtype)

    def skip(path: str, reason: str) -> None:
        print(f"skip {path}: {reason}", file=sys.stderr, flush=True)

    report = purify_folder(purification, in_dir, args.output_dir, seed=args.seed, progress=progress, on_skip=skip)
    for entry in report["images"]:
        print(
            f"{entry['input']} → {entry['output']}  {entry['width']}×{entry['height']}  "
            f"PSNR {entry['psnr_db']:.1f} dB  L∞ {entry['linf_255']:.0f}/255  {entry['seconds']:.2f} s"
        )
    if not report["images"] and not report["failed"]:
        raise InvalidArgumentError(f"input {args.input_dir!r}: no image could be read, nothing was purified.")
    write_json_atomic(report_path, report)
    print(f"report: {report_path}")
    return 1 if report["failed"] else 0


__all__ = ["build_parser", "main"]


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(main())
