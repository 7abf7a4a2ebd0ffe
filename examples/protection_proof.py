"""Proof of efficacy on the demo world: every protection method × purifications × mimicry, with intervals.

    python examples/protection_proof.py results/proof                     # all steps (about 5 CPU hours)
    python examples/protection_proof.py results/proof --lora-methods advdm,mist --skip-sdedit
    python examples/protection_proof.py /tmp/smoke --images 2 --size 64 --steps 1 --methods advdm \
        --purify none,jpeg75 --samples 1 --sampling-steps 2 --skip-inpaint --skip-lora   # a smoke run: seconds

1. Render 8 paintings in the demo world's held-out artist style (``velmora``; the same seed as
   ``examples/lora_artist_mimicry.py``), 128 px.
2. Protect them with every text-to-image method at ``--strength medium`` (8/255, 100 steps)::

       protect <clean> -o <protected>/<method> --method <method> --strength medium

   and with ``diffusionguard`` against the demo model's inpainting variant (``--model demo-inpaint``) when present.
3. Evaluate SDEdit mimicry (strength 0.5, empty prompt, 2 seeds per image) for every method under
   ``none, jpeg75, resize0.5, noise0.05, diffpure``, the clean images under the same purifications too
   (``--purify-clean``) — cheap, so all methods::

       artshield evaluate --clean <clean> --protected advdm=... --protected ... --mimicry sdedit ...

4. Evaluate inpainting mimicry with the demo's inpainting variant (``demo-inpaint``; 2 masks per image: the
   surroundings of a centred ellipse, which DiffusionGuard leaves editable by default, and a random rectangle;
   2 seeds each) for ``--inpaint-methods`` under ``--inpaint-purify``.
5. Evaluate LoRA mimicry (the main threat: 8 images, rank 16 + text-encoder LoRA, ``--lora-lr`` 3e-3, ``--lora-steps`` 800,
   generations for 4 artist prompts × 4 seeds) for the methods in ``--lora-methods`` under ``--lora-purify``,
   one training run per ``--train-seeds`` seed (default six; intervals over runs, and each run's own effect),
   generating also at ``--lora-checkpoints``
   (the checkpoint curve; each run is about 5 CPU minutes here).
6. Write ``results.json`` (settings, and per mimicry attack the headline score's conditions, protection
   effects, the protected images' quality and, for SDEdit and inpainting, how far each set's outputs are from the
   clean images' outputs: what the tables show), a montage per attack (``montage_<attack>.png``: what the
   mimic made from the clean and each protected set, per purification of ``--montage-purify``), and print the
   Markdown tables the README quotes (``tables.md``; ``benchmarks/render_readme.py`` renders the same tables
   from ``results.json``). The protect and evaluate commands run in this process (``artshield.cli.main``).

Every step reuses what a previous run already made (protected files are skipped when up to date, evaluation
cells are fingerprinted), so an interrupted run continues where it stopped. The numbers describe the demo world
only (see the README); on a real checkpoint run the same commands with ``--model``.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
from pathlib import Path

import torch

from artshield.cli import main as artshield_main
from artshield.cli_support import ArgumentParser, positive_float, positive_int
from artshield.fileio import write_text_atomic
from artshield.imageio import write_png
from artshield.models.demo import DEMO_WEIGHTS
from artshield.models.demo.world import ARTIST_STYLE, caption, make_dataset

TEXT_TO_IMAGE_METHODS = ("advdm", "sds+", "sds-", "sdst", "mist", "mist-lunet", "photoguard", "photoguard-diffusion", "aspl")
PURIFICATIONS = "none,jpeg75,resize0.5,noise0.05,diffpure"
ARTIST_SUBJECTS = ("tree", "house", "star", "triangle")


def _renderer():
    """``benchmarks/render_readme.py`` (the one formatter of the README's tables), loaded by path."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "render_readme.py"
    spec = importlib.util.spec_from_file_location("render_readme", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(argv: list[str]) -> None:
    """One ``artshield`` command, in this process; a failure stops the proof."""
    print("$ artshield", shlex.join(argv), flush=True)
    status = artshield_main(argv)
    if status != 0:
        raise SystemExit(f"protection_proof: `artshield {argv[0]}` failed (exit {status})")


def protect_all(clean: Path, protected: Path, methods: list[str], strength: str, steps: int | None) -> dict[str, Path]:
    folders = {}
    for method in methods:
        model = "demo-inpaint" if method == "diffusionguard" else "demo"
        out = protected / method
        run(["protect", str(clean), "-o", str(out), "--method", method, "--model", model, "--strength", strength, "-q",
             *(["--steps", str(steps)] if steps else [])])
        folders[method] = out
    return folders


def evaluate(clean: Path, folders: dict[str, Path], output: Path, mimicry: str, purify: str, extra: list[str]) -> dict:
    command = ["evaluate", "--clean", str(clean), "--model", "demo", "--output", str(output),
               "--mimicry", mimicry, "--purify", purify, "--purify-clean", "-q"]
    for method, folder in folders.items():
        command += ["--protected", f"{method}={folder}"]
    run(command + extra)
    return json.loads((output / "report.json").read_text())


def summary(report: dict, mimicry: str) -> dict:
    """What the tables show of one mimicry attack's report: the headline score's conditions and protection
    effects, the purifications, and the protected images' quality summaries."""
    score = report["headline_score"]
    scores = report["mimicry"][mimicry]["scores"][score]
    entry = report["mimicry"][mimicry]
    out = {
        "headline_score": score,
        "purifications": report["purifications"],
        "scores": scores,
        "quality": {label: report["quality"][label]["summary"] for label in scores["protection"]},
        "seconds": report.get("seconds"),
        # What the attack's cells took when they were made (this run may have reused them): None if any cell
        # predates that record.
        "cells_made_in_seconds": cells_made_in_seconds(entry["conditions"]),
    }
    # PhotoGuard's and DiffusionGuard's own measure for edits: how far what the mimic made from each input set is
    # from what it made from the clean images, with the same masks and seeds (lower = the edit was disrupted).
    to_clean = {name: entry["scores"][name]["conditions"] for name in ("psnr_to_clean", "ssim_to_clean")
                if name in entry["scores"]}  # fmt: skip
    if to_clean:
        out["to_clean"] = to_clean
    if entry.get("runs"):
        out["runs"] = entry["runs"]
    if entry.get("curve"):  # the checkpoint curve: both judges' scores at every training step
        out["curve"] = {step: {name: summaries[name] for name in (score, "structure_score") if name in summaries}
                        for step, summaries in entry["curve"].items()}  # fmt: skip
    return out


def cells_made_in_seconds(cells: dict) -> float | None:
    times = [cell.get("made_in_seconds") for cell in cells.values()]
    return None if not times or None in times else round(sum(times), 1)


def montage(eval_dir: Path, report: dict, mimicry: str, purifications: list[str] | None = None) -> torch.Tensor:
    """The report's image grids stacked: the clean inputs, then what the mimic made from each unpurified input set
    (clean first; with a checkpoint curve, the last step's outputs); then, per purification (those of `purifications`
    this attack evaluated; every one evaluated when that is None or leaves none), the clean inputs as purified and
    what the mimic made from each purified set."""
    from artshield.imageio import read_image

    cells = report["mimicry"][mimicry]["conditions"]
    evaluated = list(dict.fromkeys(name.rpartition("+")[2] for name in cells))
    # --montage-purify is checked against every attack's purifications together, so one attack may have none of them.
    purifications = [spec for spec in evaluated if purifications is None or spec in purifications] or evaluated
    purifications.sort(key=lambda spec: spec != "none")
    rows = []
    for spec in purifications:
        if f"clean+{spec}" in cells:
            rows.append(read_image(eval_dir / cells[f"clean+{spec}"]["input_grid"]).rgb[0])
        rows += [read_image(eval_dir / cell["grid"]).rgb[0] for name, cell in cells.items()
                 if name.rpartition("+")[2] == spec]
    width = max(row.shape[-1] for row in rows)
    padded = [torch.nn.functional.pad(row, (0, width - row.shape[-1]), value=1.0) for row in rows]
    return torch.cat(padded, dim=1)


def write_montage(results: Path, report: dict, mimicry: str, args) -> None:
    """The montage of one mimicry attack (the purifications of ``--montage-purify``), as ``montage_<mimicry>.png`` in
    the run's folder and beside ``--write-result``: ``<stem>.png`` for LoRA (the name the committed LoRA montages
    have), else ``<stem>_<mimicry>.png``."""
    shown = args.montage_purify.split(",") if args.montage_purify else None
    picture = montage(results / f"eval_{mimicry}", report, mimicry, shown)
    write_png(results / f"montage_{mimicry}.png", picture)
    if args.write_result:
        path = Path(args.write_result)
        write_png(path.with_suffix(".png") if mimicry == "lora" else path.with_name(f"{path.stem}_{mimicry}.png"), picture)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="protection_proof.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dir")
    parser.add_argument("--images", type=positive_int, default=8, help="paintings of the artist (default 8)")
    parser.add_argument("--size", type=positive_int, default=128, help="their side in pixels (default 128)")
    parser.add_argument("--strength", choices=("low", "medium", "high"), default="medium")
    parser.add_argument("--steps", type=positive_int, help="protection steps instead of the strength's")
    parser.add_argument("--purify", default=PURIFICATIONS, help="purifications for the SDEdit evaluation")
    parser.add_argument("--samples", type=positive_int, default=2,
                        help="seeds per image for SDEdit and inpainting (LoRA: twice as many per prompt)")
    parser.add_argument("--sampling-steps", type=positive_int, help="denoising steps of every mimicry attack (default: the harness's)")
    parser.add_argument("--methods", default=",".join(TEXT_TO_IMAGE_METHODS) + ",diffusionguard")
    parser.add_argument("--lora-methods", default="advdm,photoguard-diffusion,mist,sds+,aspl", help="methods evaluated with LoRA mimicry (slow)")
    parser.add_argument("--lora-purify", default="none,diffpure", help="purifications for the LoRA evaluation")
    parser.add_argument("--lora-steps", type=positive_int, default=800)
    parser.add_argument("--lora-lr", type=positive_float, default=3e-3, help="the LoRA mimic's learning rate (default 3e-3: "
                        "on the demo world v2 it copies the artist in 800 steps, 1e-3 does not)")
    # Six, not three: rerun on a second machine, three-run LoRA effects on world v2 moved by more than their
    # intervals (README, "Under DiffPure, and rerun on another machine").
    parser.add_argument("--train-seeds", default="0,1,2,3,4,5", help="LoRA training runs per cell (default 0,1,2,3,4,5)")
    parser.add_argument("--lora-checkpoints", help="training steps at which each LoRA run also generates (the "
                        "checkpoint curve, e.g. 200,400,600)")
    parser.add_argument("--write-result", metavar="JSON", help="also write results.json here (e.g. a file under "
                        "benchmarks/results/ that the README renders)")
    parser.add_argument("--montage-purify", help="purifications the montages show (default: every one evaluated; "
                        "e.g. none,diffpure keeps a committed montage small)")
    parser.add_argument("--inpaint-methods", default="diffusionguard,photoguard-diffusion,advdm",
                        help="methods evaluated with inpainting mimicry on demo-inpaint")
    parser.add_argument("--inpaint-purify", default="none,jpeg75,diffpure")
    parser.add_argument("--skip-sdedit", action="store_true")
    parser.add_argument("--skip-inpaint", action="store_true")
    parser.add_argument("--skip-lora", action="store_true")
    args = parser.parse_args(argv)
    if args.montage_purify:  # checked now, not after hours of evaluation
        evaluated = {spec for specs in (args.purify, args.inpaint_purify, args.lora_purify) for spec in specs.split(",")}
        unknown = [spec for spec in args.montage_purify.split(",") if spec not in evaluated]
        if unknown:
            parser.error(f"--montage-purify {args.montage_purify!r}: {', '.join(unknown)} is not among the purifications "
                         f"evaluated ({', '.join(sorted(evaluated))})")
    results = Path(args.results_dir)
    clean = results / "clean"
    images, _, _ = make_dataset(args.images, styles=[ARTIST_STYLE], size=(args.size, args.size), seed=1234)
    for i, image in enumerate(images):
        if not (clean / f"{i:02d}.png").is_file():
            write_png(clean / f"{i:02d}.png", torch.from_numpy(image).permute(2, 0, 1).float() / 255.0)

    methods = [m for m in args.methods.split(",") if m]
    if "diffusionguard" in methods and not (DEMO_WEIGHTS / "unet_inpaint").is_dir():
        print("skipping diffusionguard: the demo inpainting variant is not installed", file=sys.stderr)
        methods.remove("diffusionguard")
    folders = protect_all(clean, results / "protected", methods, args.strength, args.steps)
    samples = ["--samples", str(args.samples), *(["--sampling-steps", str(args.sampling_steps)] if args.sampling_steps else [])]
    out = {"settings": {k: v for k, v in vars(args).items() if k != "results_dir"}, "methods": methods, "mimicry": {}}
    if not args.skip_sdedit:
        report = evaluate(clean, folders, results / "eval_sdedit", "sdedit", args.purify, samples)
        out["mimicry"]["sdedit"] = summary(report, "sdedit")
        write_montage(results, report, "sdedit", args)
    if not args.skip_inpaint and (DEMO_WEIGHTS / "unet_inpaint").is_dir():
        inpaint_folders = {m: folders[m] for m in args.inpaint_methods.split(",") if m in folders}
        if inpaint_folders:
            report = evaluate(clean, inpaint_folders, results / "eval_inpaint", "inpaint", args.inpaint_purify, samples)
            out["mimicry"]["inpaint"] = summary(report, "inpaint")
            write_montage(results, report, "inpaint", args)
    if not args.skip_lora:
        lora_folders = {m: folders[m] for m in args.lora_methods.split(",") if m in folders}
        if lora_folders:
            prompts = [arg for s in ARTIST_SUBJECTS for arg in ("--prompt", caption(ARTIST_STYLE, s))]
            report = evaluate(clean, lora_folders, results / "eval_lora", "lora", args.lora_purify,
                              ["--instance-prompt", f"a painting in {ARTIST_STYLE} style", *prompts,
                               "--lora-steps", str(args.lora_steps), "--lora-lr", str(args.lora_lr),
                               "--train-seeds", args.train_seeds,
                               *(["--lora-checkpoints", args.lora_checkpoints] if args.lora_checkpoints else []),
                               *samples[2:],
                               "--samples", str(2 * args.samples)])  # fmt: skip
            out["mimicry"]["lora"] = summary(report, "lora")
            write_montage(results, report, "lora", args)
    # As the harness's report.json, which may hold NaN (e.g. a score undefined for a condition).
    write_text_atomic(results / "results.json", json.dumps(out, indent=2) + "\n", what="proof results")
    if args.write_result:
        write_text_atomic(args.write_result, json.dumps(out, indent=2) + "\n", what="proof results")
    renderer = _renderer()
    # The README's order: SDEdit, LoRA, inpainting.
    tables = [renderer.proof_table(out, m) for m in ("sdedit", "lora", "inpaint") if m in out["mimicry"]]
    tables += [renderer.proof_curve_table(out, m) for m in out["mimicry"] if "curve" in out["mimicry"][m]]
    text = "\n\n".join(tables) + "\n"
    write_text_atomic(results / "tables.md", text, what="tables")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
