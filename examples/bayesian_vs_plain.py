"""Few-shot fine-tuning of the demo model, plain vs Bayesian, over several seeds: the corruption stage.

    python examples/bayesian_vs_plain.py                                   # DreamBooth on one object, 3 seeds
    python examples/bayesian_vs_plain.py --target artist --method lora     # LoRA on the held-out artist style
    python examples/bayesian_vs_plain.py --plot_only                       # re-plot the runs in --output_dir
    python examples/bayesian_vs_plain.py --output_dir /tmp/smoke --train_seeds 0 --max_train_steps 2 \
        --validation_steps 1 --num_validation_images 1 --num_instance_images 2 --resolution 64 --in_process
                                                                           # a smoke run: seconds

Wu et al. (arXiv 2405.19931) report that during few-shot fine-tuning the fidelity of generations first rises,
then drops while noisy patterns appear (the "corruption stage"), then recovers into overfitting, and that
Bayesian weights (``--bayesian``: ``w = mu + sigma * eps`` per training step, the mean at inference) mitigate
the drop. This script runs that protocol on the demo model: it writes a few instance images, fine-tunes the
demo model on them with ``python -m artshield.finetune.train`` once plain and once with ``--bayesian``
(otherwise identical flags) for every seed of ``--train_seeds``, validating every ``--validation_steps``
steps. The trainer's fidelity monitor (:class:`artshield.finetune.monitor.FidelityMonitor`) writes
``fidelity.jsonl`` in each run's folder; this script then draws every run and the mean per mode
(``curves.png``) and writes ``results.json``: every record, a summary per run (peak, final, deepest drop
below the running peak of each score), the mean and spread of those over seeds per mode, and the paired
Bayesian-minus-plain difference per seed with a bootstrap interval over seeds.

Targets (``--target``):

* ``subject`` (default) -- the paper's setting, subject-driven DreamBooth ("a photo of qwe backpack"): views
  (crops and mirror images) of one object of the demo world, "a sks house in watercolor style", in a style
  the demo VAE reconstructs well.
* ``artist`` -- renders of the held-out artist style "velmora", which the UNet never saw (the world-v2 VAE
  did: it reconstructs the artist at about 18 dB PSNR, inside the training styles' range). On world v1, whose
  VAE had never seen the artist, fidelity stayed low and noisy; on v2 it climbs as for the subject.

Resumable: a run whose folder already holds its final weights and fidelity log is not trained again.

What it shows and what it does not: the demo model is a 6M-parameter model of a procedural world, so this
checks that the Bayesian mode runs end to end and shows how the stages look *on that world*; it is no
evidence about how Stable Diffusion behaves (use a real checkpoint with ``--model`` for that, on a GPU).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from artshield.cli_support import ArgumentParser, positive_int
from artshield.fileio import write_text_atomic

logger = logging.getLogger("bayesian_vs_plain")

#: Scores plotted (when present) and what they mean.
PLOTTED = {
    "dct_similarity": "fidelity: DCT-descriptor similarity to the nearest instance image",
    "style_score": "P(style named in the prompt) of generations (demo style metric)",
    "hf_energy_ratio": "high-frequency (noise) energy, generations / instance images",
    "nn_ssim": "SSIM to the nearest instance image (copying)",
    "pixel_diversity": "pairwise RMSE among generations (diversity)",
    "clip_i": "CLIP-I to the instance images",
    "lpips_diversity": "pairwise LPIPS among generations",
}
MODES = ("plain", "bayesian")
COLOURS = {"plain": (31, 119, 180), "bayesian": (214, 39, 40)}
#: The instance (and validation) prompt of each target.
TARGETS = {
    "subject": "a sks house in watercolor style",
    "artist": "a painting in velmora style",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(prog="bayesian_vs_plain.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=tuple(TARGETS), default="subject")
    parser.add_argument("--method", choices=("lora", "dreambooth", "full"), default="dreambooth")
    parser.add_argument("--model", default="demo", help="--pretrained_model_name_or_path for the trainer.")
    parser.add_argument("--output_dir", default="runs/bayesian_vs_plain")
    parser.add_argument("--train_seeds", default="0,1,2", help="one plain and one Bayesian run per seed")
    parser.add_argument("--num_instance_images", type=positive_int, default=4)
    parser.add_argument("--instance_prompt", default=None, help="Default: the target's prompt.")
    parser.add_argument("--num_validation_images", type=positive_int, default=6)
    parser.add_argument("--validation_steps", type=positive_int, default=25)
    parser.add_argument("--max_train_steps", type=positive_int, default=500)
    parser.add_argument("--learning_rate", type=float, default=None, help="Default: 1e-3 (LoRA) / 2e-4 (others).")
    parser.add_argument("--rank", type=positive_int, default=4)
    parser.add_argument("--resolution", type=positive_int, default=128)
    parser.add_argument("--bayes_init_sigma", type=float, default=None, help="Passed to the Bayesian runs if set.")
    parser.add_argument(
        "--extra", default="", help="Extra trainer flags for every run, as one string (e.g. '--train_batch_size 2')."
    )
    parser.add_argument("--plot_only", action="store_true", help="Only summarise and plot the runs in --output_dir.")
    parser.add_argument("--in_process", action="store_true",
                        help="Run the trainer in this process (its log still goes to each run's train.log): quicker "
                        "for short runs; a trainer crash then ends this script too.")
    args = parser.parse_args(argv)
    try:
        args.train_seeds = [int(s) for s in args.train_seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--train_seeds must be comma-separated integers, not {args.train_seeds!r}")
    if not args.train_seeds:
        parser.error("--train_seeds needs at least one seed")
    args.instance_prompt = args.instance_prompt or TARGETS[args.target]
    if args.learning_rate is None:  # resolved here so that results.json records the rate every run used
        args.learning_rate = 1e-3 if args.method == "lora" else 2e-4
    return args


# --------------------------------------------------------------------------------------------------
# prerequisites and data
# --------------------------------------------------------------------------------------------------


def check_prerequisites(model: str) -> str | None:
    """None when the trainer and (for ``demo``) the demo weights exist, else what is missing."""
    if importlib.util.find_spec("artshield.finetune.train") is None:
        return "the trainer artshield.finetune.train is not installed in this environment"
    if model == "demo":
        from artshield.models.demo import DEMO_WEIGHTS

        if not (DEMO_WEIGHTS / "training_info.json").is_file():
            return f"the demo model's weights are missing ({DEMO_WEIGHTS}/training_info.json)"
    return None


def instance_images(target: str, n: int, size: int) -> list[np.ndarray]:
    """The instance images (uint8 HWC) of `target`: views of one object, or renders of the artist style."""
    from artshield.models.demo.world import ARTIST_STYLE, SUBJECTS, render

    if target == "artist":
        # Seeds far from the demo training set's (it never saw this style anyway).
        return [render(ARTIST_STYLE, SUBJECTS[i % len(SUBJECTS)], (size, size), seed=10_000 + i) for i in range(n)]
    # One object, photographed n times: crops of a larger render at different offsets, every other mirrored.
    margin = size // 4
    big = render("watercolor", "house", (size + margin, size + margin), seed=10_001)
    rng = np.random.default_rng(0)
    views = []
    for i in range(n):
        top, left = (int(v) for v in rng.integers(0, margin + 1, size=2))
        view = big[top : top + size, left : left + size]
        views.append(np.ascontiguousarray(view[:, ::-1] if i % 2 else view))
    return views


def write_instance_images(folder: Path, images: list[np.ndarray]) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:02d}.png")


# --------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------


def run_name(mode: str, seed: int) -> str:
    return f"{mode}-seed{seed}"


def trainer_command(args: argparse.Namespace, instance_dir: Path, run_dir: Path, bayesian: bool, seed: int) -> list[str]:
    """The trainer's diffusers-style command line for one run."""
    cmd = [
        sys.executable, "-m", "artshield.finetune.train",
        "--method", args.method,
        "--pretrained_model_name_or_path", args.model,
        "--instance_data_dir", str(instance_dir),
        "--instance_prompt", args.instance_prompt,
        "--validation_prompt", args.instance_prompt,
        "--num_validation_images", str(args.num_validation_images),
        "--validation_steps", str(args.validation_steps),
        "--resolution", str(args.resolution),
        "--train_batch_size", "1",
        "--max_train_steps", str(args.max_train_steps),
        "--learning_rate", str(args.learning_rate),
        "--lr_scheduler", "constant",
        "--lr_warmup_steps", "0",
        "--checkpointing_steps", str(10 * args.max_train_steps),  # no intermediate checkpoints
        "--seed", str(seed),
        "--output_dir", str(run_dir),
    ]
    if args.method == "lora":
        cmd += ["--rank", str(args.rank)]
    if bayesian:
        cmd += ["--bayesian"]
        if args.bayes_init_sigma is not None:
            cmd += ["--bayes_init_sigma", str(args.bayes_init_sigma)]
    if args.extra:
        cmd += args.extra.split()
    return cmd


def finished(run_dir: Path, max_train_steps: int) -> bool:
    """Whether `run_dir` holds a completed run: final weights and a fidelity record of the last step."""
    from artshield.finetune.monitor import read_fidelity_log

    weights = (run_dir / "model_index.json").is_file() or any(run_dir.glob("*lora*.safetensors"))
    if not (weights and (run_dir / "fidelity.jsonl").is_file()):
        return False
    return any(r.get("step") == max_train_steps for r in read_fidelity_log(run_dir))


def run_trainer(cmd: list[str], run_dir: Path, in_process: bool = False) -> float:
    """Run one training job (output to ``<run_dir>/train.log``); returns its wall time in seconds. With
    `in_process`, the trainer's ``main`` runs here: its log records go to ``train.log``, its progress bars do not."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fidelity = run_dir / "fidelity.jsonl"
    if fidelity.exists():
        fidelity.unlink()  # the monitor appends: a rerun must not mix with an old run's records
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    logger.info("running: %s", " ".join(cmd))
    start = time.perf_counter()
    if in_process:
        from artshield.finetune.train import main as train_main

        handler = logging.FileHandler(run_dir / "train.log", mode="w", encoding="utf-8")
        logging.getLogger().addHandler(handler)
        try:
            status = train_main(cmd[3:])  # without "python -m artshield.finetune.train"
        finally:
            logging.getLogger().removeHandler(handler)
            handler.close()
        if status != 0:
            raise RuntimeError(f"the trainer failed (exit {status}); see {run_dir / 'train.log'}")
        return time.perf_counter() - start
    with open(run_dir / "train.log", "w", encoding="utf-8") as log:
        result = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        tail = (run_dir / "train.log").read_text(encoding="utf-8").splitlines()[-15:]
        raise RuntimeError(f"the trainer failed (exit {result.returncode}); last lines:\n" + "\n".join(tail))
    return elapsed


# --------------------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------------------


def summarise(records: list[dict]) -> dict[str, dict[str, float]]:
    """Per score: first, peak (and its step), final, and the deepest drop below the running peak."""
    out: dict[str, dict[str, float]] = {}
    keys = sorted({k for r in records for k in r if k not in ("step", "n_images")})
    for key in keys:
        series = [(r["step"], r[key]) for r in records if key in r]
        if not series:
            continue
        peak_step, peak = max(series, key=lambda item: item[1])
        running, deepest, deepest_step = -math.inf, 0.0, None
        for step, value in series:
            running = max(running, value)
            if running - value > deepest:
                deepest, deepest_step = running - value, step
        out[key] = {
            "first": series[0][1],
            "peak": peak,
            "peak_step": peak_step,
            "final": series[-1][1],
            "deepest_drop_below_running_peak": deepest,
            "deepest_drop_step": deepest_step,
        }
    return out


def mean_curves(runs: list[list[dict]]) -> list[dict]:
    """The mean over runs of every score at every step that all runs validated."""
    steps = sorted(set.intersection(*({r["step"] for r in records} for records in runs))) if runs else []
    curves = []
    for step in steps:
        rows = [next(r for r in records if r["step"] == step) for records in runs]
        keys = set.intersection(*(set(r) for r in rows)) - {"step", "n_images"}
        curves.append({"step": step, **{k: float(np.mean([r[k] for r in rows])) for k in sorted(keys)}})
    return curves


def aggregate(summaries: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, list[float]]]:
    """Per score and statistic: mean, standard deviation and the per-seed values, over a mode's runs."""
    out: dict[str, dict] = {}
    for key in sorted(set.intersection(*(set(s) for s in summaries))) if summaries else []:
        out[key] = {}
        for stat in ("peak", "final", "deepest_drop_below_running_peak"):
            values = [s[key][stat] for s in summaries]
            out[key][stat] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "per_seed": values}
    return out


def paired_difference(per_run: dict[str, dict], seeds: list[int]) -> dict[str, dict]:
    """Bayesian minus plain, seed by seed (the two runs of a seed share data order, noise and validation draws),
    per score and statistic: the mean difference with a bootstrap interval over seeds, and in how many seeds
    the Bayesian run is higher. A consistent sign over few seeds is a hint, not a result: with 5 seeds all
    pointing one way a sign test still gives p = 0.06 (two-sided)."""
    from artshield.stats import mean_interval

    runs = [(per_run[run_name("plain", s)], per_run[run_name("bayesian", s)]) for s in seeds]
    out: dict[str, dict] = {}
    for key in sorted(set.intersection(*(set(p) & set(b) for p, b in runs))) if runs else []:
        out[key] = {}
        for stat in ("peak", "final", "deepest_drop_below_running_peak"):
            diffs = np.array([b[key][stat] - p[key][stat] for p, b in runs], dtype=float)
            if not np.all(np.isfinite(diffs)):
                continue
            entry = mean_interval(diffs, seed=0) if diffs.size > 1 else {"mean": float(diffs[0]), "ci": None, "n": 1}
            out[key][stat] = {**entry, "bayesian_higher_in": int((diffs > 0).sum()), "per_seed": diffs.tolist()}
    return out


# --------------------------------------------------------------------------------------------------
# plotting (Pillow: the project does not depend on matplotlib)
# --------------------------------------------------------------------------------------------------


def plot(runs: dict[str, list[dict]], means: dict[str, list[dict]], path: Path) -> Path:
    """One panel per plotted score: every run thin, each mode's mean over seeds thick."""
    from PIL import Image, ImageDraw

    keys = [k for k in PLOTTED if any(k in r for records in runs.values() for r in records)]
    width, panel_h, margin_l, margin_r, margin_t, margin_b = 760, 190, 70, 20, 28, 30
    image = Image.new("RGB", (width, max(1, len(keys)) * panel_h + 30), "white")
    draw = ImageDraw.Draw(image)
    steps = [r["step"] for records in runs.values() for r in records]
    x_lo, x_hi = (min(steps), max(steps)) if steps else (0, 1)
    x_hi = x_hi if x_hi > x_lo else x_lo + 1
    for row, key in enumerate(keys):
        top = row * panel_h
        values = [r[key] for records in runs.values() for r in records if key in r]
        y_lo, y_hi = min(values), max(values)
        pad = (y_hi - y_lo) * 0.08 or abs(y_hi) * 0.05 or 1.0
        y_lo, y_hi = y_lo - pad, y_hi + pad
        box = (margin_l, top + margin_t, width - margin_r, top + panel_h - margin_b)
        draw.rectangle(box, outline=(160, 160, 160))
        draw.text((margin_l, top + 8), f"{key}: {PLOTTED[key]}", fill="black")
        for frac in (0.0, 0.5, 1.0):
            value = y_lo + frac * (y_hi - y_lo)
            y = box[3] - frac * (box[3] - box[1])
            draw.text((4, y - 6), f"{value:.3g}", fill=(90, 90, 90))
        draw.text((margin_l, box[3] + 4), str(x_lo), fill=(90, 90, 90))
        draw.text((box[2] - 30, box[3] + 4), str(x_hi), fill=(90, 90, 90))

        def to_xy(step: float, value: float, box=box, y_lo=y_lo, y_hi=y_hi) -> tuple[float, float]:
            x = box[0] + (step - x_lo) / (x_hi - x_lo) * (box[2] - box[0])
            y = box[3] - (value - y_lo) / (y_hi - y_lo) * (box[3] - box[1])
            return x, y

        for name, records in runs.items():
            colour = COLOURS.get(name.split("-")[0], (0, 0, 0))
            faint = tuple(int(c + (255 - c) * 0.6) for c in colour)
            points = [to_xy(r["step"], r[key]) for r in records if key in r]
            if len(points) > 1:
                draw.line(points, fill=faint, width=1)
        for legend_row, (mode, records) in enumerate(means.items()):
            colour = COLOURS.get(mode, (0, 0, 0))
            points = [to_xy(r["step"], r[key]) for r in records if key in r]
            if len(points) > 1:
                draw.line(points, fill=colour, width=3)
            for x, y in points:
                draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
            draw.text((box[2] - 150, box[1] + 4 + 12 * legend_row), f"{mode} (mean; thin: seeds)", fill=colour)
    draw.text((width // 2 - 40, image.height - 18), "training step", fill="black")
    image.save(path)
    return path


def save_montage(out: Path, seed: int, steps: list[int], per_run: int = 3, size: int = 96) -> Path | None:
    """Validation images of the plain and the Bayesian run of `seed` at `steps`: one row per step, the instance
    images on top; ``montage.png``. None when the images are missing."""
    from PIL import Image, ImageDraw

    instance = sorted((out / "instance").glob("*.png"))[:per_run]
    rows = [[*instance, None, *instance]]
    for step in steps:
        rows.append([out / run_name(mode, seed) / "validation" / f"validation-step{step:06d}-{i}.png"
                     for mode in MODES for i in range(per_run)])
        rows[-1].insert(per_run, None)
    if not all(p is None or p.is_file() for row in rows for p in row):
        return None
    label_w = 60
    grid = Image.new("RGB", (label_w + len(rows[0]) * size, len(rows) * size + 16), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((label_w, 2), "plain", fill=COLOURS["plain"])
    draw.text((label_w + (per_run + 1) * size, 2), "bayesian", fill=COLOURS["bayesian"])
    for r, row in enumerate(rows):
        draw.text((4, 16 + r * size + size // 2), "instance" if r == 0 else f"step {steps[r - 1]}", fill="black")
        for c, path in enumerate(row):
            if path is not None:
                with Image.open(path) as im:
                    grid.paste(im.convert("RGB").resize((size, size)), (label_w + c * size, 16 + r * size))
    grid.save(out / "montage.png")
    return out / "montage.png"


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    out = Path(args.output_dir)
    run_dirs = {run_name(m, s): out / run_name(m, s) for s in args.train_seeds for m in MODES}
    previous = out / "results.json"  # keeps the timings of runs that are not trained again
    timings: dict[str, float] = json.loads(previous.read_text())["wall_time_s"] if previous.is_file() else {}
    commands: dict[str, list[str]] = {}
    if not args.plot_only:
        missing = check_prerequisites(args.model)
        if missing is not None:
            logger.error("cannot run: %s.", missing)
            return 2
        instance_dir = out / "instance"
        write_instance_images(instance_dir, instance_images(args.target, args.num_instance_images, args.resolution))
        for seed in args.train_seeds:
            for mode in MODES:
                name = run_name(mode, seed)
                commands[name] = trainer_command(args, instance_dir, run_dirs[name], mode == "bayesian", seed)
                if finished(run_dirs[name], args.max_train_steps):
                    logger.info("%s: already finished, kept", name)
                    continue
                timings[name] = run_trainer(commands[name], run_dirs[name], args.in_process)
                logger.info("%s finished in %.0f s", name, timings[name])

    from artshield.finetune.monitor import read_fidelity_log

    runs = {}
    for name, run_dir in run_dirs.items():
        if not (run_dir / "fidelity.jsonl").is_file():
            logger.error("no fidelity.jsonl in %s: did the trainer validate (--validation_prompt/--validation_steps)?",
                         run_dir)
            return 1
        runs[name] = read_fidelity_log(run_dir)
    per_run = {name: summarise(records) for name, records in runs.items()}
    means = {mode: mean_curves([runs[run_name(mode, s)] for s in args.train_seeds]) for mode in MODES}
    results = {
        "description": f"few-shot {args.method} fine-tuning of {args.model} on the {args.target} target, plain vs "
        f"--bayesian, seeds {args.train_seeds}",
        "settings": {k: v for k, v in vars(args).items() if k not in ("plot_only", "in_process")},
        "wall_time_s": timings,
        "commands": commands,
        "summary": {mode: aggregate([per_run[run_name(mode, s)] for s in args.train_seeds]) for mode in MODES},
        "summary_per_run": per_run,
        "bayesian_minus_plain": paired_difference(per_run, args.train_seeds),
        "mean_curves": means,
        "records": runs,
    }
    out.mkdir(parents=True, exist_ok=True)
    # json.dumps, not write_json_atomic: a score can be NaN (e.g. no high-frequency energy), written as NaN.
    write_text_atomic(out / "results.json", json.dumps(results, indent=2) + "\n", what="results")
    figure = plot(runs, means, out / "curves.png")
    validated = [r["step"] for r in means["plain"]]
    shown = validated[:: max(1, len(validated) // 8)]
    montage = save_montage(out, args.train_seeds[0], shown)
    for mode, summary in results["summary"].items():
        for key in ("dct_similarity", "style_score", "hf_energy_ratio"):
            if key in summary:
                s = summary[key]
                logger.info(
                    "%-8s %-15s peak %.3f±%.3f final %.3f±%.3f deepest drop below running peak %.3f±%.3f", mode, key,
                    s["peak"]["mean"], s["peak"]["std"], s["final"]["mean"], s["final"]["std"],
                    s["deepest_drop_below_running_peak"]["mean"], s["deepest_drop_below_running_peak"]["std"],
                )
    for key in ("dct_similarity", "style_score"):
        for stat, d in results["bayesian_minus_plain"].get(key, {}).items():
            logger.info("bayesian - plain %-15s %-32s %+.3f %s, higher in %d of %d seeds", key, stat, d["mean"],
                        f"[{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]" if d["ci"] else "", d["bayesian_higher_in"], d["n"])
    logger.info("wrote %s, %s and %s", out / "results.json", figure, montage or "no montage (images missing)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
