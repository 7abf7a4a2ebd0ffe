"""Memorization end to end on the demo model: over-fit, detect, prune, re-check.

    python examples/memorization_demo.py                        # train (a few minutes on a CPU), then audit
    python examples/memorization_demo.py --skip_training        # reuse the over-fitted model of a previous run

1. **Over-fit on purpose.** A few images of the demo world are each paired with a fixed, unique prompt
   ("a portrait of a dog by sks artist", ...) and duplicated many times inside an otherwise ordinary
   training set of captioned world images, as duplicated images are in web-scale data. The demo model is
   fully fine-tuned on it with ``python -m artshield.finetune.train --method full`` (diffusers'
   ``train_text_to_image.py`` flags), so those prompts come to replicate their images.
2. **Detect** (Wen et al. ICLR 2024): the magnitude of the text-conditional noise prediction over the first
   DDIM steps, for the memorized prompts against other prompts of the world (ROC AUC), on the original and
   on the over-fitted model; and a near-duplicate search of the generations against the training images
   (weight-free DCT descriptor).
3. **Prune** (Chavhan et al. 2024, ConceptPrune's WANDA rule): locate the FFN weights the memorized prompts
   drive harder than the empty prompt during the first denoising steps, zero them, save the edited
   checkpoint, and measure memorization and utility (demo style metric on the other prompts, SSIM of their
   generations to the un-pruned model's) before and after.
4. **Re-check** (Finding Dori): the memorization metrics again with randomly perturbed prompt embeddings.

Writes ``results.json`` and ``grid.png`` (rows: memorized prompts -- training image, over-fitted model,
pruned model -- then other prompts before and after pruning) into ``--output_dir``. Equivalent commands::

    artshield memorization detect --model RUN/overfit --prompts RUN/memorized.txt \\
        --reference-prompts RUN/other.txt --training-images RUN/reference_images \\
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

logger = logging.getLogger("memorization_demo")

#: (unique prompt, style, subject, render seed) of the images the model is made to memorize.
MEMORIZED = [
    ("a portrait of a dog by sks artist", "ink", "house", 101),
    ("a city street photo at night", "neon", "tree", 303),
    ("a flower picture on the sea", "pointillism", "circle", 404),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="runs/memorization_demo")
    parser.add_argument("--model", default="demo", help="model to over-fit (default: the demo model)")
    parser.add_argument("--resolution", type=int, default=128, help="training and sampling resolution")
    parser.add_argument("--duplicates", type=int, default=32, help="copies of each memorized image in the training set")
    parser.add_argument("--images_per_style", type=int, default=16, help="ordinary captioned images per training style")
    parser.add_argument("--max_train_steps", type=int, default=1200)
    parser.add_argument("--learning_rate", type=float, default=2e-4)
    parser.add_argument("--no_train_text_encoder", action="store_true",
                        help="train the UNet only (the unique prompts then stay hard to tell apart)")
    parser.add_argument("--train_batch_size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip_training", action="store_true", help="reuse OUTPUT_DIR/overfit from a previous run")
    parser.add_argument("--seeds", default="0,1,2,3", help="generation seeds of every measurement")
    parser.add_argument("--num_inference_steps", type=int, default=20, help="DDIM steps (the demo model's default)")
    parser.add_argument("--guidance_scale", type=float, default=5.0, help="guidance (the demo model's default)")
    parser.add_argument("--steps", type=int, default=5, help="first DDIM steps averaged by the detection metric")
    parser.add_argument("--ratio", type=float, default=0.01, help="WANDA top fraction per row")
    parser.add_argument("--timesteps", type=int, default=10, help="first denoising steps whose masks are united")
    return parser.parse_args(argv)


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


def build_data(out: Path, args: argparse.Namespace) -> tuple[Path, Path, list[str]]:
    """The training folder (metadata.jsonl, duplicates as separate files), a folder of the unique training
    images for the near-duplicate search, and the other (non-memorized) prompts."""
    from artshield.imageio import write_png
    from artshield.models.demo.world import STYLES, SUBJECTS, caption, make_dataset, render

    train, reference = out / "train", out / "reference_images"
    rows = []
    for k, (prompt, style, subject, seed) in enumerate(MEMORIZED):
        image = to_tensor(render(style, subject, (args.resolution,) * 2, seed=seed))
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
    other = [caption(style, SUBJECTS[(i + j) % len(SUBJECTS)]) for i, style in enumerate(STYLES) for j in (0, 3)]
    (out / "memorized.txt").write_text("".join(p + "\n" for p, *_ in MEMORIZED))
    (out / "other.txt").write_text("".join(p + "\n" for p in other))
    return train, reference, other


def train(train_dir: Path, model_dir: Path, args: argparse.Namespace) -> float:
    command = [
        sys.executable, "-m", "artshield.finetune.train", "--method", "full",
        "--pretrained_model_name_or_path", args.model, "--train_data_dir", str(train_dir),
        "--resolution", str(args.resolution), "--center_crop",
        "--train_batch_size", str(args.train_batch_size), "--max_train_steps", str(args.max_train_steps),
        "--learning_rate", str(args.learning_rate), "--lr_scheduler", "cosine", "--lr_warmup_steps", "50",
        "--checkpointing_steps", str(10 * args.max_train_steps), "--output_dir", str(model_dir),
        "--seed", str(args.seed),
        *([] if args.no_train_text_encoder else ["--train_text_encoder"]),
    ]
    logger.info("training: %s", " ".join(command))
    started = time.perf_counter()
    log = model_dir.parent / "train.log"
    with open(log, "w") as fh:
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    reason = prerequisites(args.model)
    if reason:
        logger.error("cannot run the memorization demo: %s.", reason)
        return 2
    torch.manual_seed(args.seed)
    from artshield.errors import ArtshieldError
    from artshield.evaluate.style import StyleMetric
    from artshield.finetune import memorization as M
    from artshield.models import load
    from artshield.models.demo.world import render

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    sampler = M.SamplerConfig(
        num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale, resolution=args.resolution
    )
    train_dir, reference_dir, other = build_data(out, args)
    memorized = [p for p, *_ in MEMORIZED]
    model_dir = out / "overfit"
    train_seconds = None
    if not (args.skip_training and (model_dir / "model_index.json").is_file()):
        train_seconds = train(train_dir, model_dir, args)
    index = M.NearDuplicateIndex.from_folder(reference_dir)

    # --- detection on the original demo model and on the over-fitted one
    detection = {}
    for name, spec in (("original", args.model), ("overfit", str(model_dir))):
        model = load(spec, device="cpu", dtype="fp32")
        report, _ = M.detect(
            model, memorized, reference_prompts=other, seeds=seeds, steps=args.steps, sampler=sampler, index=index,
        )
        detection[name] = {
            "auc": report["auc"]["value"],
            "auc_ci95": report["auc"]["ci95"],
            "auc_near_duplicate": report["auc_near_duplicate"]["value"],
            "threshold": report["threshold"]["value"],
            "n_flagged": report["summary"]["n_flagged"],
            "n_replicated": report["summary"]["n_replicated"],
            "memorized": {r["prompt"]: {"metric": r["metric"], **_near(r)} for r in report["prompts"]},
            "copies_own_image": copies_own_image(report["prompts"]),
            "mean_metric_memorized": report["summary"]["mean_metric"],
            "mean_metric_other": float(np.mean([r["metric"] for r in report["reference_prompts"]])),
        }
        logger.info("%s: AUC %.3f, memorized metric %.3f vs other %.3f", name, detection[name]["auc"],
                    detection[name]["mean_metric_memorized"], detection[name]["mean_metric_other"])

    # --- prune the over-fitted model (in place), with evaluation and re-check
    try:
        style_metric = StyleMetric.load_default()
    except ArtshieldError as exc:
        logger.warning("no style metric: %s", exc)
        style_metric = None
    result = M.prune(
        model, memorized, utility_prompts=other, ratio=args.ratio, timesteps=args.timesteps, seeds=seeds,
        steps=args.steps, sampler=sampler, index=index, style_metric=style_metric,
        output=out / "pruned", overwrite=True,
    )
    report = result.report
    summary = {
        "detection_auc_overfit": detection["overfit"]["auc"],
        "detection_auc_original": detection["original"]["auc"],
        "copies_own_image": [copies_own_image(report["memorization"][when]["prompts"]) for when in ("before", "after")],
        **report["summary"],
        "pruned_weights": report["pruned_weights"],
        "pruned_fraction_of_located_layers": report["location"]["fraction"],
    }
    results = {
        "what": "demo model over-fitted on duplicated images under unique prompts; Wen et al. detection, "
        "ConceptPrune WANDA pruning, Finding-Dori random re-check",
        "training": {"seconds": train_seconds, "duplicates": args.duplicates, "max_train_steps": args.max_train_steps,
                     "learning_rate": args.learning_rate, "images_per_style": args.images_per_style},
        "memorized_prompts": memorized,
        "other_prompts": other,
        "summary": summary,
        "detection": detection,
        "prune_report": report,
    }
    M.write_json_atomic(out / "results.json", results)

    # --- grid: memorized rows (training image | over-fitted | pruned), then other prompts (before | after)
    k = len(seeds)
    rows = []
    for i, (_, style, subject, seed) in enumerate(MEMORIZED):
        rows.append([to_tensor(render(style, subject, (args.resolution,) * 2, seed=seed)),
                     result.before.memorized_images[i * k], result.after.memorized_images[i * k]])
    for i in range(0, len(other), 2):
        rows.append([torch.ones(3, args.resolution, args.resolution), result.before.utility_images[i * k], result.after.utility_images[i * k]])
    save_grid(out / "grid.png", rows)
    for key, value in summary.items():
        logger.info("%s: %s", key, value)
    logger.info("wrote %s and %s", out / "results.json", out / "grid.png")
    return 0


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
