"""Proof of efficacy on the demo world: every protection method × purifications × mimicry, with intervals.

    python examples/protection_proof.py results/proof                     # all steps (about 2 CPU hours)
    python examples/protection_proof.py results/proof --lora-methods advdm,mist --skip-sdedit

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
5. Evaluate LoRA mimicry (the main threat: 8 images, rank 16 + text-encoder LoRA, lr 1e-3, ``--lora-steps`` 800,
   generations for 4 artist prompts × 4 seeds) for the methods in ``--lora-methods`` under ``--lora-purify``
   (each cell is a LoRA training run, about 5 CPU minutes here).
6. Print the Markdown tables the README and the issue note quote (``tables.md`` in the results folder).

Every step reuses what a previous run already made (protected files are skipped when up to date, evaluation
cells are fingerprinted), so an interrupted run continues where it stopped. The numbers describe the demo world
only (see the README); on a real checkpoint run the same commands with ``--model``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from artshield.imageio import write_png
from artshield.models.demo import DEMO_WEIGHTS
from artshield.models.demo.world import ARTIST_STYLE, caption, make_dataset

TEXT_TO_IMAGE_METHODS = ("advdm", "sds+", "sds-", "sdst", "mist", "mist-lunet", "photoguard", "photoguard-diffusion", "aspl")
PURIFICATIONS = "none,jpeg75,resize0.5,noise0.05,diffpure"
ARTIST_SUBJECTS = ("tree", "house", "star", "triangle")


def run(command: list[str]) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def protect_all(clean: Path, protected: Path, methods: list[str]) -> dict[str, Path]:
    folders = {}
    for method in methods:
        model = "demo-inpaint" if method == "diffusionguard" else "demo"
        out = protected / method
        run([sys.executable, "-m", "artshield", "protect", str(clean), "-o", str(out), "--method", method,
             "--model", model, "--strength", "medium", "-q"])
        folders[method] = out
    return folders


def evaluate(clean: Path, folders: dict[str, Path], output: Path, mimicry: str, purify: str, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "artshield", "evaluate", "--clean", str(clean), "--model", "demo", "--output", str(output),
               "--mimicry", mimicry, "--purify", purify, "--purify-clean", "-q"]
    for method, folder in folders.items():
        command += ["--protected", f"{method}={folder}"]
    run(command + extra)
    return json.loads((output / "report.json").read_text())


def table(report: dict, mimicry: str) -> str:
    """Method × purification → headline score (interval); the worst case, plain and net of the purification."""
    score = report["headline_score"]
    summary = report["mimicry"][mimicry]["scores"][score]
    conditions = summary["conditions"]
    specs = report["purifications"]
    clean = conditions["clean+none"]
    lines = [f"{mimicry}: {score} of the mimic's outputs (lower = mimicry spoiled); clean images **{clean['value']:.3f}** "
             f"[{clean['ci95'][0]:.3f}, {clean['ci95'][1]:.3f}]", "",
             "| images | PSNR | SSIM | " + " | ".join(specs) + " | worst-case effect | net of purification |",
             "|---|---|---|" + "---|" * len(specs) + "---|---|",
             "| clean | | | " + " | ".join(f"{conditions[f'clean+{p}']['value']:.3f}" if f"clean+{p}" in conditions else ""
                                       for p in specs) + " | | |"]  # fmt: skip
    for label, protection in summary["protection"].items():
        quality = report["quality"][label]["summary"]
        cells = [f"{p['value']:.3f} [{p['ci95'][0]:.2f}, {p['ci95'][1]:.2f}]" for p in protection["per_purification"].values()]
        worst = protection["worst_case"]
        net = protection.get("worst_case_vs_purified_clean")

        def effect(entry: dict) -> str:
            mark = " ✓" if entry["protects"] else ""
            return (f"{entry['effect']:+.3f} [{entry['effect_ci95'][0]:+.3f}, {entry['effect_ci95'][1]:+.3f}] "
                    f"({entry['purification']}){mark}")

        lines.append(f"| {label} | {quality['psnr_db']['mean']:.1f} | {quality['ssim']['mean']:.3f} | " + " | ".join(cells)
                     + f" | {effect(worst)} | {effect(net) if net else '–'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dir")
    parser.add_argument("--methods", default=",".join(TEXT_TO_IMAGE_METHODS) + ",diffusionguard")
    parser.add_argument("--lora-methods", default="advdm,photoguard-diffusion,mist,sds+,aspl", help="methods evaluated with LoRA mimicry (slow)")
    parser.add_argument("--lora-purify", default="none,diffpure", help="purifications for the LoRA evaluation")
    parser.add_argument("--lora-steps", type=int, default=800)
    parser.add_argument("--inpaint-methods", default="diffusionguard,photoguard-diffusion,advdm",
                        help="methods evaluated with inpainting mimicry on demo-inpaint")
    parser.add_argument("--inpaint-purify", default="none,jpeg75,diffpure")
    parser.add_argument("--skip-sdedit", action="store_true")
    parser.add_argument("--skip-inpaint", action="store_true")
    parser.add_argument("--skip-lora", action="store_true")
    args = parser.parse_args(argv)
    results = Path(args.results_dir)
    clean = results / "clean"
    images, _, _ = make_dataset(8, styles=[ARTIST_STYLE], size=(128, 128), seed=1234)
    for i, image in enumerate(images):
        if not (clean / f"{i:02d}.png").is_file():
            write_png(clean / f"{i:02d}.png", torch.from_numpy(image).permute(2, 0, 1).float() / 255.0)

    methods = [m for m in args.methods.split(",") if m]
    if "diffusionguard" in methods and not (DEMO_WEIGHTS / "unet_inpaint").is_dir():
        print("skipping diffusionguard: the demo inpainting variant is not installed", file=sys.stderr)
        methods.remove("diffusionguard")
    folders = protect_all(clean, results / "protected", methods)
    tables = []
    if not args.skip_sdedit:
        report = evaluate(clean, folders, results / "eval_sdedit", "sdedit", PURIFICATIONS, ["--samples", "2"])
        tables.append(table(report, "sdedit"))
    if not args.skip_inpaint and (DEMO_WEIGHTS / "unet_inpaint").is_dir():
        inpaint_folders = {m: folders[m] for m in args.inpaint_methods.split(",") if m in folders}
        report = evaluate(clean, inpaint_folders, results / "eval_inpaint", "inpaint", args.inpaint_purify, ["--samples", "2"])
        tables.append(table(report, "inpaint"))
    if not args.skip_lora:
        lora_folders = {m: folders[m] for m in args.lora_methods.split(",") if m in folders}
        prompts = [arg for s in ARTIST_SUBJECTS for arg in ("--prompt", caption(ARTIST_STYLE, s))]
        report = evaluate(clean, lora_folders, results / "eval_lora", "lora", args.lora_purify,
                          ["--instance-prompt", f"a painting in {ARTIST_STYLE} style", *prompts, "--samples", "4",
                           "--lora-steps", str(args.lora_steps)])  # fmt: skip
        tables.append(table(report, "lora"))
    text = "\n\n".join(tables) + "\n"
    (results / "tables.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
