"""Proof on the demo world: does ``artshield.authenticate`` tell a suspect that learned an artist's images
from one that did not, for LoRA and DreamBooth suspects, over several training seeds?

    python examples/authenticate_proof.py results/authenticate                 # the defaults (CPU: long)
    python examples/authenticate_proof.py /tmp/smoke --images 4 --size 32 --lora-steps 2 --dreambooth-steps 2 \
        --cgidm-steps 2 --seeds 0 --control-images 2 --variance-draws 0        # a smoke run: seconds

For each training seed:

1. Render ``--images`` paintings in the demo world's held-out artist style (``velmora``, never seen by the demo
   model); even-numbered ones are the *members*, odd-numbered ones the *hold-out* (never trained on). Pairs
   (2k, 2k + 1) share a subject.
2. Fine-tune each suspect kind of ``--suspects`` on the members with the project's trainer, instance prompt
   "a painting in velmora style":

   * ``lora``: a LoRA (:class:`artshield.finetune.LocalTrainer`, the same denoising loss as ``artshield
     finetune --method lora``), audited with the adapter toggled on the base's own weights
     (``Auditor(base, lora=...)``);
   * ``dreambooth``: a full UNet fine-tune (:func:`artshield.finetune.train.train` with ``method="dreambooth"``,
     what ``artshield finetune --method dreambooth`` runs), saved as a diffusers folder and audited as a
     second loaded model (``Auditor(base, suspect=FOLDER)``).
3. Fine-tune a **negative control** of the same kind, recipe and prompt on images of the *training* styles
   only (none of the artist's images).
4. Audit every suspect with :class:`artshield.authenticate.Auditor` (members as ``images``, hold-out as
   ``holdout``): image-level AUC members vs hold-out for CGI-DM and every baseline, with intervals, TPR at
   1 % FPR, the model-level verdict (the auditor's, on ``cgidm``) and, per score, the same permutation test's
   p-value, and seconds per image.

Over the training seeds, per suspect kind and score (``summary`` in ``results.json``): the mean of the
per-seed AUCs with a percentile-bootstrap interval over seeds and their range, the pooled per-image AUC
(every seed's members vs every seed's hold-out) with its bootstrap interval and TPR at 1 % FPR, the control's
AUC likewise, and every seed's verdict.

Writes ``results.json`` (every number; rewritten after each seed, so a cut-off run keeps its finished seeds),
``table.md`` and each audit's report folder; ``--write-result benchmarks/results/authenticate_proof.json``
also writes the result file the README's ``authenticate-proof`` table is rendered from
(``python benchmarks/render_readme.py authenticate-proof``). Rerunning into the same folder reuses trained
suspects and audited images (resumable).
"""

from __future__ import annotations

import json
import logging
import platform
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
SUSPECT_KINDS = ("lora", "dreambooth")
#: Scores in the order tables list them (those a run lacks are skipped).
SCORE_ORDER = ("cgidm", "cgidm-gain", "cgidm-max", "cgidm-latent-align", "cgidm-latent-gain", "cgidm-suspect-align", "loss",
               "loss-diff", "secmi", "pia")
ALPHA = 0.01


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


def _trained(out: Path, weights: Path, train) -> tuple[Path, float]:
    """Reuse `weights` when an earlier run finished them (``train.json`` is written last), else `train()`."""
    marker = out / "train.json"
    if marker.is_file() and weights.exists():
        return weights, float(json.loads(marker.read_text())["seconds"])
    started = time.perf_counter()
    train()
    seconds = time.perf_counter() - started
    write_json_atomic(marker, {"seconds": seconds})
    return weights, seconds


def train_lora(images: list[Path], out: Path, *, steps: int, rank: int, lr: float, size: int, seed: int, device, dtype) -> tuple[Path, float]:
    path = out / "pytorch_lora_weights.safetensors"

    def run() -> None:
        from safetensors.torch import save_file

        from artshield.finetune import LocalTrainer
        from artshield.models import load

        model = load("demo", device=device, dtype=dtype)
        trainer = LocalTrainer(model, rank=rank, learning_rate=lr, resolution=size, batch_size=min(4, len(images)), seed=seed)
        update = trainer.train_steps([str(p) for p in images], steps, prompt=PROMPT)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in update.state_dict.items()}, str(path))

    return _trained(out, path, run)


def train_dreambooth(data: Path, out: Path, *, steps: int, lr: float, size: int, seed: int, batch: int) -> tuple[Path, float]:
    """Every UNet weight fine-tuned by the project's trainer (``artshield finetune --method dreambooth``); the
    result is a diffusers folder."""

    def run() -> None:
        from artshield.finetune import TrainConfig
        from artshield.finetune.train import train

        train(TrainConfig(
            pretrained_model_name_or_path="demo", method="dreambooth", instance_data_dir=str(data),
            instance_prompt=PROMPT, resolution=size, train_batch_size=batch, max_train_steps=steps,
            learning_rate=lr, lr_warmup_steps=0, seed=seed, output_dir=str(out), checkpointing_steps=10**9,
        ))  # fmt: skip

    return _trained(out, out, run)


def audit(kind: str, weights: Path, members: Path, holdout: Path, out: Path, args) -> dict:
    from artshield.authenticate import Auditor
    from artshield.authenticate.calibration import model_verdict

    model = {"lora": weights} if kind == "lora" else {"suspect": str(weights)}
    auditor = Auditor(
        "demo", **model, prompt=PROMPT, resolution=args.size, device=args.device, dtype=args.dtype, seed=args.seed_offset,
        alpha=ALPHA, cgidm={"steps": args.cgidm_steps, "timesteps_per_step": args.timesteps_per_step, "seed": args.seed_offset,
                            "t_max": args.t_max},
        suspect_recovery=args.suspect_recovery,
    )  # fmt: skip
    result = auditor.audit(members, holdout=holdout, output=out, progress=not args.quiet)
    computed = [i.seconds for i in result.images]  # a reused cell keeps the time it took when computed
    variance = None
    if args.variance_draws:
        from artshield.authenticate.auditor import list_images, load_square

        first = torch.cat([load_square(p, auditor.resolution) for p in list_images(members, "members")[:2]])
        variance = auditor.method.gradient_variance(first, draws=args.variance_draws)
    scores = {split: {name: result.scores(split, name).tolist() for name in result.metrics}
              for split in ("artist", "holdout")}  # fmt: skip
    # The auditor's permutation test (hold-out as the reference) on every score, not only the verdict's.
    p_values = {name: model_verdict(scores["artist"][name], scores["holdout"][name], alpha=ALPHA, seed=args.seed_offset).p_value
                for name in result.metrics}  # fmt: skip
    return {
        "gradient_variance": variance,
        "verdict": result.verdict,
        "p_values": p_values,
        "metrics": result.metrics,
        "scores": scores,
        "feature_space": result.feature_space,
        "seconds_per_image": float(np.mean(computed)) if computed else None,
        "report": str(out / "report.html"),
    }


def _over_seeds(values: list[float], seed: int = 0) -> dict:
    """Mean of per-seed values, a 95 % percentile-bootstrap interval of that mean over seeds, and the range."""
    from artshield.stats import bootstrap_ci

    array = np.asarray(values, dtype=float)
    mean, low, high = bootstrap_ci(array, np.mean, n=2000, seed=seed) if array.size > 1 else (float(array[0]),) * 3
    return {"mean": float(mean), "ci": [float(low), float(high)], "range": [float(array.min()), float(array.max())],
            "per_seed": array.tolist()}  # fmt: skip


def summarize(runs: list[dict]) -> dict:
    """Per suspect kind and score: AUC over training seeds and pooled per image, for suspect and control, and
    the verdicts of every seed."""
    from artshield.authenticate.calibration import membership_metrics

    out: dict = {}
    kinds = [k for k in SUSPECT_KINDS if all(k in r["suspects"] for r in runs)]
    for kind in kinds:
        audits = [r["suspects"][kind] for r in runs]
        roles = ["suspect"] + (["control"] if all(a.get("control") for a in audits) else [])
        names = [s for s in SCORE_ORDER if s in audits[0]["suspect"]["metrics"]]
        scores = {}
        for name in names:
            entry = {}
            for role in roles:
                members = np.concatenate([a[role]["scores"]["artist"][name] for a in audits])
                holdout = np.concatenate([a[role]["scores"]["holdout"][name] for a in audits])
                pooled = membership_metrics(members, holdout, seed=0).to_dict()
                entry[role] = {
                    "auc_over_seeds": _over_seeds([a[role]["metrics"][name]["auc"] for a in audits]),
                    "tpr_at_1pct_over_seeds": _over_seeds([a[role]["metrics"][name]["tpr_at_1pct"] for a in audits]),
                    "pooled": {k: pooled[k] for k in ("auc", "auc_ci", "tpr_at_1pct", "tpr_at_1pct_ci", "n_members", "n_nonmembers")},
                    "p_values": [a[role]["p_values"][name] for a in audits],
                    "accused": [a[role]["p_values"][name] <= ALPHA for a in audits],
                }
            scores[name] = entry
        out[kind] = {
            "scores": scores,
            "verdicts": [{"seed": r["seed"], **{role: {"learned": a[role]["verdict"]["learned"], "p_value": a[role]["verdict"]["p_value"]}
                                              for role in roles}} for r, a in zip(runs, audits, strict=True)],  # fmt: skip
            "seconds_per_image": float(np.mean([a["suspect"]["seconds_per_image"] for a in audits
                                                if a["suspect"]["seconds_per_image"] is not None] or [np.nan])),
            "train_seconds": float(np.mean([a["train_seconds"]["suspect"] for a in audits])),
        }
    return out


def table(result: dict) -> str:
    """Markdown: per suspect kind and score, the AUC over seeds, the pooled per-image AUC and TPR, the control's
    AUC and the permutation test's p-values per seed (the same as ``render_readme.py authenticate-proof``)."""
    lines = ["| suspect | score | AUC, mean over seeds [95 % CI] | pooled AUC [95 % CI] | TPR @ 1 % FPR (pooled) | "
             "control AUC (mean) | p per seed: suspect / control |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for kind, entry in result["summary"].items():
        for name, score in entry["scores"].items():
            s, c = score["suspect"], score.get("control")
            seeds, pooled = s["auc_over_seeds"], s["pooled"]
            p = ", ".join(f"{x:.2g}" for x in s["p_values"]) + (" / " + ", ".join(f"{x:.2g}" for x in c["p_values"]) if c else "")
            lines.append(f"| {kind} | {name} | {seeds['mean']:.2f} [{seeds['ci'][0]:.2f}, {seeds['ci'][1]:.2f}] | "
                         f"{pooled['auc']:.2f} [{pooled['auc_ci'][0]:.2f}, {pooled['auc_ci'][1]:.2f}] | "
                         f"{pooled['tpr_at_1pct']:.2f} | {c['auc_over_seeds']['mean']:.2f} | {p} |" if c else
                         f"| {kind} | {name} | {seeds['mean']:.2f} [{seeds['ci'][0]:.2f}, {seeds['ci'][1]:.2f}] | "
                         f"{pooled['auc']:.2f} [{pooled['auc_ci'][0]:.2f}, {pooled['auc_ci'][1]:.2f}] | "
                         f"{pooled['tpr_at_1pct']:.2f} | – | {p} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _kinds(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in SUSPECT_KINDS]
    if unknown or not kinds:
        raise ValueError(f"--suspects must be a comma-separated subset of {','.join(SUSPECT_KINDS)}, not {text!r}")
    return list(dict.fromkeys(kinds))


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="authenticate_proof", description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dir")
    parser.add_argument("--images", type=bounded(int, 4), default=16, help="artist paintings per seed, half members (default 16)")
    parser.add_argument("--control-images", type=non_negative_int, default=8, help="images of each control (0: no control)")
    parser.add_argument("--size", type=positive_int, default=128, help="image side (default 128, the demo's)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (default 0,1,2)")
    parser.add_argument("--suspects", default="lora,dreambooth", help="suspect kinds: lora, dreambooth or both (default)")
    parser.add_argument("--lora-steps", type=positive_int, default=400)
    parser.add_argument("--rank", type=positive_int, default=16)
    parser.add_argument("--lr", type=bounded(float, 1e-9), default=1e-3, help="LoRA learning rate (default 1e-3)")
    parser.add_argument("--dreambooth-steps", type=positive_int, default=200)
    parser.add_argument("--dreambooth-lr", type=bounded(float, 1e-9), default=2e-4,
                        help="DreamBooth learning rate (default 2e-4; the trainer's 5e-6 barely moves the demo UNet)")
    parser.add_argument("--cgidm-steps", type=non_negative_int, default=100)
    parser.add_argument("--timesteps-per-step", type=positive_int, default=1)
    parser.add_argument("--t-max", type=positive_int, default=None, help="CGI-DM timesteps below this (default: all, as Revelio)")
    parser.add_argument("--suspect-recovery", action="store_true", help="also the suspect-only recovery (cgidm-suspect-align)")
    parser.add_argument("--variance-draws", type=non_negative_int, default=16,
                        help="draws to measure the gradient variance with shared vs separate noise (0: skip)")
    parser.add_argument("--seed-offset", type=non_negative_int, default=0, help="seed of the audit's randomness")
    parser.add_argument("--write-result", metavar="PATH", help="also write results.json here (e.g. benchmarks/results/authenticate_proof.json)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        seeds = list(dict.fromkeys(int(s) for s in args.seeds.split(",") if s.strip()))
        kinds = _kinds(args.suspects)
    except ValueError as exc:
        parser.error(str(exc) if "--suspects" in str(exc) else f"--seeds must be comma-separated integers, not {args.seeds!r}")
    if not seeds:
        parser.error("--seeds needs at least one seed")
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    root = Path(args.results_dir)
    command = "python examples/authenticate_proof.py " + " ".join(sys.argv[1:] if argv is None else argv)
    settings = {k: v for k, v in vars(args).items() if k not in ("results_dir", "write_result", "quiet")}
    started = time.perf_counter()
    runs = []
    for seed in seeds:
        base = root / f"seed{seed}"
        indices = range(args.images)
        members = _save_images(base / "members", ARTIST_STYLE, [i for i in indices if i % 2 == 0], args.size, seed)
        _save_images(base / "holdout", ARTIST_STYLE, [i for i in indices if i % 2 == 1], args.size, seed)
        control_images = []
        for k, style in enumerate(CONTROL_STYLES):
            share = range(k, args.control_images, len(CONTROL_STYLES))
            control_images += _save_images(base / "control_data", style, list(share), args.size, seed)
        run = {"seed": seed, "suspects": {}}
        for kind in kinds:
            entry = {"train_seconds": {}}
            for role, images, folder in (("suspect", members, base / "members"), ("control", control_images, base / "control_data")):
                if role == "control" and not args.control_images:
                    continue
                if kind == "lora":
                    weights, seconds = train_lora(images, base / f"{role}_lora", steps=args.lora_steps, rank=args.rank, lr=args.lr,
                                                  size=args.size, seed=seed, device=args.device, dtype=args.dtype)  # fmt: skip
                else:
                    weights, seconds = train_dreambooth(folder, base / f"{role}_dreambooth", steps=args.dreambooth_steps,
                                                        lr=args.dreambooth_lr, size=args.size, seed=seed, batch=min(4, len(images)))  # fmt: skip
                entry["train_seconds"][role] = seconds
                logger.info("seed %d: %s %s trained in %.0f s", seed, kind, role, seconds)
                entry[role] = audit(kind, weights, base / "members", base / "holdout", base / f"report_{role}_{kind}", args)
                logger.info("seed %d: %s %s verdict %s", seed, kind, role, entry[role]["verdict"])
            run["suspects"][kind] = entry
        runs.append(run)
        result = {
            "benchmark": "authenticate_proof",
            "settings": settings,
            "prompt": PROMPT,
            "seeds": [r["seed"] for r in runs],
            "suspect_kinds": kinds,
            "alpha": ALPHA,
            "torch": torch.__version__,
            "machine": f"{platform.machine()} {platform.system()}, {torch.get_num_threads()} torch thread(s)",
            "wall_seconds": time.perf_counter() - started,
            "command": command,
            "summary": summarize(runs),
            "runs": runs,
        }
        write_json_atomic(root / "results.json", result)
        if args.write_result:
            write_json_atomic(Path(args.write_result), result)
    text = table(result)
    write_text_atomic(root / "table.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
