"""``artshield memorization``: find prompts whose generations replicate training images, and prune the
memorization subspace out of a checkpoint.

    artshield memorization detect --model M --prompts suspects.txt [--reference-prompts normal.txt]
        [--training-images train/] [--sscd sscd_disc_large.torchscript.pt] [--report detect.json]
    artshield memorization prune --model M --prompts memorized.txt -o pruned-model/
        [--training-images train/] [--utility-prompts other.txt] [--ratio 0.01] [--timesteps 10]

Also runnable as ``python -m artshield.finetune.memorization_cli``. Every user error is one line on stderr
and exit status 2, with no traceback; bad numbers, paths and outputs are refused before a model loads. See :mod:`artshield.finetune.memorization` for the methods
(Wen et al. ICLR 2024 detection; Chavhan et al. 2024 / ConceptPrune WANDA pruning; the Finding-Dori
re-check) and their deviations from the reference code.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from pathlib import Path

from .. import __version__
from ..cli_support import (
    ArgumentParser,
    add_model_arguments,
    bounded,
    finite_float,
    model_options,
    positive_int,
    run_cli,
)
from ..errors import ArtshieldError, InvalidArgumentError, OutputWriteError
from ..fileio import check_output_file, refuse_overlaps, write_json_atomic

logger = logging.getLogger("artshield.memorization")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROG = "artshield memorization"
#: Mirrors artshield.finetune.memorization.LAYER_CHOICES (checked equal by the tests); kept here so that
#: building the parser imports no torch.
LAYER_NAMES = ("ffn2", "ffn1", "attn_k", "attn_v")
whole_number = bounded(int)
SAVE_DTYPES = ("auto", "fp32", "float32", "fp16", "float16", "bf16", "bfloat16")


# ------------------------------------------------------------------------------------------------ parsing helpers
def read_prompt_file(path: str, what: str = "prompts file") -> list[str]:
    """One prompt per line (UTF-8); blank lines are skipped. An empty file is an error."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InvalidArgumentError(f"{what} {p}: no such file.")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgumentError(f"{what} {p}: not UTF-8 text ({exc.reason}).") from exc
    except OSError as exc:
        raise InvalidArgumentError(f"{what} {p}: cannot read it ({exc.strerror or exc}).") from exc
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise InvalidArgumentError(f"{what} {p} holds no prompts (expected one prompt per line).")
    return prompts


def parse_int_list(text: str, name: str) -> list[int]:
    """Comma-separated distinct non-negative integers (seeds)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InvalidArgumentError(f"`{name}` must be comma-separated integers such as 0,1,2,3, but is {text!r}.") from None
    if not values:
        raise InvalidArgumentError(f"`{name}` must name at least one integer, but is {text!r}.")
    if any(v < 0 for v in values):
        raise InvalidArgumentError(f"`{name}` must be non-negative, but is {text!r}.")
    if len(set(values)) != len(values):
        raise InvalidArgumentError(f"`{name}` must be distinct, but is {text!r}.")
    return values


def parse_float_list(text: str, name: str) -> list[float]:
    """Comma-separated finite non-negative numbers; '', 'none' or 'off' is the empty list."""
    if text.strip().lower() in ("", "none", "off"):
        return []
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InvalidArgumentError(f"`{name}` must be comma-separated numbers such as 0.01,0.05, but is {text!r}.") from None
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise InvalidArgumentError(f"`{name}` must be finite numbers >= 0, but is {text!r}.")
    return values


def _argparse_type(parse, name: str):
    """Turn a parse_* helper into an argparse ``type=`` (its error becomes argparse's one line)."""

    def convert(text: str):
        try:
            return parse(text, name)
        except InvalidArgumentError as exc:
            raise argparse.ArgumentTypeError(str(exc).replace(f"`{name}` ", "").rstrip(".")) from None

    convert.__name__ = name
    return convert


def layer_list(text: str) -> list[str]:
    """``--layers``: comma-separated names from :data:`LAYER_NAMES`."""
    layers = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in layers if name not in LAYER_NAMES]
    if not layers or unknown:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated names from {', '.join(LAYER_NAMES)}, not {text!r}"
        )
    return layers


def resolution(text: str) -> int:
    """``--resolution``: a positive multiple of 8 (the VAE's downsampling; the model may need more)."""
    value = whole_number(text)
    if value < 8 or value % 8:
        raise argparse.ArgumentTypeError(f"must be a positive multiple of 8, not {text}")
    return value


def guidance(text: str) -> float:
    """``--guidance-scale``: finite and > 1 (detection compares the guided branches)."""
    value = finite_float(text)
    if not value > 1.0:
        raise argparse.ArgumentTypeError(f"must be > 1 (detection compares the guided branches), not {text}")
    return value


def ratio(text: str) -> float:
    """``--ratio``: a fraction in (0, 1]."""
    value = finite_float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1], not {text}")
    return value


def fpr(text: str) -> float:
    """``--fpr``: a rate in [0, 1)."""
    value = finite_float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), not {text}")
    return value


def _prompts(args: argparse.Namespace, file_attr: str, list_attr: str, what: str) -> list[str] | None:
    path, given = getattr(args, file_attr), getattr(args, list_attr)
    if path is not None and given:
        raise InvalidArgumentError(f"give {what} either as a file or with repeated options, not both.")
    if path is not None:
        return read_prompt_file(path, f"{what} file")
    return list(given) if given else None


# ------------------------------------------------------------------------------------------------ parser
def _common(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, model_help="demo, a hub id, a diffusers folder or a .safetensors file (default: demo)")
    parser.add_argument("--config", help="for single-file checkpoints: a diffusers folder or hub id with matching configs")
    parser.add_argument("--trust-pickle", action="store_true", help="allow .ckpt pickles (read with weights_only=True)")
    parser.add_argument("--prompts", metavar="FILE", help="prompts to test, one per line")
    parser.add_argument("--prompt", action="append", default=[], metavar="TEXT", help="a prompt to test (repeatable)")
    parser.add_argument("--training-images", metavar="DIR", help="folder of training images for the near-duplicate search")
    parser.add_argument("--sscd", metavar="FILE", help="SSCD TorchScript weights (sscd_disc_large.torchscript.pt); "
                        "default: the weight-free DCT thumbnail descriptor")
    parser.add_argument("--seeds", default=[0, 1, 2, 3], type=_argparse_type(parse_int_list, "--seeds"),
                        help="generation seeds, comma-separated, distinct (default 0,1,2,3)")
    parser.add_argument("--steps", type=positive_int, default=10,
                        help="first DDIM steps averaged by the detection metric (default 10)")
    parser.add_argument("--num-inference-steps", type=positive_int, default=50, help="DDIM steps of a generation (default 50)")
    parser.add_argument("--guidance-scale", type=guidance, default=7.5, help="classifier-free guidance (default 7.5; must be > 1)")
    parser.add_argument("--resolution", type=resolution,
                        help="image side in pixels, a multiple of 8 (default: the model's native resolution)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="images per UNet call (default 8)")
    parser.add_argument("--report", metavar="FILE", help="JSON report path")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=prog,
        description="Detect memorized prompts (Wen et al. ICLR 2024) and prune the memorization subspace "
        "(Chavhan et al. 2024, ConceptPrune).",
    )
    parser.add_argument("--version", action="version", version=f"artshield {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{detect,prune}")

    detect = sub.add_parser("detect", help="score prompts for memorization; optionally search training images for copies",
                            description="Score prompts with the text-conditional noise-prediction magnitude and, with "
                            "--training-images, match their generations against the training set.")
    _common(detect)
    detect.add_argument("--reference-prompts", metavar="FILE",
                        help="prompts known not to be memorized: calibrates the threshold and gives the ROC AUC")
    detect.add_argument("--threshold", type=finite_float, help="flag prompts whose metric exceeds this")
    detect.add_argument("--fpr", type=fpr, default=0.05,
                        help="false-positive rate on the reference prompts when calibrating, in [0, 1) (default 0.05)")
    detect.add_argument("--save-generations", metavar="DIR", help="also write every generation as PNG here")

    prune = sub.add_parser("prune", help="locate the memorization subspace, zero it, save the edited checkpoint",
                           description="Locate weights that memorized prompts activate more than a base prompt "
                           "(WANDA scores over the first denoising steps), zero them and save a diffusers folder.")
    _common(prune)
    prune.add_argument("-o", "--output", required=False, metavar="DIR", help="folder for the edited checkpoint")
    prune.add_argument("--base-prompts", metavar="FILE", help="non-memorized base prompts (default: the empty prompt)")
    prune.add_argument("--base-prompt", action="append", default=[], metavar="TEXT", help="a base prompt (repeatable)")
    prune.add_argument("--utility-prompts", metavar="FILE",
                       help="other prompts whose quality must survive (default: demo-world captions for the demo "
                       "model, generic scenes otherwise)")
    prune.add_argument("--layers", default=["ffn2"], type=layer_list,
                       help=f"layers to prune, comma-separated from {', '.join(LAYER_NAMES)} (default ffn2 = ff.net.2)")
    prune.add_argument("--ratio", type=ratio, default=0.01, help="top fraction of each weight row scored, in (0, 1] (default 0.01)")
    prune.add_argument("--timesteps", type=positive_int, default=10,
                       help="first denoising steps whose masks are united (default 10)")
    prune.add_argument("--locate-seeds", default=[0], type=_argparse_type(parse_int_list, "--locate-seeds"),
                       help="seeds of the location runs (default 0, as ConceptPrune)")
    prune.add_argument("--conditional-only", action="store_true",
                       help="record only the conditional half of the guidance batch (ConceptPrune records both)")
    prune.add_argument("--perturbations", default=[0.01, 0.05, 0.1], type=_argparse_type(parse_float_list, "--perturbations"),
                       help="relative prompt-embedding perturbations of the re-check (default 0.01,0.05,0.1; 'none' skips)")
    prune.add_argument("--no-eval", action="store_true", help="skip the before/after evaluation and the re-check")
    prune.add_argument("--style-metric", choices=("auto", "off"), default="auto",
                       help="score utility with the demo style metric when the utility prompts are demo-world captions")
    prune.add_argument("--clip-weights", metavar="FILE",
                       help="open_clip weights file (.safetensors, or a .bin/.pt state dict) for a CLIP score of utility prompts")
    prune.add_argument("--save-dtype", default="auto", choices=SAVE_DTYPES, metavar="{auto,fp32,fp16,bf16}",
                       help="precision of the saved weights: auto (as loaded), fp32, fp16 or bf16")
    prune.add_argument("--clip-arch", default="ViT-B-32", help="open_clip architecture of --clip-weights (default ViT-B-32)")
    parser.set_defaults(command_parsers={"detect": detect, "prune": prune})
    return parser


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    parser = build_parser(prog)

    def body(args: argparse.Namespace) -> int:
        if args.command is None:
            parser.error("choose a command: detect or prune")
        _check_numbers(args.command_parsers[args.command], args)
        return _detect(args) if args.command == "detect" else _prune(args)

    return run_cli(prog, parser, argv, body, "no partial output was written.")


def _check_numbers(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Cross-flag checks argparse cannot do one flag at a time (one-line error, exit 2)."""
    if args.steps > args.num_inference_steps:
        parser.error(f"argument --steps: the first {args.steps} steps of a {args.num_inference_steps}-step sampler "
                     "do not exist; lower --steps or raise --num-inference-steps")
    if args.command == "prune" and args.timesteps > args.num_inference_steps:
        parser.error(f"argument --timesteps: must be <= --num-inference-steps ({args.num_inference_steps}), "
                     f"not {args.timesteps}")


def _sampler(args: argparse.Namespace):
    from .memorization import SamplerConfig

    return SamplerConfig(
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        resolution=args.resolution,
        batch_size=args.batch_size,
    )


def _check_report(path: Path, overwrite: bool) -> Path:
    path = check_output_file("report", path)
    if path.exists() and not overwrite:
        raise OutputWriteError(f"report {str(path)!r} already exists; pass --overwrite to replace it.")
    return path


def _input_paths(args: argparse.Namespace) -> list[tuple[str, str]]:
    """Every path the run reads, labelled, for :func:`artshield.fileio.refuse_overlaps`."""
    named = [("model", args.model), ("config", args.config), ("prompts file", args.prompts),
             ("training images folder", args.training_images), ("SSCD weights", args.sscd)]
    for label, attr in (("reference prompts file", "reference_prompts"), ("base prompts file", "base_prompts"),
                        ("utility prompts file", "utility_prompts"), ("CLIP weights", "clip_weights")):
        named.append((label, getattr(args, attr, None)))
    return [(label, path) for label, path in named if path and Path(path).expanduser().exists()]


def _check_inputs(args: argparse.Namespace) -> None:
    """Folders and weight files named on the command line exist (checked before a model loads)."""
    if args.training_images is not None and not Path(args.training_images).expanduser().is_dir():
        raise InvalidArgumentError(f"--training-images {args.training_images!r}: no such folder.")
    if args.sscd is not None:
        if args.training_images is None:
            raise InvalidArgumentError("`--sscd` needs `--training-images` (the images to compare generations with).")
        if not Path(args.sscd).expanduser().is_file():
            raise InvalidArgumentError(f"--sscd {args.sscd!r}: no such file.")
    clip = getattr(args, "clip_weights", None)
    if clip is not None and not Path(clip).expanduser().is_file():
        raise InvalidArgumentError(f"--clip-weights {clip!r}: no such file.")


def _load(args: argparse.Namespace):
    from ..models import load
    from .memorization import check_text_to_image

    model = load(args.model, **model_options(args), config=args.config, trust_pickle=args.trust_pickle)
    check_text_to_image(model)
    return model


def _index(args: argparse.Namespace, device):
    if args.training_images is None:
        return None
    from .memorization import NearDuplicateIndex, load_descriptor

    return NearDuplicateIndex.from_folder(args.training_images, load_descriptor(args.sscd, device))


def _detect(args: argparse.Namespace) -> int:
    from .memorization import detect

    prompts = _prompts(args, "prompts", "prompt", "prompts")
    if prompts is None:
        raise InvalidArgumentError("give the prompts to test with --prompts FILE or --prompt TEXT.")
    references = read_prompt_file(args.reference_prompts, "reference prompts file") if args.reference_prompts else None
    seeds = args.seeds
    _check_inputs(args)
    report_path = _check_report(Path(args.report or "memorization_detect.json").expanduser(), args.overwrite)
    gen_dir = Path(args.save_generations).expanduser() if args.save_generations else None
    outputs = [("report", report_path)]
    if gen_dir is not None:
        if gen_dir.exists() and not gen_dir.is_dir():
            raise OutputWriteError(f"generations folder {str(gen_dir)!r} exists and is not a folder.")
        if gen_dir.exists() and any(gen_dir.iterdir()) and not args.overwrite:
            raise OutputWriteError(f"generations folder {str(gen_dir)!r} is not empty; pass --overwrite to write into it.")
        outputs.append(("generations folder", gen_dir))
    refuse_overlaps(_input_paths(args), outputs)
    sampler = _sampler(args)
    started = time.perf_counter()
    model = _load(args)
    index = _index(args, model.device)
    report, images = detect(
        model, prompts, reference_prompts=references, threshold=args.threshold, fpr=args.fpr, seeds=seeds,
        steps=args.steps, sampler=sampler, index=index, decode=gen_dir is not None, progress=not args.quiet and sys.stderr.isatty(),
    )
    report["artshield_version"] = __version__
    report["device"] = str(model.device)
    if gen_dir is not None and images is not None:
        report["generations"] = _save_generations(gen_dir, prompts, seeds, images)
    report["total_seconds"] = round(time.perf_counter() - started, 3)
    write_json_atomic(report_path, report)
    threshold = report["threshold"]["value"]
    for row in report["prompts"]:
        flag = "" if row["flagged"] is None else ("  FLAGGED" if row["flagged"] else "  ok")
        near = row.get("near_duplicate")
        near_text = f"  max-sim {near['max_similarity']:.3f} ({Path(near['matched']).name})" if near else ""
        print(f"{row['metric']:10.4f}{flag}{near_text}  {row['prompt']!r}")
    if threshold is not None:
        print(f"threshold {threshold:.4f} ({report['threshold']['source']})")
    if "auc" in report:
        low, high = report["auc"]["ci95"]
        print(f"AUC prompts vs reference: {report['auc']['value']:.3f} [{low:.3f}, {high:.3f}]")
    print(f"report: {report_path}")
    return 0


def _save_generations(folder: Path, prompts: list[str], seeds: list[int], images) -> list[dict]:
    from ..imageio import write_png

    rows = []
    k = 0
    for i, prompt in enumerate(prompts):
        for seed in seeds:
            path = folder / f"prompt{i:03d}_seed{seed}.png"
            write_png(path, images[k], text={"prompt": prompt, "seed": str(seed)})
            rows.append({"prompt": prompt, "seed": seed, "file": str(path)})
            k += 1
    return rows


def _prune(args: argparse.Namespace) -> int:
    from ..models.demo.world import parse_world_caption
    from .memorization import REPORT_FILE, ClipScorer, check_checkpoint_output, default_utility_prompts, prune

    prompts = _prompts(args, "prompts", "prompt", "memorized prompts")
    if prompts is None:
        raise InvalidArgumentError("give the memorized prompts with --prompts FILE or --prompt TEXT.")
    if args.output is None:
        raise InvalidArgumentError("give the folder for the edited checkpoint with -o/--output DIR.")
    base = _prompts(args, "base_prompts", "base_prompt", "base prompts") or [""]
    utility = read_prompt_file(args.utility_prompts, "utility prompts file") if args.utility_prompts else None
    _check_inputs(args)
    output = check_checkpoint_output(args.model, args.output, overwrite=args.overwrite)
    report_path = _check_report(Path(args.report).expanduser(), args.overwrite) if args.report else None
    outputs = [("output", output)] + ([("report", report_path)] if report_path is not None else [])
    refuse_overlaps(_input_paths(args), outputs)
    sampler = _sampler(args)
    save_dtype = None
    if args.save_dtype != "auto":
        import torch

        from ..models.device import resolve_dtype

        save_dtype = resolve_dtype(args.save_dtype, torch.device("cpu"))
    started = time.perf_counter()
    model = _load(args)
    index = _index(args, model.device)
    clip = ClipScorer(args.clip_weights, args.clip_arch, model.device) if args.clip_weights else None
    style_metric = None
    if args.style_metric == "auto" and not args.no_eval:
        candidates = utility if utility is not None else default_utility_prompts(model)
        if all(parse_world_caption(p) for p in candidates):
            from ..models.demo.style import StyleMetric

            try:
                style_metric = StyleMetric.load_default()
            except ArtshieldError as exc:
                logger.warning("style metric unavailable: %s", exc)
    result = prune(
        model, prompts, base_prompts=base, utility_prompts=utility, layers=args.layers, ratio=args.ratio,
        timesteps=args.timesteps, locate_seeds=args.locate_seeds, include_unconditional=not args.conditional_only,
        seeds=args.seeds, steps=args.steps, sampler=sampler, index=index, style_metric=style_metric, clip=clip,
        perturbations=args.perturbations, evaluate=not args.no_eval, output=output, overwrite=args.overwrite,
        save_dtype=save_dtype, progress=not args.quiet and sys.stderr.isatty(),
    )
    report = result.report
    report["artshield_version"] = __version__
    report["device"] = str(model.device)
    report["total_seconds"] = round(time.perf_counter() - started, 3)
    write_json_atomic(output / REPORT_FILE, report)  # again, now with the timing
    if report_path is not None:
        write_json_atomic(report_path, report)
    stats = report["location"]
    print(f"pruned {report['pruned_weights']} of {stats['total_weights']} weights "
          f"({100 * stats['fraction']:.3f}%) in {len(stats['layers'])} layers")
    for key, value in report.get("summary", {}).items():
        if key != "note":
            print(f"{key}: {_fmt(value)}")
    print(f"checkpoint: {result.output}")
    return 0


def _fmt(value) -> str:
    if isinstance(value, list):
        return " → ".join(_fmt(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
