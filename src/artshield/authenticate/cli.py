"""``artshield authenticate``: did a suspect model learn an artist's images? Writes report.json + report.html.

    artshield authenticate --base SPEC (--suspect SPEC | --lora PATH) --images DIR [--holdout DIR] -o REPORT_DIR

Every argument and path problem is refused before a model loads, with one line and exit status 2, and
nothing written: a missing, empty or image-less folder, a hold-out of one image, a hold-out sharing a file
(same SHA-256) with the images, an output folder that is an input folder or inside one, a missing LoRA.
What can only be seen after loading (a LoRA that does not fit the base, a suspect of another architecture)
is also one line, before the output folder is created. The output folder holds the per-image cells, so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from ..cli_support import (
    DTYPE_CHOICES,
    ArgumentParser,
    add_common_arguments,
    bounded,
    device_name,
    non_negative_int,
    positive_int,
    run_cli,
)
from ..errors import ImageReadError, InvalidArgumentError, ModelNotFoundError, OutputWriteError

PROG = "artshield authenticate"


def build_parser(prog: str = PROG) -> ArgumentParser:
    from .auditor import DEFAULT_BASELINES
    from .cgidm import MASKS

    parser = ArgumentParser(
        prog=prog,
        description="Audit a fine-tuned model (or LoRA) for an artist's images with CGI-DM and membership "
        "baselines; write report.json and report.html with a calibrated verdict.",
    )
    parser.add_argument("--base", required=True, help="the public base model: demo, a hub id, a diffusers folder or a .safetensors file")
    suspect = parser.add_mutually_exclusive_group(required=True)
    suspect.add_argument("--suspect", help="the fine-tuned model to audit (same forms as --base)")
    suspect.add_argument("--lora", help="a LoRA for --base to audit (folder or .safetensors file)")
    parser.add_argument("--images", required=True, help="folder of the artist's images to test")
    parser.add_argument("--holdout", help="folder of the artist's images surely NOT used in training (the reference)")
    parser.add_argument("--calibration", help="folder of other reference images (used for the verdict instead of --holdout)")
    parser.add_argument("-o", "--output", required=True, help="report folder (report.json, report.html, cells/)")
    parser.add_argument("--prompt", default="", help="prompt both models are conditioned on (the training instance prompt when known)")
    parser.add_argument("--steps", type=non_negative_int, default=100, help="CGI-DM gradient steps (default 100; Revelio: 1000)")
    parser.add_argument("--timesteps-per-step", type=positive_int, default=1, help="timesteps averaged per step (default 1)")
    parser.add_argument("--mask", choices=MASKS, default="checkerboard", help="how part of the image is removed (default checkerboard)")
    parser.add_argument("--eps", type=bounded(float, 1e-12), default=None, help="L2 budget in latent space (default: Revelio's 70 scaled to the latent size)")
    parser.add_argument("--baselines", default=",".join(DEFAULT_BASELINES), help="comma-separated baselines (default all; '' for none)")
    parser.add_argument("--resolution", type=positive_int, default=None, help="square side images are resized to (default: the base's native resolution)")
    parser.add_argument("--features", choices=("auto", "clip", "dct"), default="auto", help="similarity space (default auto: CLIP when local, else DCT)")
    parser.add_argument("--alpha", type=bounded(float, 1e-9, 0.5), default=0.01, help="verdict significance level = false-accusation rate (default 0.01)")
    parser.add_argument("--verdict-score", default="cgidm", help="score the verdict uses: cgidm (default), cgidm-gain, cgidm-max, "
                        "cgidm-latent-align, cgidm-latent-gain, cgidm-suspect-align (with --suspect-recovery) or a baseline run")
    parser.add_argument("--t-max", type=positive_int, default=None,
                        help="draw CGI-DM timesteps below this (default: the whole range, as Revelio; 200 did better on demo world v1, worse on v2)")
    parser.add_argument("--suspect-recovery", action="store_true",
                        help="also recover with the suspect alone (score cgidm-suspect-align; about 50%% more time)")
    parser.add_argument("--device", default="auto", type=device_name, help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, metavar="{auto,fp32,fp16,bf16}", help="weights' precision (default auto)")
    add_common_arguments(parser, __version__)
    return parser


def _image_folder(label: str, folder: str) -> list[Path]:
    from ..imageio import iter_images

    path = Path(folder).expanduser()
    if not path.exists():
        raise ImageReadError(f"{label} {folder!r}: no such folder.")
    if not path.is_dir():
        raise ImageReadError(f"{label} {folder!r} is not a folder.")
    listing = iter_images(path)
    if not listing.images:
        what = f"{len(listing.skipped)} file(s), none an image" if listing.skipped else "it is empty"
        raise ImageReadError(f"{label} {folder!r} has no images ({what}).")
    return list(listing.images)


def check_arguments(args) -> dict:
    """Every check that needs no model; returns the image lists."""
    from ..fileio import check_output_folder, refuse_overlaps, sha256_file

    sets = {"--images": _image_folder("--images", args.images)}
    for label, value in (("--holdout", args.holdout), ("--calibration", args.calibration)):
        if value is not None:
            sets[label] = _image_folder(label, value)
            if len(sets[label]) < 2:
                raise InvalidArgumentError(f"{label} {value!r} has 1 image; at least 2 are needed to compare against.")
    hashes = {label: {sha256_file(p): p for p in paths} for label, paths in sets.items()}
    for label in ("--holdout", "--calibration"):
        shared = set(hashes.get(label, {})) & set(hashes["--images"])
        if shared:
            example = hashes[label][sorted(shared)[0]].name
            raise InvalidArgumentError(
                f"{label} shares {len(shared)} file(s) with --images (same SHA-256, e.g. {example!r}); "
                "the reference must not contain the images it judges."
            )
    inputs = [(label, value) for label, value in (("--images", args.images), ("--holdout", args.holdout),
              ("--calibration", args.calibration)) if value is not None]  # fmt: skip
    refuse_overlaps(inputs=inputs, outputs=[("--output", args.output)])
    output = check_output_folder("--output", args.output).resolve()
    for label, value in inputs:
        if output.is_relative_to(Path(value).expanduser().resolve()):
            raise OutputWriteError(f"--output {args.output!r} is inside the {label} folder {value!r}; choose a folder outside it.")
    if args.lora is not None and not Path(args.lora).expanduser().exists():
        raise ModelNotFoundError(f"--lora {args.lora!r}: no such file or folder.")
    baselines = tuple(name.strip() for name in args.baselines.split(",") if name.strip())
    from .baselines import BASELINES

    unknown = [name for name in baselines if name not in BASELINES]
    if unknown:
        raise InvalidArgumentError(f"--baselines: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(BASELINES)}.")
    allowed = ("cgidm", "cgidm-gain", "cgidm-max", "cgidm-latent-align", "cgidm-latent-gain",
               *(["cgidm-suspect-align"] if args.suspect_recovery else []), *baselines)
    if args.verdict_score not in allowed:
        raise InvalidArgumentError(f"--verdict-score {args.verdict_score!r} is not one of {', '.join(allowed)}.")
    return {"sets": sets, "baselines": baselines}


def _body(args) -> int:
    checked = check_arguments(args)
    from .auditor import Auditor

    auditor = Auditor(
        args.base, suspect=args.suspect, lora=args.lora, prompt=args.prompt,
        cgidm={"steps": args.steps, "timesteps_per_step": args.timesteps_per_step, "mask": args.mask,
               "eps": args.eps, "seed": args.seed, "t_max": args.t_max},
        baselines=checked["baselines"], resolution=args.resolution, features=args.features, alpha=args.alpha,
        verdict_score=args.verdict_score, suspect_recovery=args.suspect_recovery, seed=args.seed, device=None if args.device == "auto" else args.device,
        dtype=None if args.dtype == "auto" else args.dtype,
    )  # fmt: skip
    sets = checked["sets"]
    result = auditor.audit(sets["--images"], holdout=sets.get("--holdout"), calibration=sets.get("--calibration"),
                           output=args.output, progress=not args.quiet)  # fmt: skip
    from .report import verdict_sentence

    if not args.quiet:
        print(verdict_sentence(result))
        primary = result.metrics.get("cgidm")
        if primary:
            print(f"CGI-DM AUC (images vs hold-out): {primary['auc']:.3f}")
        print(f"report: {os.path.join(args.output, 'report.html')} ({result.computed} computed, {result.reused} reused)")
    return 0


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    return run_cli(prog, build_parser(prog), argv, _body,
                   kept_on_interrupt="finished images are kept in the output folder's cells/; rerun to resume.")  # fmt: skip
