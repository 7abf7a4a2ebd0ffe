"""The ``protect`` command: protect an image or a folder of images.

    protect painting.png                         # a cached SD checkpoint if there is one, else the demo model
    protect paintings/ -o protected/ --model stabilityai/stable-diffusion-2-1-base --strength high

Everything a user can get wrong is checked before the model loads: arguments at parse time, then the
input, the mask, and every output path (image, report, folder) against every input and each other. A
user error is one line on stderr and exit status 2, with no traceback; nothing is written.

A folder run skips what it cannot read (a truncated or unsupported image), says so, protects the rest,
prints a summary and exits with status 1 if any image was skipped for an error. Files that are not images
(by content and name: ``notes.txt``) and images already protected or up to date are skipped without
counting as errors.

With no ``--model``, a complete Stable Diffusion 1.5/2.1 checkpoint in the local Hugging Face cache is used
(its inpainting variant for methods that model inpainting) and named on stderr; without one, the demo
model, with a one-line warning on stderr that is also stored in the report and in each PNG's metadata
(:mod:`artshield.models.defaults`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from .. import __version__
from ..cli_support import (
    ArgumentParser,
    add_common_arguments,
    add_model_arguments,
    model_options,
    non_negative_int,
    one_line,
    positive_int,
    run_cli,
)
from ..errors import ArtshieldError, InvalidArgumentError, MaskError, OutputWriteError

logger = logging.getLogger("artshield.protect")
# The tokenizers library warns about forked parallelism in every subprocess otherwise.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

KEPT_ON_INTERRUPT = "finished images are kept, no partial file was written."


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


def _level(name: str):
    """argparse ``type=`` for a budget or step size (checked at parse time)."""

    def parse(text: str) -> float:
        try:
            return parse_level(text, name)
        except InvalidArgumentError as exc:  # argparse names the option itself
            raise argparse.ArgumentTypeError(str(exc).replace(f"`{name}` ", "", 1).rstrip(".")) from None

    parse.__name__ = "level"
    return parse


def _method_name(text: str) -> str:
    from .registry import get_method

    try:
        return get_method(text).name
    except InvalidArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _robust_spec(text: str) -> str:
    from ..engine.transforms import parse_transforms

    try:
        parse_transforms(text)
    except InvalidArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def build_parser(prog: str = "protect") -> argparse.ArgumentParser:
    from .presets import STRENGTHS

    presets = ", ".join(f"{k}={round(v[0] * 255)}/255×{v[1]} steps" for k, v in STRENGTHS.items())
    parser = ArgumentParser(
        prog=prog,
        description="Protect artwork against diffusion-model mimicry with an imperceptible perturbation.",
        epilog="Without --model, a Stable Diffusion checkpoint in the local Hugging Face cache is used if there is one; "
        "otherwise the demo model, which shows the mechanics only and does not protect against real mimicry.",
    )
    parser.add_argument("input", nargs="?", help="an image or a folder of images")
    parser.add_argument("-o", "--output", help="output .png (for an image) or folder (for a folder)")
    add_model_arguments(
        parser,
        default=None,
        model_help="demo, demo-inpaint, a hub id, a diffusers folder or a .safetensors file (default: SD 1.5/2.1 "
        "from the local Hugging Face cache if present, else the demo model, with a warning)",
    )
    parser.add_argument("--config", help="for single-file checkpoints: a diffusers folder or hub id with matching configs")
    parser.add_argument("--trust-pickle", action="store_true", help="allow .ckpt pickles (read with weights_only=True)")
    parser.add_argument("--method", default="advdm", type=_method_name,
                        help="protection method (default: advdm; see --list-methods)")
    parser.add_argument("--list-methods", action="store_true", help="list the methods and exit")
    parser.add_argument("--mask", metavar="MASK.png",
                        help="an image the input's size: white = the region an editor may repaint (left unprotected), "
                        "black = protected; the perturbation stays in the black part")
    strength = parser.add_mutually_exclusive_group()
    strength.add_argument("--strength", choices=sorted(STRENGTHS), help=f"preset budget and steps ({presets}); default medium")
    strength.add_argument("--eps", type=_level("--eps"), help="L-inf budget: 8/255, 8 (grey levels) or 0.03")
    parser.add_argument("--steps", type=positive_int, help="gradient steps (overrides the preset)")
    parser.add_argument("--step-size", type=_level("--step-size"),
                        help="step size, same units as --eps (default: 6.25 × eps / steps)")
    parser.add_argument("--prompt", help="text condition used by the method (default: the method's own)")
    parser.add_argument("--robust", nargs="?", const=True, default=False, metavar="TRANSFORMS", type=_robust_spec,
                        help="optimise through random JPEG/resize/crop/noise (expectation over transforms); "
                        "optionally a spec such as 'jpeg,resize'")
    parser.add_argument("--samples-per-step", type=positive_int, default=1, help="Monte-Carlo samples averaged per step")
    parser.add_argument("--tile-size", type=positive_int,
                        help="images above tile-size² pixels are processed in tiles of that area "
                        "(default: twice the model's native resolution)")
    parser.add_argument("--max-pixels", type=positive_int,
                        help="refuse images with more pixels than this (default 89478485, Pillow's "
                        "decompression-bomb limit); raise it to protect a larger artwork")
    parser.add_argument("--report", help="report path (default: beside the output)")
    parser.add_argument("--eval-samples", type=non_negative_int, default=8,
                        help="draws used to measure the objective before/after (0: skip)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs (never originals)")
    add_common_arguments(parser, __version__)
    return parser


def main(argv: list[str] | None = None, prog: str = "protect") -> int:
    try:
        parser = build_parser(prog)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing was written.", file=sys.stderr)
        return 130
    return run_cli(prog, parser, argv, lambda args: run(args, prog), KEPT_ON_INTERRUPT)


def run(args: argparse.Namespace, prog: str = "protect") -> int:
    from .registry import INPAINTING_METHODS, describe_methods, get_method

    if args.list_methods:
        for name, summary in describe_methods():
            print(f"{name:22s} {summary}")
        return 0
    if not args.input:
        raise InvalidArgumentError(f"give an image or a folder to protect (see {prog} --help).")
    method_cls = get_method(args.method)
    run_ = _Run(args)
    run_.check()  # everything a user can get wrong, before the model loads
    if run_.finished is not None:
        return run_.finished

    from ..models import load
    from ..models.defaults import choose_default_model, demo_model_warning

    started = time.perf_counter()
    if args.model is None:
        choice = choose_default_model(inpainting=method_cls.name in INPAINTING_METHODS)
        spec, name, demo = choice.spec, choice.name, choice.is_demo
        print(f"{prog}: {'warning: ' if demo else ''}{choice.notice}", file=sys.stderr)
    else:
        spec = name = args.model
        demo = args.model in ("demo", "demo-inpaint")
        if demo:
            print(f"{prog}: warning: {demo_model_warning(args.model == 'demo-inpaint')}", file=sys.stderr)
    notes = {"demo_model_warning": demo_model_warning(spec == "demo-inpaint")} if demo else {}
    model = load(spec, **model_options(args), config=args.config, trust_pickle=args.trust_pickle)
    method = _build_method(method_cls, model, args)
    report = {
        "artshield_version": __version__,
        "model": name,
        "model_source": str(getattr(model, "source", spec)),
        "model_chosen_by": "--model" if args.model is not None else "default",
        **notes,
        "device": str(model.device),
        "dtype": str(model.dtype).replace("torch.", ""),
        "compute_dtype": str(model.compute_dtype or model.dtype).replace("torch.", ""),
        "low_memory": model.low_memory,
        "settings": method.config,
        "images": [],
        "skipped": [{"input": str(p), "reason": r} for p, r in run_.skipped],
    }
    return run_.protect_all(method, report, notes, started)


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
        kwargs["steps"] = args.steps
    if args.eps is not None:
        kwargs["eps"] = args.eps
    if args.step_size is not None:
        kwargs["step_size"] = args.step_size
    return method_cls.from_strength(model, args.strength or "medium", **kwargs)


def read_source(path: Path, max_pixels: int | None):
    """Read an input image; a too-large one is refused with the option that raises the limit."""
    from ..imageio import ImageTooLargeError, read_image

    try:
        return read_image(path, max_pixels=max_pixels)
    except ImageTooLargeError as exc:
        hint = f" Pass --max-pixels {exc.pixels} to protect it anyway." if exc.pixels else " Raise --max-pixels to protect it."
        raise ImageTooLargeError(f"{exc}{hint}", pixels=exc.pixels, limit=exc.limit) from None


def is_artshield_report(path: Path) -> bool:
    """Whether `path` is a JSON report artshield wrote (so that a rerun may replace it)."""
    try:
        if not path.is_file() or path.stat().st_size > 50_000_000:
            return False
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and "artshield_version" in data and "images" in data


def _is_error_skip(path: Path) -> bool:
    """A folder entry skipped as "not an image" that was meant to be one (its name says so): an error."""
    from ..imageio import IMAGE_EXTENSIONS

    return path.suffix.lower() in IMAGE_EXTENSIONS


class _Run:
    """One run's plan: jobs, skipped files, mask, report path; checked before any model loads."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.finished: int | None = None  # an exit status when the checks leave nothing to do
        self.first = None  # the single input image, already read
        self.mask = None
        self.mask_path: Path | None = None
        self.report_path: Path | None = None
        self.errors: list[tuple[Path, str]] = []  # folder entries skipped for an error before any work

    # ------------------------------------------------------------------ checks
    def check(self) -> None:
        from .files import plan_jobs

        args = self.args
        self.jobs, self.skipped = plan_jobs(args.input, args.output)
        self.single = Path(args.input).expanduser().is_file()
        self._check_mask()
        if self.jobs:
            self.report_path = self._report_path()
            self._check_outputs()
        if self.single:
            self._check_single()
            return
        self.errors = [(p, r) for p, r in self.skipped if _is_error_skip(p)]
        if not self.jobs and not self.errors:
            others = f" (skipped {len(self.skipped)} files that are not images, e.g. {self.skipped[0][0].name})" if self.skipped else ""
            raise InvalidArgumentError(f"input {args.input!r}: no images to protect{others}.")
        for path, reason in self.skipped:
            print(f"{'error' if _is_error_skip(path) else 'skip'} {path}: {reason}", file=sys.stderr)
        if not self.jobs:
            print(f"protected 0 images; {len(self.errors)} skipped for an error (listed above).")
            self.finished = 1

    def _check_mask(self) -> None:
        from ..imageio import read_mask

        if not self.args.mask:
            return
        path = Path(self.args.mask).expanduser()
        if path.is_dir():
            raise MaskError(f"mask {str(path)!r} is a folder; give an image file (white = editable, black = protected).")
        self.mask_path = path
        self.mask = read_mask(path)

    def _report_path(self) -> Path:
        args = self.args
        if args.report:
            return Path(args.report).expanduser()
        if self.single:
            output = self.jobs[0].output
            return output.with_name(f"{output.stem}.report.json")
        return self.jobs[0].output.parent / "report.json"

    def _check_outputs(self) -> None:
        from ..fileio import check_output_file, refuse_overlaps, same_path

        args, report = self.args, self.report_path
        mask = [("mask", self.mask_path)] if self.mask_path is not None else []
        if self.single:
            check_output_file("output", self.jobs[0].output)
        check_output_file("report", report)
        if self.single:
            job = self.jobs[0]
            refuse_overlaps(
                inputs=[("input", job.source), *mask], outputs=[("output", job.output), ("report", report)]
            )
        else:
            others = [("file in the input folder", p) for p, _ in self.skipped if not is_artshield_report(p)]
            refuse_overlaps(inputs=[*mask, *others], outputs=[("report", report)])
            for job in self.jobs:
                if same_path(report, job.source) or same_path(report, job.output):
                    what = "input" if same_path(report, job.source) else "output"
                    raise OutputWriteError(
                        f"report {str(report)!r} is the {what} {str(job.source if what == 'input' else job.output)!r}; "
                        "it would be overwritten. Choose another --report path."
                    )
            self._check_folder_outputs(mask, others)
        if report.exists() and not args.overwrite and not is_artshield_report(report):
            raise OutputWriteError(
                f"report {str(report)!r} exists and is not an artshield report; choose another --report path "
                "(or pass --overwrite to replace it)."
            )

    def _check_folder_outputs(self, mask, others) -> None:
        """Output images may replace only earlier artshield outputs, never an input image the user made."""
        from ..imageio import read_image
        from .files import read_metadata

        sources = {job.source.resolve(): job.source for job in self.jobs}
        kept = {path.resolve(): (label, path) for label, path in [*mask, *others]}
        for job in self.jobs:
            if job.output.resolve() in kept:
                label, path = kept[job.output.resolve()]
                raise OutputWriteError(
                    f"output {str(job.output)!r} (for {str(job.source)!r}) is the {label} {str(path)!r}; it would be "
                    "overwritten. Choose another output folder."
                )
            clash = sources.get(job.output.resolve())
            if clash is None:
                continue
            try:
                protected = read_metadata(read_image(clash).info) is not None
            except ArtshieldError:
                protected = False
            if not protected:
                raise OutputWriteError(
                    f"output {str(job.output)!r} (for {str(job.source)!r}) is the input image {str(clash)!r}; it "
                    "would be overwritten. Choose another output folder."
                )

    def _check_single(self) -> None:
        from .files import fingerprint, skip_reason

        job = self.jobs[0]
        self.first = read_source(job.source, self.args.max_pixels)
        _check_mask_size(self.mask, self.mask_path, self.first.rgb, job.source)
        reason = skip_reason(job, None, fingerprint(job.source), self.args.overwrite, self.first)
        if reason is None:
            return
        if reason.startswith("output "):
            raise OutputWriteError(reason)
        print(f"skip {job.source}: {reason}")
        self.finished = 0

    # ------------------------------------------------------------------ work
    def protect_all(self, method, report: dict, notes: dict, started: float) -> int:
        from ..fileio import write_json_atomic
        from .files import fingerprint, protect_file, run_settings, skip_reason

        args, jobs = self.args, self.jobs
        settings = run_settings(method, self.mask_path)
        bar = None
        iterator = jobs
        if not self.single and not args.quiet:
            from tqdm.auto import tqdm

            bar = tqdm(jobs, desc="images", unit="img", dynamic_ncols=True, file=sys.stderr)
            iterator = bar
        errors = list(self.errors)
        done = 0
        for job in iterator:
            try:
                loaded = self.first if self.single else read_source(job.source, args.max_pixels)
                source_hash = fingerprint(job.source)
                reason = skip_reason(job, settings, source_hash, args.overwrite, loaded)
                if reason is not None:
                    if self.single and reason.startswith("output "):
                        raise OutputWriteError(reason)
                    report["skipped"].append({"input": str(job.source), "reason": reason})
                    _say(f"skip {job.source}: {reason}", bar)
                    continue
                entry = protect_file(
                    method, job, eval_samples=args.eval_samples, source_hash=source_hash, mask=self.mask,
                    mask_path=self.mask_path, loaded=loaded, notes=notes,
                )
            except (ArtshieldError, OSError) as exc:
                if self.single:
                    raise
                # A folder run goes on: this image is skipped, named, and counted for the exit status.
                errors.append((job.source, str(exc)))
                report["skipped"].append({"input": str(job.source), "reason": f"error: {exc}"})
                _say(f"error {job.source}: {one_line(exc)} (skipped)", bar, err=True)
                continue
            done += 1
            report["images"].append(entry)
            report["total_seconds"] = round(time.perf_counter() - started, 3)
            write_json_atomic(self.report_path, report)  # after every image: an interrupted run keeps its report
            _say(_summary_line(entry), bar)
        if bar is not None:
            bar.close()
        if done:
            report["total_seconds"] = round(time.perf_counter() - started, 3)
            write_json_atomic(self.report_path, report)
            _say(f"report: {self.report_path}", None)
        if not self.single:
            skipped = len(jobs) - done - (len(errors) - len(self.errors))
            line = f"protected {done} of {len(jobs)} images"
            if skipped:
                line += f"; {skipped} already protected or up to date"
            if errors:
                line += f"; {len(errors)} skipped for an error (listed above)"
            print(line)
        return 1 if errors else 0


def _check_mask_size(mask, mask_path, image, source) -> None:
    if mask is None or tuple(mask.shape[-2:]) == tuple(image.shape[-2:]):
        return
    (mh, mw), (ih, iw) = mask.shape[-2:], image.shape[-2:]
    raise MaskError(f"mask {str(mask_path)!r} is {mw}×{mh} pixels but image {str(source)!r} is {iw}×{ih}; they must match.")



def _number(value, fmt: str, missing: str = "n/a") -> str:
    return format(value, fmt) if isinstance(value, int | float) and not isinstance(value, bool) else missing


def _summary_line(entry: dict) -> str:
    before, after = entry.get("objective_before"), entry.get("objective_after")
    objective = ""
    if isinstance(before, int | float) and isinstance(after, int | float):
        change = f" ({(after - before) / abs(before) * 100:+.0f}%)" if before else ""
        objective = f"  objective {before:.4g} → {after:.4g}{change}"
    return (
        f"{entry['input']} → {entry['output']}  {entry['width']}×{entry['height']}  "
        f"L∞ {_number(entry.get('linf_255'), '.0f')}/255  PSNR {_number(entry.get('psnr_db'), '.1f', 'inf')} dB  "
        f"SSIM {_number(entry.get('ssim'), '.3f')}{objective}  {entry['seconds']:.1f} s"
    )


def _say(text: str, bar, err: bool = False) -> None:
    stream = sys.stderr if err else sys.stdout
    if bar is not None:
        bar.write(text, file=stream)
    else:
        print(text, file=stream)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
