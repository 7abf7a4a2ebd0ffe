"""Proof on the demo world: does ``artshield.authenticate`` tell a LoRA that learned an artist's images from
one that did not?

    python examples/authenticate_proof.py results/authenticate                 # the defaults (CPU: long)
    python examples/authenticate_proof.py /tmp/smoke --images 4 --size 32 --lora-steps 2 --cgidm-steps 2 \
        --seeds 0 --control-images 2                                           # a smoke run: seconds

For each seed:

1. Render ``--images`` paintings in the demo world's held-out artist style (``velmora``, never seen by the demo
   model); even-numbered ones are the *members*, odd-numbered ones the *hold-out* (never trained on).
2. Fine-tune a LoRA on the members with the project's trainer (:class:`artshield.finetune.LocalTrainer`, the
   same denoising loss as ``artshield finetune --method lora``), instance prompt "a painting in velmora
   style": the **suspect**.
3. Fine-tune a **negative control** LoRA with the same recipe and prompt on images of the *training* styles
   only (none of the artist's images).
4. Audit both with :class:`artshield.authenticate.Auditor` (members as ``images``, hold-out as ``holdout``):
   image-level AUC members vs hold-out for CGI-DM and every baseline, with intervals, TPR at 1 % FPR, the
   model-level verdict and its p-value, and seconds per image.

Writes ``results.json`` (every number), ``table.md`` (the README table) and each audit's report folder.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from artshield.cli_support import ArgumentParser, bounded, non_negative_int, positive_int
from artshield.fileio import write_json_atomic, write_text_atomic
from artshield.models.demo.world import ARTIST_STYLE, STYLES, SUBJECTS, render

logger = logging.getLogger("authenticate_proof")
PROMPT = f"a painting in {ARTIST_STYLE} style"
CONTROL_STYLES = STYLES[:4]


def _save_images(folder: Path, style: str, indices, size: int, seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in indices:
        # Pairs (2k, 2k + 1) share a subject, so members (even) and hold-out (odd) cover the same subjects:
        # with i % 6 they would not, and any score that sees the subject would separate them (a confound).
        subject = SUBJECTS[(i // 2) % len(SUBJECTS)]
        path = folder / f"{style}_{i:03d}.png"
        Image.fromarray(np.ascontiguousarray(render(style, subject, (size, size), seed=seed * 1000 + i))).save(path)
        paths.append(path)
    return paths


def train_lora(images: list[Path], out: Path, *, steps: int, rank: int, lr: float, size: int, seed: int, device, dtype) -> tuple[Path, float]:
    from safetensors.torch import save_file

    from artshield.finetune import LocalTrainer
    from artshield.models import load

    started = time.perf_counter()
    model = load("demo", device=device, dtype=dtype)
    trainer = LocalTrainer(model, rank=rank, learning_rate=lr, resolution=size, batch_size=min(4, len(images)), seed=seed)
    update = trainer.train_steps([str(p) for p in images], steps, prompt=PROMPT)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "pytorch_lora_weights.safetensors"
    save_file({k: v.contiguous() for k, v in update.state_dict.items()}, str(path))
    return path, time.perf_counter() - started


def audit(lora: Path, members: Path, holdout: Path, out: Path, args) -> dict:
    from artshield.authenticate import Auditor

    auditor = Auditor(
        "demo", lora=lora, prompt=PROMPT, resolution=args.size, device=args.device, dtype=args.dtype, seed=args.seed_offset,
        cgidm={"steps": args.cgidm_steps, "timesteps_per_step": args.timesteps_per_step, "seed": args.seed_offset},
    )  # fmt: skip
    result = auditor.audit(members, holdout=holdout, output=out, progress=not args.quiet)
    computed = [i.seconds for i in result.images if not i.reused]
    variance = None
    if args.variance_draws:
        from artshield.authenticate.auditor import list_images, load_square

        first = torch.cat([load_square(p, auditor.resolution) for p in list_images(members, "members")[:2]])
        variance = auditor.method.gradient_variance(first, draws=args.variance_draws)
    return {
        "gradient_variance": variance,
        "verdict": result.verdict,
        "metrics": result.metrics,
        "feature_space": result.feature_space,
        "seconds_per_image": float(np.mean(computed)) if computed else None,
        "report": str(out / "report.html"),
    }


def table(runs: list[dict]) -> str:
    """Markdown: per score, mean AUC over seeds (and each seed's with its interval) for suspect and control."""
    scores = list(runs[0]["suspect"]["metrics"])
    lines = ["| score | suspect AUC (members vs hold-out) | suspect TPR @ 1 % FPR | control AUC |", "|---|---|---|---|"]
    for score in scores:
        aucs = [f"{r['suspect']['metrics'][score]['auc']:.2f} [{r['suspect']['metrics'][score]['auc_ci'][0]:.2f}, "
                f"{r['suspect']['metrics'][score]['auc_ci'][1]:.2f}]" for r in runs]  # fmt: skip
        tprs = [f"{r['suspect']['metrics'][score]['tpr_at_1pct']:.2f}" for r in runs]
        control = [f"{r['control']['metrics'][score]['auc']:.2f}" for r in runs if r.get("control")]
        lines.append(f"| {score} | {'; '.join(aucs)} | {'; '.join(tprs)} | {'; '.join(control) or '–'} |")
    lines.append("")
    lines.append("| seed | suspect verdict (p) | control verdict (p) | s / image |")
    lines.append("|---|---|---|---|")
    for r in runs:
        s, c = r["suspect"]["verdict"], (r.get("control") or {}).get("verdict")
        ctext = f"{'learned' if c['learned'] else 'not learned'} ({c['p_value']:.3g})" if c else "–"
        lines.append(f"| {r['seed']} | {'learned' if s['learned'] else 'not learned'} ({s['p_value']:.3g}) | {ctext} | "
                     f"{r['suspect']['seconds_per_image']:.2f} |")  # fmt: skip
    ratios = [r["suspect"]["gradient_variance"]["ratio"] for r in runs if r["suspect"].get("gradient_variance")]
    if ratios:
        lines.append("")
        lines.append("Gradient variance, separate / shared noise: " + ", ".join(f"{x:.2f}" for x in ratios))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="authenticate_proof", description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dir")
    parser.add_argument("--images", type=bounded(int, 4), default=16, help="artist paintings per seed, half members (default 16)")
    parser.add_argument("--control-images", type=non_negative_int, default=8, help="images of the control LoRA (0: no control)")
    parser.add_argument("--size", type=positive_int, default=128, help="image side (default 128, the demo's)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--lora-steps", type=positive_int, default=400)
    parser.add_argument("--rank", type=positive_int, default=16)
    parser.add_argument("--lr", type=bounded(float, 1e-9), default=1e-3)
    parser.add_argument("--cgidm-steps", type=non_negative_int, default=100)
    parser.add_argument("--timesteps-per-step", type=positive_int, default=1)
    parser.add_argument("--variance-draws", type=non_negative_int, default=16,
                        help="draws to measure the gradient variance with shared vs separate noise (0: skip)")
    parser.add_argument("--seed-offset", type=non_negative_int, default=0, help="seed of the audit's randomness")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    root = Path(args.results_dir)
    runs = []
    for seed in seeds:
        base = root / f"seed{seed}"
        indices = range(args.images)
        members = _save_images(base / "members", ARTIST_STYLE, [i for i in indices if i % 2 == 0], args.size, seed)
        _save_images(base / "holdout", ARTIST_STYLE, [i for i in indices if i % 2 == 1], args.size, seed)
        lora, train_s = train_lora(members, base / "suspect_lora", steps=args.lora_steps, rank=args.rank, lr=args.lr,
                                   size=args.size, seed=seed, device=args.device, dtype=args.dtype)  # fmt: skip
        run = {"seed": seed, "train_seconds": {"suspect": train_s}}
        logger.info("seed %d: suspect LoRA trained in %.0f s", seed, train_s)
        run["suspect"] = audit(lora, base / "members", base / "holdout", base / "report_suspect", args)
        if args.control_images:
            control_images = []
            for k, style in enumerate(CONTROL_STYLES):
                share = range(k, args.control_images, len(CONTROL_STYLES))
                control_images += _save_images(base / "control_data", style, list(share), args.size, seed)
            control, train_c = train_lora(control_images, base / "control_lora", steps=args.lora_steps, rank=args.rank,
                                          lr=args.lr, size=args.size, seed=seed, device=args.device, dtype=args.dtype)  # fmt: skip
            run["train_seconds"]["control"] = train_c
            run["control"] = audit(control, base / "members", base / "holdout", base / "report_control", args)
        runs.append(run)
        logger.info("seed %d: suspect %s, control %s", seed, run["suspect"]["verdict"], (run.get("control") or {}).get("verdict"))
    settings = {k: v for k, v in vars(args).items() if k != "results_dir"}
    write_json_atomic(root / "results.json", {"settings": settings, "prompt": PROMPT, "runs": runs,
                                              "command": "python examples/authenticate_proof.py " + " ".join(argv or sys.argv[1:])})  # fmt: skip
    text = table(runs)
    write_text_atomic(root / "table.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
