"""The ``protect`` command: protect an image or a folder of images.

    protect painting.png                         # demo model, medium strength, advdm
    protect paintings/ -o protected/ --model stabilityai/stable-diffusion-2-1-base --strength high

Every user error is one line on stderr and a non-zero exit; no traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from .. import __version__
from ..cli_support import EXIT_INTERRUPTED, EXIT_USER_ERROR, configure_logging, run_command  # noqa: F401 - re-exported
from ..errors import ArtshieldError, InvalidArgumentError

logger = logging.getLogger("artshield.protect")
# The tokenizers library warns about forked parallelism in every subprocess otherwise.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")



def parse_level(text: str, name: str) -> float:
    """Parse a budget or step size: ``8/255``, ``8`` (grey levels, i.e. 8/255) or ``0.03`` ([0, 1] units)."""
    try:
        if "/" in text:
            numerator, denominator = text.split("/", 1)
            value = float(numerator) / float(denominator)
        else:
            value = float(text)
            value = value / 255.0 if value >= 1 else value
    except (ValueError, ZeroDivisionError):
        raise InvalidArgumentError(f"`{name}` must look like 8/255, 8 (grey levels) or 0.03, but is {text!r}.") from None
    if not 0 < value <= 1:
        raise InvalidArgumentError(f"`{name}` must be in (0, 255/255], but is {text!r}.")
    return value


def build_parser(prog: str = "protect") -> argparse.ArgumentParser:
    from .base import STRENGTHS

    presets = ", ".join(f"{k}={round(v[0] * 255)}/255×{v[1]} steps" for k, v in STRENGTHS.items())
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Protect artwork against diffusion-model mimicry with an imperceptible perturbation.",
        epilog="The demo model shows the mechanics only; pass a real Stable Diffusion checkpoint for real protection.",
    )
    parser.add_argument("input", nargs="?", help="an image or a folder of images")
    parser.add_argument("-o", "--output", help="output .png (for an image) or folder (for a folder)")
    parser.add_argument("--model", default="demo", help="demo, demo-inpaint, a hub id, a diffusers folder or a .safetensors file (default: demo)")
    parser.add_argument("--config", help="for single-file checkpoints: a diffusers folder or hub id with matching configs")
    parser.add_argument("--trust-pickle", action="store_true", help="allow .ckpt pickles (read with weights_only=True)")
    parser.add_argument("--method", default="advdm", help="protection method (default: advdm; see --list-methods)")
    parser.add_argument("--list-methods", action="store_true", help="list the methods and exit")
    parser.add_argument("--mask", metavar="MASK.png",
                        help="an image the input's size: white = the region an editor may repaint (left unprotected), "
                        "black = protected; the perturbation stays in the black part")
    strength = parser.add_mutually_exclusive_group()
    strength.add_argument("--strength", choices=sorted(STRENGTHS), help=f"preset budget and steps ({presets}); default medium")
    strength.add_argument("--eps", help="L-inf budget: 8/255, 8 (grey levels) or 0.03")
    parser.add_argument("--steps", type=int, help="gradient steps (overrides the preset)")
    parser.add_argument("--step-size", help="step size, same units as --eps (default: 6.25 × eps / steps)")
    parser.add_argument("--prompt", help="text condition used by the method (default: the method's own)")
    parser.add_argument("--robust", nargs="?", const=True, default=False, metavar="TRANSFORMS",
                        help="optimise through random JPEG/resize/crop/noise (expectation over transforms); "
                        "optionally a spec such as 'jpeg,resize'")
    parser.add_argument("--samples-per-step", type=int, default=1, help="Monte-Carlo samples averaged per step")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0: reruns are identical)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument("--dtype", default="auto", help="weights' precision: auto, fp32, fp16, bf16")
    parser.add_argument("--tile-size", type=int, help="process larger images in tiles of this many pixels")
    parser.add_argument("--report", help="report path (default: beside the output)")
    parser.add_argument("--eval-samples", type=int, default=8, help="draws used to measure the objective before/after")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs (never originals)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details (e.g. why LPIPS is unavailable)")
    parser.add_argument("--version", action="version", version=f"artshield {__version__}")
    return parser


def main(argv: list[str] | None = None, prog: str = "protect") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    configure_logging(prog, args.verbose)  # the report notes why LPIPS is missing; no need to repeat it
    return run_command(prog, lambda: run(args, parser), "finished images are kept, no partial file was written.")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .registry import describe_methods, get_method

    if args.list_methods:
        for name, summary in describe_methods():
            print(f"{name:22s} {summary}")
        return 0
    if not args.input:
        parser.error("the following arguments are required: input")
    method_cls = get_method(args.method)
    jobs_and_skips = _plan(args)
    jobs, skipped = jobs_and_skips
    for path, reason in skipped:
        print(f"skip {path}: {reason}", file=sys.stderr)
    if not jobs:
        raise InvalidArgumentError(f"input {args.input!r}: no images to protect.")

    from ..models import load

    started = time.perf_counter()
    model = load(args.model, device=args.device, dtype=args.dtype, config=args.config, trust_pickle=args.trust_pickle)
    method = _build_method(method_cls, model, args)
    report_path = _report_path(args, jobs)
    report = {
        "artshield_version": __version__,
        "model": args.model,
        "device": str(model.device),
        "dtype": str(model.dtype).replace("torch.", ""),
        "settings": method.config,
        "images": [],
        "skipped": [{"input": str(p), "reason": r} for p, r in skipped],
    }
    return _protect_all(method, jobs, args, report, report_path, started)


def _plan(args):
    from .files import plan_jobs

    return plan_jobs(args.input, args.output)


def _build_method(method_cls, model, args):
    kwargs = {
        "seed": args.seed,
        "robust": args.robust,
        "samples_per_step": args.samples_per_step,
        "progress": not args.quiet and sys.stderr.isatty(),
    }
    if args.tile_size is not None:
        kwargs["tile_size"] = args.tile_size
    if args.prompt is not None:
        kwargs["prompt"] = args.prompt
    if args.steps is not None:
        if args.steps < 1:
            raise InvalidArgumentError(f"`--steps` must be >= 1, but is {args.steps}.")
        kwargs["steps"] = args.steps
    if args.eps is not None:
        kwargs["eps"] = parse_level(args.eps, "--eps")
    if args.step_size is not None:
        kwargs["step_size"] = parse_level(args.step_size, "--step-size")
    return method_cls.from_strength(model, args.strength or "medium", **kwargs)


def _report_path(args, jobs) -> Path:
    if args.report:
        return Path(args.report).expanduser()
    if Path(args.input).is_file():
        output = jobs[0].output
        return output.with_name(f"{output.stem}.report.json")
    return jobs[0].output.parent / "report.json"


def _protect_all(method, jobs, args, report, report_path, started) -> int:
    from ..fileio import write_json_atomic
    from ..imageio import read_mask
    from .files import fingerprint, protect_file, run_settings, skip_reason

    single = len(jobs) == 1 and Path(args.input).is_file()
    mask = read_mask(args.mask) if args.mask else None
    settings = run_settings(method, args.mask)
    iterator = jobs
    bar = None
    if not single and not args.quiet:
        from tqdm.auto import tqdm

        bar = tqdm(jobs, desc="images", unit="img", dynamic_ncols=True, file=sys.stderr)
        iterator = bar
    failures = 0
    for job in iterator:
        source_hash = fingerprint(job.source)
        reason = skip_reason(job, settings, source_hash, args.overwrite)
        if reason is not None:
            if single and reason.startswith("output "):
                raise InvalidArgumentError(reason)
            report["skipped"].append({"input": str(job.source), "reason": reason})
            _say(f"skip {job.source}: {reason}", bar)
            continue
        try:
            entry = protect_file(
                method, job, eval_samples=args.eval_samples, source_hash=source_hash, mask=mask, mask_path=args.mask
            )
        except ArtshieldError as exc:
            if single:
                raise
            failures += 1
            report["skipped"].append({"input": str(job.source), "reason": f"error: {exc}"})
            _say(f"error {job.source}: {exc}", bar)
            continue
        report["images"].append(entry)
        report["total_seconds"] = round(time.perf_counter() - started, 3)
        write_json_atomic(report_path, report)  # after every image, so an interrupted folder run keeps its report
        _say(_summary_line(entry), bar)
    report["total_seconds"] = round(time.perf_counter() - started, 3)
    write_json_atomic(report_path, report)
    _say(f"report: {report_path}", bar)
    return 1 if failures else 0


def _summary_line(entry: dict) -> str:
    before, after = entry.get("objective_before"), entry.get("objective_after")
    objective = ""
    if before is not None and after is not None:
        change = (after - before) / abs(before) * 100 if before else float("nan")
        objective = f"  objective {before:.4g} → {after:.4g} ({change:+.0f}%)"
    psnr = entry.get("psnr_db")
    psnr_text = f"{psnr:.1f} dB" if isinstance(psnr, int | float) else "inf"
    return (
        f"{entry['input']} → {entry['output']}  {entry['width']}×{entry['height']}  "
        f"L∞ {entry.get('linf_255', float('nan')):.0f}/255  PSNR {psnr_text}  SSIM {entry.get('ssim', float('nan')):.3f}"
        f"{objective}  {entry['seconds']:.1f} s"
    )


def _say(text: str, bar) -> None:
    if bar is not None:
        bar.write(text, file=sys.stdout)
    else:
        print(text)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
