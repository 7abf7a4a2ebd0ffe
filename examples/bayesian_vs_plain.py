"""Few-shot fine-tuning of the demo model, plain vs Bayesian, with fidelity curves (the corruption stage).

    python examples/bayesian_vs_plain.py                          # LoRA, both runs, curves + JSON
    python examples/bayesian_vs_plain.py --method dreambooth --max_train_steps 400 --validation_steps 20

Wu et al. (arXiv 2405.19931) report that during few-shot fine-tuning the fidelity of generations first rises,
then drops while noisy patterns appear (the "corruption stage"), then recovers into overfitting, and that
Bayesian weights (``--bayesian``: ``w = mu + sigma * eps`` per training step, the mean at inference) mitigate
the drop. This script reproduces the *protocol* on the demo model: it renders a few images of the demo
world's held-out artist style ("velmora"), fine-tunes the demo model on them twice with
``python -m artshield.finetune.train`` -- once plain, once with ``--bayesian`` and otherwise identical flags
and seed -- validating every ``--validation_steps`` steps. The trainer's fidelity monitor
(:class:`artshield.finetune.monitor.FidelityMonitor`) writes ``fidelity.jsonl`` in each run's folder;
this script then plots both runs' curves (``curves.png``: matplotlib when installed, else drawn with
Pillow) and writes ``results.json`` (every record plus a summary per run: peak, final and deepest drop after
the peak of each score).

What it shows and what it does not: the demo model is a 6M-parameter model of a procedural world, so this
checks that the Bayesian mode runs end to end and lets one *look* for a corruption stage on that world; it is
not evidence about how Stable Diffusion behaves (use a real checkpoint with ``--model`` for that, on a GPU).
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

logger = logging.getLogger("bayesian_vs_plain")

#: Scores plotted (when present), with whether higher means more faithful to the instance images.
PLOTTED = {
    "style_score": "P(artist style) of generations (demo style metric)",
    "hf_energy_ratio": "high-frequency energy, generations / instance images",
    "nn_ssim": "SSIM to the nearest instance image (copying)",
    "pixel_diversity": "pairwise RMSE among generations (diversity)",
    "clip_i": "CLIP-I to the instance images",
    "lpips_diversity": "pairwise LPIPS among generations",
}
COLOURS = {"plain": (31, 119, 180), "bayesian": (214, 39, 40)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", choices=("lora", "dreambooth", "full"), default="lora")
    parser.add_argument("--model", default="demo", help="--pretrained_model_name_or_path for the trainer.")
    parser.add_argument("--output_dir", default="runs/bayesian_vs_plain")
    parser.add_argument("--num_instance_images", type=int, default=5)
    parser.add_argument("--instance_prompt", default="a painting in velmora style")
    parser.add_argument("--validation_prompt", default=None, help="Default: the instance prompt.")
    parser.add_argument("--num_validation_images", type=int, default=4)
    parser.add_argument("--validation_steps", type=int, default=25)
    parser.add_argument("--max_train_steps", type=int, default=300)
    parser.add_argument("--learning_rate", type=float, default=None, help="Default: 1e-3 (LoRA) / 5e-5 (others).")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bayes_init_sigma", type=float, default=None, help="Passed to the Bayesian run if set.")
    parser.add_argument(
        "--extra", default="", help="Extra trainer flags for both runs, as one string (e.g. '--train_batch_size 2')."
    )
    parser.add_argument("--plot_only", action="store_true", help="Only re-plot the runs already in --output_dir.")
    return parser.parse_args(argv)


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


def write_instance_images(folder: Path, n: int, size: int, seed: int) -> list[Path]:
    """Render `n` images of the held-out artist style (subjects in turn) into `folder`."""
    from PIL import Image

    from artshield.models.demo.world import ARTIST_STYLE, SUBJECTS, render

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    paths = []
    for i in range(n):
        subject = SUBJECTS[i % len(SUBJECTS)]
        # Seeds far from the demo training set's (it never saw this style anyway).
        image = Image.fromarray(render(ARTIST_STYLE, subject, (size, size), seed=10_000 + seed * 100 + i))
        path = folder / f"{i:02d}_{subject}.png"
        image.save(path)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------


def trainer_command(args: argparse.Namespace, instance_dir: Path, run_dir: Path, bayesian: bool) -> list[str]:
    """The trainer's diffusers-style command line for one run."""
    lr = args.learning_rate if args.learning_rate is not None else (1e-3 if args.method == "lora" else 5e-5)
    cmd = [
        sys.executable, "-m", "artshield.finetune.train",
        "--method", args.method,
        "--pretrained_model_name_or_path", args.model,
        "--instance_data_dir", str(instance_dir),
        "--instance_prompt", args.instance_prompt,
        "--validation_prompt", args.validation_prompt or args.instance_prompt,
        "--num_validation_images", str(args.num_validation_images),
        "--validation_steps", str(args.validation_steps),
        "--resolution", str(args.resolution),
        "--train_batch_size", "1",
        "--max_train_steps", str(args.max_train_steps),
        "--learning_rate", str(lr),
        "--lr_scheduler", "constant",
        "--lr_warmup_steps", "0",
        "--checkpointing_steps", str(10 * args.max_train_steps),  # no intermediate checkpoints
        "--seed", str(args.seed),
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


def run_trainer(cmd: list[str], run_dir: Path) -> float:
    """Run one training job (output to ``<run_dir>/train.log``); returns its wall time in seconds."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fidelity = run_dir / "fidelity.jsonl"
    if fidelity.exists():
        fidelity.unlink()  # the monitor appends: a rerun must not mix with an old run's records
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    logger.info("running: %s", " ".join(cmd))
    start = time.perf_counter()
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


# --------------------------------------------------------------------------------------------------
# plotting
# --------------------------------------------------------------------------------------------------


def plot(runs: dict[str, list[dict]], path: Path) -> Path:
    """Curves of every plotted score present, one panel each, both runs per panel."""
    keys = [k for k in PLOTTED if any(k in r for records in runs.values() for r in records)]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _plot_pillow(runs, keys, path)
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.4 * len(keys)), squeeze=False, sharex=True)
    for ax, key in zip(axes[:, 0], keys, strict=True):
        for name, records in runs.items():
            series = [(r["step"], r[key]) for r in records if key in r]
            if series:
                ax.plot(*zip(*series, strict=True), marker="o", ms=3, label=name,
                        color=[c / 255 for c in COLOURS.get(name, (0, 0, 0))])
        ax.set_ylabel(key)
        ax.set_title(PLOTTED[key], fontsize=9)
        ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel("training step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_pillow(runs: dict[str, list[dict]], keys: list[str], path: Path) -> Path:
    """A plain line chart per score with Pillow (no matplotlib here)."""
    from PIL import Image, ImageDraw

    width, panel_h, margin_l, margin_r, margin_t, margin_b = 720, 190, 70, 20, 28, 30
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

        for legend_row, (name, records) in enumerate(runs.items()):
            colour = COLOURS.get(name, (0, 0, 0))
            points = [to_xy(r["step"], r[key]) for r in records if key in r]
            if len(points) > 1:
                draw.line(points, fill=colour, width=2)
            for x, y in points:
                draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
            draw.text((box[2] - 80, box[1] + 4 + 12 * legend_row), name, fill=colour)
    draw.text((width // 2 - 40, image.height - 18), "training step", fill="black")
    image.save(path)
    return path


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    out = Path(args.output_dir)
    runs_dirs = {"plain": out / "plain", "bayesian": out / "bayesian"}
    timings: dict[str, float] = {}
    commands: dict[str, list[str]] = {}
    if not args.plot_only:
        missing = check_prerequisites(args.model)
        if missing is not None:
            logger.error("cannot run: %s.", missing)
            return 2
        instance_dir = out / "instance"
        write_instance_images(instance_dir, args.num_instance_images, args.resolution, args.seed)
        for name, run_dir in runs_dirs.items():
            commands[name] = trainer_command(args, instance_dir, run_dir, bayesian=(name == "bayesian"))
            timings[name] = run_trainer(commands[name], run_dir)
            logger.info("%s run finished in %.0f s", name, timings[name])

    from artshield.finetune.monitor import read_fidelity_log

    runs = {}
    for name, run_dir in runs_dirs.items():
        if not (run_dir / "fidelity.jsonl").is_file():
            logger.error("no %s in %s: did the trainer validate (--validation_prompt/--validation_steps)?",
                         "fidelity.jsonl", run_dir)
            return 1
        runs[name] = read_fidelity_log(run_dir)
    results = {
        "description": "few-shot fine-tuning of the demo model on the held-out artist style, plain vs --bayesian",
        "settings": {k: v for k, v in vars(args).items() if k != "plot_only"},
        "wall_time_s": timings,
        "commands": commands,
        "summary": {name: summarise(records) for name, records in runs.items()},
        "records": runs,
    }
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out / "results.json")
    figure = plot(runs, out / "curves.png")
    for name, summary in results["summary"].items():
        for key in ("style_score", "hf_energy_ratio", "nn_ssim"):
            if key in summary:
                s = summary[key]
                logger.info("%-8s %-16s first %.3f peak %.3f@%s final %.3f deepest drop %.3f@%s", name, key,
                            s["first"], s["peak"], s["peak_step"], s["final"],
                            s["deepest_drop_below_running_peak"], s["deepest_drop_step"])
    logger.info("wrote %s and %s", out / "results.json", figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
