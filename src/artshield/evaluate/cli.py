"""``artshield evaluate``: mimicry on clean vs protected (and purified) images, scored, with a report.

    artshield evaluate --clean art/ --protected art_protected/ --model demo --output eval/
    artshield evaluate --clean art/ --protected advdm=out/advdm --protected mist=out/mist \\
        --mimicry lora,sdedit,inpaint --purify none,jpeg75,resize0.5,noise0.05,diffpure --model demo
    artshield evaluate --clean art/ --protected art_protected/ --mimicry external \\
        --train-command "python my_trainer.py --data {data_dir} --out {output_dir} --seed {seed}"

See :mod:`artshield.evaluate.harness` for what is run and how it is scored. Errors a user can cause are one
line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from .. import __version__
from ..cli_support import (
    ArgumentParser,
    add_common_arguments,
    add_model_arguments,
    finite_float,
    model_options,
    positive_float,
    positive_int,
    run_cli,
)
from ..errors import InvalidArgumentError

DEFAULT_PURIFICATIONS = "none,jpeg75,resize0.5,noise0.05,diffpure"


def _strength(text: str) -> float:
    """``--sdedit-strength``: a number in (0, 1]."""
    value = finite_float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], not {text}")
    return value


def _seeds(text: str) -> list[int]:
    """``--train-seeds``: a comma list of distinct integers >= 0."""
    from .mimicry import parse_seeds

    try:
        return parse_seeds(text)
    except InvalidArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"--train-seeds {text!r}: ")) from None


def _steps(text: str) -> list[int]:
    """``--lora-checkpoints``: a comma list of distinct training steps >= 1."""
    from .mimicry import parse_steps

    try:
        return parse_steps(text)
    except InvalidArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"--lora-checkpoints {text!r}: ")) from None


def build_parser(prog: str = "artshield evaluate") -> argparse.ArgumentParser:
    p = ArgumentParser(prog=prog, description="Measure how well protection spoils mimicry, worst case over purifications.")
    p.add_argument("--clean", required=True, help="folder of the artist's original images")
    p.add_argument("--protected", action="append", required=True, metavar="[LABEL=]DIR",
                   help="folder of protected versions (same file names); repeat to compare several, e.g. advdm=out/advdm")
    add_model_arguments(p, model_help="model the mimic uses: demo, a hub id, a diffusers folder or a .safetensors file")
    p.add_argument("--inpaint-model", help="inpainting model for --mimicry inpaint (default: demo-inpaint with --model demo, "
                   "else --model when it is an inpainting model)")
    p.add_argument("--output", "-o", default="evaluation", help="folder for report.json, report.html and the cells (default "
                   "./evaluation; not an input folder)")
    p.add_argument("--mimicry", default="lora,sdedit", help="comma list of lora, sdedit, inpaint, external (default "
                   "lora,sdedit; external needs --train-command)")
    p.add_argument("--purify", default=DEFAULT_PURIFICATIONS, help=f"comma list of purification specs (default {DEFAULT_PURIFICATIONS}; "
                   "see `artshield purify --list`)")
    p.add_argument("--purify-clean", action="store_true", help="also run mimicry on purified clean images (the purification's own cost)")
    p.add_argument("--max-images", type=positive_int, help="use only the first N clean images (sorted by name; at least 2)")
    g = p.add_argument_group("generation (all mimicries)")
    g.add_argument("--prompt", action="append", help="lora/external generation prompt (repeatable; default: the instance prompt)")
    g.add_argument("--edit-prompt", action="append", help="sdedit/inpaint prompt (repeatable; default: empty)")
    g.add_argument("--samples", type=positive_int, default=4, help="seeds per prompt (lora) or per image/mask (sdedit, inpaint); default 4")
    g.add_argument("--sampling-steps", type=positive_int, default=20, help="denoising steps (default 20)")
    g.add_argument("--guidance-scale", type=finite_float, default=5.0, help="classifier-free guidance (default 5)")
    g = p.add_argument_group("lora")
    g.add_argument("--instance-prompt", default="a painting in sks style", help="caption of the training images (lora; {prompt} of external)")
    g.add_argument("--lora-steps", type=positive_int, default=800)
    g.add_argument("--lora-lr", type=positive_float, default=3e-3,
                   help="default 3e-3: what copies the demo world's artist in 800 steps; 1e-4 suits Stable Diffusion")
    g.add_argument("--lora-rank", type=positive_int, default=16)
    g.add_argument("--lora-batch-size", type=positive_int, default=4)
    g.add_argument("--lora-text-encoder", action=argparse.BooleanOptionalAction, default=True,
                   help="also train a text-encoder LoRA (default on)")
    g.add_argument("--lora-checkpoints", type=_steps, default=[], metavar="LIST",
                   help="training steps below --lora-steps at which each run also generates (the checkpoint curve: "
                   "the score against training steps, e.g. 200,400,600); the result is the last step's")
    g.add_argument("--train-seeds", type=_seeds, default=[0, 1, 2], metavar="LIST",
                   help="training seeds of the lora and external mimics, one training run each; intervals then cover "
                   "training runs (default 0,1,2; one run cannot tell a protection from a lucky checkpoint)")
    g.add_argument("--resolution", type=positive_int, help="lora/external training and generation resolution (default: the model's native)")
    g = p.add_argument_group("external (bring your own mimic)")
    g.add_argument("--train-command", metavar="TEMPLATE",
                   help="training command run (no shell) once per training seed; placeholders {data_dir} (images + "
                   "metadata.jsonl), {instance_dir} (images only), {kohya_dir} (1_<prompt>/ with .txt captions), "
                   "{output_dir}, {seed}, {prompt}, {resolution}, {model}")
    g.add_argument("--generate-command", metavar="TEMPLATE",
                   help="optional: generation command run per prompt, writing PNGs into {output_dir}/samples; "
                   "placeholders {model_dir}, {output_dir}, {seed}, {prompt}, {samples}, {steps}, {guidance}, "
                   "{resolution}, {model} (default: load the LoRA or pipeline the training wrote)")
    g = p.add_argument_group("sdedit / inpaint")
    g.add_argument("--sdedit-strength", type=_strength, default=0.5, help="img2img strength in (0, 1] (default 0.5)")
    g.add_argument("--inpaint-masks", help="folder of masks named like the clean images (white = repainted); default: "
                   "a centred-ellipse surround and a random rectangle per image")
    g.add_argument("--num-masks", type=positive_int, default=2, help="default masks per image (default 2)")
    g = p.add_argument_group("scoring")
    g.add_argument("--style-metric", help="demo, none or a style-metric folder (default: demo with the demo models, else none)")
    g.add_argument("--judge", help="demo, none or a structure-judge folder: a second, independent style judge "
                   "(structure_score; default: demo with the demo models, else none)")
    g.add_argument("--headline", choices=("artist_score", "structure_score", "clip_score", "kid", "fd"),
                   help="score for the headline (default artist_score with a style metric, else kid)")
    g.add_argument("--no-clip", action="store_true", help="skip the CLIP score even when its weights are present")
    g.add_argument("--bootstrap", type=positive_int, default=1000, help="bootstrap resamples (default 1000)")
    g.add_argument("--columns", type=positive_int, default=8, help="images per grid row in the HTML report")
    add_common_arguments(p, __version__)
    return p


def _protected_sets(values: list[str], clean_dir: Path) -> dict[str, str]:
    from ..fileio import same_path

    sets: dict[str, str] = {}
    for value in values:
        label, sep, folder = value.partition("=")
        if not sep:
            folder, label = value, Path(value.rstrip("/\\")).name
        label, folder = label.strip(), folder.strip()
        if not label or not folder:
            raise InvalidArgumentError(f"--protected {value!r}: expected DIR or LABEL=DIR.")
        path = Path(folder).expanduser()
        if not path.exists():
            raise InvalidArgumentError(f"--protected {value!r}: {folder}: no such folder.")
        if not path.is_dir():
            raise InvalidArgumentError(f"--protected {value!r}: {folder} is not a folder.")
        if same_path(path, clean_dir):
            raise InvalidArgumentError(f"--protected {value!r} is the clean folder {str(clean_dir)!r}; pass the "
                                       "protected images (what `protect` wrote).")  # fmt: skip
        if label in sets or label == "clean":
            raise InvalidArgumentError(f"--protected {value!r}: the label {label!r} is used twice (or is 'clean'); name sets LABEL=DIR.")
        sets[label] = str(path)
    return sets


def _masks(folder: str, names: list[str]):
    from ..imageio import read_mask

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InvalidArgumentError(f"--inpaint-masks {folder!r}: no such folder.")
    masks = []
    for name in names:
        found = sorted(root.glob(f"{name}.*"))
        if not found:
            raise InvalidArgumentError(f"--inpaint-masks {folder}: no mask for image {name!r} (expected {name}.png).")
        masks.append([(read_mask(found[0])[0] > 0.5).float()])
    return masks


def _judge(args):
    from ..models.demo.judge import StructureJudge

    choice = args.judge or ("demo" if args.model in ("demo", "demo-inpaint") else "none")
    if choice == "none":
        return None
    return StructureJudge.load_default() if choice == "demo" else StructureJudge.load(choice)


def _style_metric(args):
    from ..models.demo.style import StyleMetric

    choice = args.style_metric or ("demo" if args.model in ("demo", "demo-inpaint") else "none")
    if choice == "none":
        return None
    return StyleMetric.load_default() if choice == "demo" else StyleMetric.load(choice)


def _comma_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    from .external import ExternalMimicry, check_commands, mimicry_kind
    from .harness import EvaluationSettings, check_output_folder, evaluate, load_image_sets
    from .mimicry import InpaintMimicry, LoraMimicry, SDEditMimicry
    from .purify_spec import check_spec

    # Everything a user can get wrong is checked before a model loads.
    names = [m.lower() for m in _comma_list(args.mimicry)]
    if not names:
        raise InvalidArgumentError(f"--mimicry {args.mimicry!r}: choose at least one of lora, sdedit, inpaint, external.")
    for name in names:
        mimicry_kind(name)
    if len(set(names)) != len(names):
        raise InvalidArgumentError(f"--mimicry {args.mimicry!r}: an attack is listed twice.")
    if "external" in names:
        if not args.train_command:
            raise InvalidArgumentError("--mimicry external needs --train-command (the mimic's training command).")
        check_commands(args.train_command, args.generate_command)
    else:
        for option, value in (("--train-command", args.train_command), ("--generate-command", args.generate_command)):
            if value is not None:
                raise InvalidArgumentError(f"{option} is only used with --mimicry external (add it to --mimicry).")
    if args.lora_checkpoints:
        steps = ",".join(map(str, args.lora_checkpoints))
        if "lora" not in names:
            raise InvalidArgumentError(f"--lora-checkpoints {steps} is only used with --mimicry lora (add it to --mimicry).")
        if args.lora_checkpoints[-1] >= args.lora_steps:
            raise InvalidArgumentError(f"--lora-checkpoints {steps}: every step must be below --lora-steps "
                                       f"{args.lora_steps} (the last step is always scored).")  # fmt: skip
    purifications = _comma_list(args.purify)
    seen: dict[str, str] = {}
    for spec in purifications:
        cls, settings = check_spec(spec)  # a bad spec or value fails before anything is loaded
        key = json.dumps([cls.name, cls.check_settings(**settings)], sort_keys=True, default=str)
        if key in seen:
            raise InvalidArgumentError(f"--purify {args.purify!r}: {spec!r} is {seen[key]!r} again; list each once.")
        seen[key] = spec
    clean_dir = Path(args.clean).expanduser()
    if not clean_dir.is_dir():
        raise InvalidArgumentError(f"--clean {args.clean!r}: no such folder.")
    protected = _protected_sets(args.protected, clean_dir)
    check_output_folder(args.output, {"clean": clean_dir, **protected})
    sets = load_image_sets(clean_dir, protected, args.max_images)
    if len(sets.names) < 2:
        raise InvalidArgumentError(f"--clean {args.clean!r}: evaluation needs at least two clean images (bootstrap "
                                   f"intervals and KID need pairs), but uses {len(sets.names)}.")  # fmt: skip
    masks = _masks(args.inpaint_masks, sets.names) if args.inpaint_masks and "inpaint" in names else None
    style_metric = _style_metric(args)
    if args.headline == "artist_score" and style_metric is None:
        raise InvalidArgumentError("--headline artist_score needs a style metric (--style-metric).")
    judge = _judge(args)
    if args.headline == "structure_score" and judge is None:
        raise InvalidArgumentError("--headline structure_score needs a structure judge (--judge).")

    from ..models import load

    model = load(args.model, **model_options(args))
    quiet = args.quiet or not sys.stderr.isatty()
    common = {"samples": args.samples, "num_inference_steps": args.sampling_steps, "guidance_scale": args.guidance_scale,
              "seed": args.seed, "progress": not quiet}  # fmt: skip
    mimicries = []
    for name in names:
        if name == "lora":
            mimicries.append(LoraMimicry(model, instance_prompt=args.instance_prompt, prompts=args.prompt,
                                         steps=args.lora_steps, learning_rate=args.lora_lr, rank=args.lora_rank,
                                         batch_size=args.lora_batch_size, train_text_encoder=args.lora_text_encoder,
                                         resolution=args.resolution, train_seeds=args.train_seeds,
                                         checkpoints=args.lora_checkpoints, **common))  # fmt: skip
        elif name == "external":
            mimicries.append(ExternalMimicry(model, train_command=args.train_command, generate_command=args.generate_command,
                                             train_seeds=args.train_seeds, instance_prompt=args.instance_prompt,
                                             resolution=args.resolution, model_spec=args.model, prompts=args.prompt,
                                             **common))  # fmt: skip
        elif name == "sdedit":
            mimicries.append(SDEditMimicry(model, strength=args.sdedit_strength, prompts=args.edit_prompt, **common))
        else:
            spec = args.inpaint_model or ("demo-inpaint" if args.model == "demo" else None)
            inpaint_model = load(spec, **model_options(args)) if spec else model
            mimicries.append(InpaintMimicry(inpaint_model, masks=masks, num_masks=args.num_masks,
                                            prompts=args.edit_prompt, **common))
    settings = EvaluationSettings(mimicries=mimicries, purifications=purifications, purify_clean=args.purify_clean,
                                  style_metric=style_metric, judge=judge, use_clip=not args.no_clip, headline=args.headline,
                                  bootstrap=args.bootstrap, seed=args.seed, grid_columns=args.columns)  # fmt: skip
    report = evaluate(sets, settings, args.output, purification_model=model, quiet=quiet,
                      command="artshield evaluate " + shlex.join(argv))
    score = report["headline_score"]
    print(f"headline: {score}, worst case over {', '.join(report['purifications'])}")
    for row in report["headline"]:
        low, high = row["effect_ci95"]
        print(f"  {row['mimicry']:7s} {row['protected']:20s} clean {row['clean']['value']:.3f}  worst ({row['purification']}) "
              f"{row['value']:.3f}  effect {row['effect']:+.3f} [{low:+.3f}, {high:+.3f}]  "
              f"{'protects' if row['protects'] else 'does not protect'}")
    for name, entry in report["mimicry"].items():
        curve = {step: summary[score] for step, summary in entry.get("curve", {}).items() if score in summary}
        for label in sets.protected:
            points = [f"{step}: {s['protection'][label]['worst_case']['effect']:+.3f}" for step, s in curve.items()
                      if label in s.get("protection", {})]
            if points:
                print(f"  {name:7s} {label:20s} effect by training step  " + "  ".join(points))
    print(f"report: {Path(args.output) / 'report.html'}")
    for failure in report.get("failed", []):
        print(f"failed: {failure['mimicry']} on {failure['condition']}: {failure['error']}", file=sys.stderr)
    return 1 if report.get("failed") else 0


def main(argv: list[str] | None = None, prog: str = "artshield evaluate") -> int:
    """Run the command; returns the exit status (0 ok, 1 some cells failed, 2 user error, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_cli(prog, build_parser(prog), argv, lambda args: _run(args, argv),
                   "finished cells are kept under the output folder's cells/ and reused by a rerun.")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
