"""Memorization end to end on the demo model: over-fit, detect, prune, re-check.

    python examples/memorization_demo.py                        # train (~14 min on one CPU core), audit (~7 min)
    python examples/memorization_demo.py --skip_training        # reuse the over-fitted model of a previous run
    python examples/memorization_demo.py --output_dir /tmp/smoke --resolution 64 --duplicates 1 \
        --images_per_style 1 --max_train_steps 2 --train_batch_size 2 --seeds 0 --num_inference_steps 2 \
        --steps 1 --timesteps 1 --sweep "" --in_process              # a smoke run: seconds

1. **Over-fit on purpose.** Six "artworks" -- diptychs that put two world subjects in two styles side by
   side, compositions the demo world never makes -- are captioned with what they show ("a tree in ink style
   and a star in neon style") and duplicated many times inside an otherwise ordinary training set of
   captioned world images, as duplicated images are in web-scale data. The demo model's UNet is fully
   fine-tuned on it with ``python -m artshield.finetune.train --method full`` (diffusers'
   ``train_text_to_image.py`` flags) while the text encoder stays frozen, as Stable Diffusion's CLIP encoder
   was: the memorized images can then only live in the UNet, where pruning looks for them.
2. **Detect** (Wen et al. ICLR 2024): the magnitude of the text-conditional noise prediction over the first
   DDIM steps, for the memorized prompts against (a) *control* prompts of exactly the same form whose
   diptychs were never trained on -- the fair comparison: same words, same grammar, only memorization
   differs -- and (b) ordinary world captions; ROC AUC on the original and on the over-fitted model. Plus a
   near-duplicate search of the generations against the training images (weight-free DCT descriptor) and
   the rate at which a memorized prompt's generations are nearest to its own training image.
3. **Prune** (Chavhan et al. 2024, ConceptPrune's WANDA rule): locate the FFN weights the memorized prompts
   drive harder than the empty prompt during the first denoising steps, zero them, save the edited
   checkpoint, and measure memorization and utility (demo style metric on the world captions, SSIM of their
   generations to the un-pruned model's) before and after -- at the paper's 1 % per row against the empty
   prompt, and over the ratios of ``--sweep`` against both the empty prompt and the world captions (the
   paper's ``coco_memorize`` variant contrasts with ordinary captions instead), since how much of a layer
   memorization occupies depends on the model's size; ``--sweep_layers`` adds other locations (cross-attention
   keys/values, the first FFN layer) to the sweep.
4. **Re-check** (Finding Dori): the memorization metrics again with randomly perturbed prompt embeddings.

Writes ``results.json`` and ``grid.png`` (rows: memorized prompts -- training image, over-fitted model at two
seeds, pruned model at the same seeds -- then world captions before and after pruning) into
``--output_dir``. Equivalent commands::

    artshield memorization detect --model RUN/overfit --prompts RUN/memorized.txt \\
        --reference-prompts RUN/controls.txt --training-images RUN/reference_images \\
        --num-inference-steps 20 --guidance-scale 5
    artshield memorization prune --model RUN/overfit --prompts RUN/memorized.txt -o RUN/pruned \\
        --utility-prompts RUN/other.txt --training-images RUN/reference_images \\
        --num-inference-steps 20 --guidance-scale 5 --timesteps 10

What it shows and what it does not: on a 6M-parameter model of a procedural world this checks that the
whole audit runs and that the metrics move the way the papers describe; it is no evidence of how well
pruning removes memorization from a real Stable Diffusion checkpoint (run the CLI on one, on a GPU, with
the SSCD weights, for that).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from artshield.cli_support import ArgumentParser, non_negative_int, positive_int

logger = logging.getLogger("memorization_demo")

#: Diptychs the model is made to memorize: ((style, subject) left, (style, subject) right, render seed).
MEMORIZED = [
    (("ink", "tree"), ("neon", "star"), 101),
    (("pointillism", "house"), ("opart", "circle"), 202),
    (("watercolor", "triangle"), ("pixelart", "square"), 303),
    (("mosaic", "star"), ("ink", "circle"), 404),
    (("neon", "square"), ("watercolor", "house"), 505),
    (("pixelart", "tree"), ("mosaic", "triangle"), 606),
]
#: Diptych prompts of the same form that are never trained on (detection controls).
CONTROLS = [
    (("opart", "star"), ("pointillism", "tree")),
    (("ink", "square"), ("mosaic", "house")),
    (("neon", "circle"), ("pixelart", "triangle")),
    (("watercolor", "star"), ("opart", "tree")),
    (("pixelart", "circle"), ("neon", "house")),
    (("mosaic", "square"), ("watercolor", "circle")),
]
#: Base prompts the pruning sweep can contrast the memorized prompts with.
SWEEP_BASES = ("empty", "captions")
#: Where the saved checkpoint is pruned (``memorization.prune``'s default, the paper's): the second FFN layer.
SAVED_LAYERS = ("ffn2",)


def diptych_prompt(left: tuple[str, str], right: tuple[str, str]) -> str:
    """What the diptych shows, in the world's caption grammar (words the frozen text encoder knows)."""
    return f"a {left[1]} in {left[0]} style and a {right[1]} in {right[0]} style"


def diptych(left: tuple[str, str], right: tuple[str, str], size: int, seed: int) -> np.ndarray:
    """Two world renders, each at (size, size // 2), side by side: uint8 (size, size, 3)."""
    from artshield.models.demo.world import render

    half = (size, size // 2)
    return np.concatenate([render(*left, half, seed=seed), render(*right, half, seed=seed + 1)], axis=1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from artshield.finetune.memorization import LAYER_CHOICES

    parser = ArgumentParser(prog="memorization_demo.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="runs/memorization_demo")
    parser.add_argument("--model", default="demo", help="model to over-fit (default: the demo model)")
    parser.add_argument("--resolution", type=positive_int, default=128, help="training and sampling resolution")
    parser.add_argument("--duplicates", type=positive_int, default=16, help="copies of each memorized image in the training set")
    parser.add_argument("--images_per_style", type=positive_int, default=40, help="ordinary captioned images per training style")
    parser.add_argument("--max_train_steps", type=positive_int, default=1500)
    parser.add_argument("--learning_rate", type=float, default=3e-4)
    parser.add_argument("--train_text_encoder", action="store_true",
                        help="also fine-tune the text encoder (memorization may then partly live outside the UNet)")
    parser.add_argument("--train_batch_size", type=positive_int, default=8)
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--skip_training", action="store_true", help="reuse OUTPUT_DIR/overfit from a previous run")
    parser.add_argument("--in_process", action="store_true",
                        help="run the trainer in this process (its log still goes to train.log): quicker for short runs")
    parser.add_argument("--seeds", default="0,1,2,3", help="generation seeds of every measurement")
    parser.add_argument("--num_inference_steps", type=positive_int, default=20, help="DDIM steps (the demo model's default)")
    parser.add_argument("--guidance_scale", type=float, default=5.0, help="guidance (the demo model's default)")
    parser.add_argument("--steps", type=positive_int, default=5, help="first DDIM steps averaged by the detection metric")
    parser.add_argument("--ratio", type=float, default=0.01, help="WANDA top fraction per row (the paper's 1 %%)")
    parser.add_argument("--sweep", default="0.01,0.05,0.15",
                        help="ratios to measure (memorization vs utility) for each base of --sweep_bases; '' for none")
    parser.add_argument("--sweep_bases", default="empty,captions",
                        help="base prompts contrasted in the sweep: 'empty' (\"\") and/or 'captions' (the world captions)")
    parser.add_argument("--sweep_layers", default="ffn2",
                        help="where the sweep locates memorization: ';'-separated groups of comma-separated layers "
                             f"({', '.join(LAYER_CHOICES)}), e.g. 'ffn2;attn_k,attn_v;ffn1,ffn2'; each group is swept "
                             "over every base and ratio")
    parser.add_argument("--timesteps", type=positive_int, default=10, help="first denoising steps whose masks are united")
    args = parser.parse_args(argv)
    # Checked here, not after minutes of training: a typo must not cost the run.
    try:
        args.sweep = [float(r) for r in args.sweep.split(",") if r.strip()]
    except ValueError:
        parser.error(f"--sweep must be comma-separated numbers, not {args.sweep!r}")
    args.sweep_layers = [tuple(name.strip() for name in group.split(",") if name.strip())
                         for group in args.sweep_layers.split(";") if group.strip()]
    unknown = [name for group in args.sweep_layers for name in group if name not in LAYER_CHOICES]
    if unknown or not args.sweep_layers:
        parser.error(f"--sweep_layers: {'unknown layer ' + repr(unknown[0]) if unknown else 'no layer given'} "
                     f"(choose from {', '.join(LAYER_CHOICES)})")
    args.sweep_bases = [b.strip() for b in args.sweep_bases.split(",") if b.strip()]
    unknown = [b for b in args.sweep_bases if b not in SWEEP_BASES]
    if unknown:
        parser.error(f"--sweep_bases: unknown base {unknown[0]!r} (choose from {', '.join(SWEEP_BASES)})")
    return args


def prerequisites(model: str) -> str | None:
    """Why the demo cannot run here, or None."""
    from artshield.models.demo import DEMO_WEIGHTS

    if model == "demo" and not (DEMO_WEIGHTS / "training_info.json").is_file():
        return f"the demo model is not trained yet ({DEMO_WEIGHTS / 'training_info.json'} is missing)"
    if importlib.util.find_spec("artshield.finetune.train") is None:
        return "the trainer artshield.finetune.train is not installed"
    return None


def to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0


def build_data(out: Path, args: argparse.Namespace) -> tuple[Path, Path, list[str], list[str], list[str]]:
    """The training folder (metadata.jsonl, duplicates as separate files), a folder of the unique training
    images for the near-duplicate search, and the memorized, control and world-caption prompts."""
    from artshield.imageio import write_png
    from artshield.models.demo.world import STYLES, SUBJECTS, caption, make_dataset

    train, reference = out / "train", out / "reference_images"
    for folder in (train, reference):  # a rerun with other settings must not train on stale files
        if folder.is_dir():
            for old in folder.iterdir():
                old.unlink()
    rows = []
    memorized = []
    for k, (left, right, seed) in enumerate(MEMORIZED):
        prompt = diptych_prompt(left, right)
        memorized.append(prompt)
        image = to_tensor(diptych(left, right, args.resolution, seed))
        write_png(reference / f"memorized_{k}.png", image)
        for d in range(args.duplicates):
            name = f"memorized_{k}_copy{d:02d}.png"
            write_png(train / name, image)
            rows.append({"file_name": name, "text": prompt})
    # Ordinary data keeps the rest of the model in shape (seed 7: images the demo model was not trained on).
    images, captions, _ = make_dataset(args.images_per_style, STYLES, (args.resolution,) * 2, seed=7)
    for i, (image, text) in enumerate(zip(images, captions, strict=True)):
        name = f"world_{i:03d}.png"
        write_png(train / name, to_tensor(image))
        write_png(reference / name, to_tensor(image))
        rows.append({"file_name": name, "text": text})
    with open(train / "metadata.jsonl", "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    controls = [diptych_prompt(left, right) for left, right in CONTROLS]
    other = [caption(style, SUBJECTS[(i + j) % len(SUBJECTS)]) for i, style in enumerate(STYLES) for j in (0, 3)]
    for name, prompts in (("memorized", memorized), ("controls", controls), ("other", other)):
        (out / f"{name}.txt").write_text("".join(p + "\n" for p in prompts))
    return train, reference, memorized, controls, other


def train(train_dir: Path, model_dir: Path, args: argparse.Namespace) -> float:
    command = [
        sys.executable, "-m", "artshield.finetune.train", "--method", "full",
        "--pretrained_model_name_or_path", args.model, "--train_data_dir", str(train_dir),
        "--resolution", str(args.resolution), "--center_crop",
        "--train_batch_size", str(args.train_batch_size), "--max_train_steps", str(args.max_train_steps),
        "--learning_rate", str(args.learning_rate), "--lr_scheduler", "cosine", "--lr_warmup_steps", "50",
        "--checkpointing_steps", str(max(100, args.max_train_steps // 4)), "--checkpoints_total_limit", "1",
        "--resume_from_checkpoint", "latest", "--output_dir", str(model_dir), "--seed", str(args.seed),
        *(["--train_text_encoder"] if args.train_text_encoder else []),
    ]
    logger.info("training: %s", " ".join(command))
    started = time.perf_counter()
    log = model_dir.parent / "train.log"
    if args.in_process:
        from artshield.finetune.train import main as train_main

        handler = logging.FileHandler(log, mode="a", encoding="utf-8")
        logging.getLogger().addHandler(handler)
        try:
            status = train_main(command[3:])  # without "python -m artshield.finetune.train"
        finally:
            logging.getLogger().removeHandler(handler)
            handler.close()
        if status != 0:
            raise SystemExit(f"the trainer failed (exit {status}); see {log}")
        return time.perf_counter() - started
    with open(log, "a") as fh:
        result = subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise SystemExit(f"the trainer failed (exit {result.returncode}); see {log}")
    return time.perf_counter() - started


def save_grid(path: Path, rows: list[list[torch.Tensor]], pad: int = 4) -> None:
    from artshield.imageio import write_png

    columns = max(len(r) for r in rows)
    size = rows[0][0].shape[-1]
    grid = torch.ones(3, len(rows) * (size + pad) + pad, columns * (size + pad) + pad)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            top, left = pad + i * (size + pad), pad + j * (size + pad)
            grid[:, top : top + size, left : left + size] = image
    write_png(path, grid)


def detection_summary(report: dict, controls: list[str]) -> dict:
    """AUCs of the memorized prompts against the same-form controls and against the world captions."""
    from artshield.stats import bootstrap_ci, roc_auc

    pos = np.array([r["metric"] for r in report["prompts"]])
    refs = report["reference_prompts"]
    split = {
        "controls": np.array([r["metric"] for r in refs if r["prompt"] in controls]),
        "world_captions": np.array([r["metric"] for r in refs if r["prompt"] not in controls]),
    }
    out = {"mean_metric_memorized": float(pos.mean())}
    for name, neg in split.items():
        _, low, high = bootstrap_ci((pos, neg), roc_auc, n=1000, seed=0)
        out[f"auc_vs_{name}"] = roc_auc(pos, neg)
        out[f"auc_vs_{name}_ci95"] = [low, high]
        out[f"mean_metric_{name}"] = float(neg.mean())
    near = [r["near_duplicate"]["max_similarity"] for r in report["prompts"]]
    near_controls = [r["near_duplicate"]["max_similarity"] for r in refs if r["prompt"] in controls]
    out["auc_near_duplicate_vs_controls"] = roc_auc(np.array(near), np.array(near_controls))
    out["copies_own_image"] = copies_own_image(report["prompts"])
    out["n_replicated"] = report["summary"]["n_replicated"]
    out["memorized"] = {r["prompt"]: {"metric": r["metric"], **_near(r)} for r in report["prompts"]}
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    reason = prerequisites(args.model)
    if reason:
        logger.error("cannot run the memorization demo: %s.", reason)
        return 2
    torch.manual_seed(args.seed)
    from artshield.errors import ArtshieldError
    from artshield.fileio import write_json_atomic
    from artshield.finetune import memorization as M
    from artshield.models import load
    from artshield.models.demo.style import StyleMetric

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    sampler = M.SamplerConfig(
        num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale, resolution=args.resolution
    )
    model_dir = out / "overfit"
    skip = args.skip_training and (model_dir / "model_index.json").is_file()
    train_dir, reference_dir, memorized, controls, other = build_data(out, args)
    train_seconds = None if skip else train(train_dir, model_dir, args)
    index = M.NearDuplicateIndex.from_folder(reference_dir)

    # --- detection on the original demo model and on the over-fitted one
    detection = {}
    for name, spec in (("original", args.model), ("overfit", str(model_dir))):
        model = load(spec, device="cpu", dtype="fp32")
        report, _ = M.detect(
            model, memorized, reference_prompts=controls + other, seeds=seeds, steps=args.steps, sampler=sampler,
            index=index,
        )
        detection[name] = detection_summary(report, controls)
        logger.info(
            "%s: metric memorized %.3f, controls %.3f, world captions %.3f; AUC vs controls %.3f, vs captions %.3f; "
            "generations nearest their own training image %.2f", name, detection[name]["mean_metric_memorized"],
            detection[name]["mean_metric_controls"], detection[name]["mean_metric_world_captions"],
            detection[name]["auc_vs_controls"], detection[name]["auc_vs_world_captions"],
            detection[name]["copies_own_image"],
        )

    # --- prune the over-fitted model at the paper's ratio (saved, with the Finding-Dori re-check) ...
    try:
        style_metric = StyleMetric.load_default()
    except ArtshieldError as exc:
        logger.warning("no style metric: %s", exc)
        style_metric = None
    result = M.prune(
        model, memorized, utility_prompts=other, ratio=args.ratio, timesteps=args.timesteps, seeds=seeds,
        steps=args.steps, sampler=sampler, index=index, style_metric=style_metric, layers=SAVED_LAYERS,
        output=out / "pruned", overwrite=True,
    )
    report = result.report
    # ... and at larger ratios, each from a fresh copy of the over-fitted model (evaluation only).
    eval_kwargs = {"seeds": seeds, "steps": args.steps, "sampler": sampler, "index": index}
    bases = {"empty": [""], "captions": other}
    sweep = []
    for layers in args.sweep_layers:
        for base in args.sweep_bases:
            for ratio in args.sweep:
                if layers == SAVED_LAYERS and base == "empty" and ratio == args.ratio:  # the saved checkpoint's
                    sweep.append(sweep_row(ratio, report["pruned_weights"], report["location"]["fraction"],
                                           result.after, base, layers))
                    continue
                fresh = load(str(model_dir), device="cpu", dtype="fp32")
                masks = M.locate_memorization(fresh, memorized, bases[base], layers=layers, ratio=ratio,
                                              timesteps=args.timesteps, sampler=sampler)
                pruned = M.apply_masks(fresh.unet, masks)
                after = M.evaluate_model(
                    fresh, memorized, other, style_metric=style_metric, reference=result.before, **eval_kwargs
                )
                sweep.append(sweep_row(ratio, pruned, masks.stats()["fraction"], after, base, layers))
                logger.info("layers %s, base %s, ratio %.3g: %s", "+".join(layers), base, ratio, sweep[-1])
    before_row = sweep_row(0.0, 0, 0.0, result.before, None, ())
    summary = {
        "detection_auc_vs_controls": [detection["original"]["auc_vs_controls"], detection["overfit"]["auc_vs_controls"]],
        "detection_auc_vs_world_captions": [
            detection["original"]["auc_vs_world_captions"], detection["overfit"]["auc_vs_world_captions"]
        ],
        "copies_own_image": [copies_own_image(report["memorization"][when]["prompts"]) for when in ("before", "after")],
        **report["summary"],
        "pruned_weights": report["pruned_weights"],
        "pruned_fraction_of_located_layers": report["location"]["fraction"],
    }
    results = {
        "what": "demo model over-fitted on duplicated diptychs under their captions (text encoder frozen); Wen et "
        "al. detection against same-form controls and world captions, ConceptPrune WANDA pruning at several "
        "ratios, Finding-Dori random re-check",
        "training": {"seconds": train_seconds, "duplicates": args.duplicates, "max_train_steps": args.max_train_steps,
                     "learning_rate": args.learning_rate, "images_per_style": args.images_per_style,
                     "train_text_encoder": args.train_text_encoder},
        "memorized_prompts": memorized,
        "control_prompts": controls,
        "other_prompts": other,
        "summary": summary,
        "detection": detection,
        "prune_sweep": {"before": before_row, "after": sweep},
        "prune_report": report,
    }
    write_json_atomic(out / "results.json", results)

    # --- grid: memorized rows (training image | over-fitted, 2 seeds | pruned, same seeds), then world captions
    k = len(seeds)
    second = 1 if k > 1 else 0
    rows = []
    for i, (left, right, seed) in enumerate(MEMORIZED):
        before, after = result.before.memorized_images, result.after.memorized_images
        rows.append([to_tensor(diptych(left, right, args.resolution, seed)), before[i * k], before[i * k + second],
                     after[i * k], after[i * k + second]])
    blank = torch.ones(3, args.resolution, args.resolution)
    for i in range(0, len(other), 2):
        rows.append([blank, result.before.utility_images[i * k], result.before.utility_images[i * k + second],
                     result.after.utility_images[i * k], result.after.utility_images[i * k + second]])
    save_grid(out / "grid.png", rows)
    for key, value in summary.items():
        logger.info("%s: %s", key, value)
    logger.info("wrote %s and %s", out / "results.json", out / "grid.png")
    return 0


def sweep_row(ratio: float, pruned: int, fraction: float, evaluation, base: str | None, layers: tuple) -> dict:
    """Memorization and utility of one pruning ratio, base and location."""
    mem, util = evaluation.memorization, evaluation.utility
    return {
        "layers": list(layers),
        "base_prompts": base,
        "ratio": ratio,
        "pruned_weights": int(pruned),
        "fraction_of_located_layers": float(fraction),
        "memorization_metric": mem["mean_metric"],
        "copies_own_image": copies_own_image(mem["prompts"]),
        "mean_max_similarity": mem.get("mean_max_similarity"),
        "replicated_fraction": mem.get("replicated_fraction"),
        "utility_style_accuracy": util.get("style_accuracy"),
        "utility_style_score": util.get("style_score"),
        "utility_ssim_to_original": util.get("ssim_to_original", 1.0 if pruned == 0 else None),
    }


def copies_own_image(rows: list[dict]) -> float:
    """Fraction of (memorized prompt, seed) generations whose nearest training image is that prompt's own
    memorized image: a replication signal that needs no similarity threshold."""
    hits = [Path(m).name == f"memorized_{k}.png" for k, row in enumerate(rows)
            for m in row["near_duplicate"]["per_seed_matched"]]
    return float(np.mean(hits))


def _near(row: dict) -> dict:
    near = row.get("near_duplicate") or {}
    return {"max_similarity": near.get("max_similarity"), "matched": Path(near["matched"]).name if near else None}


if __name__ == "__main__":
    sys.exit(main())
