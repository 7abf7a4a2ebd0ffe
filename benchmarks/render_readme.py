"""Render the README's tables of measured numbers from the committed result files, so they cannot drift.

Every table of figures in README.md sits between ``<!-- table:NAME -->`` and ``<!-- /table -->``; NAME is a
key of :data:`BLOCKS`, which names the result file (written by a benchmark or example script, never by hand)
and the function that formats it::

    python benchmarks/render_readme.py                  # print every block whose result file is committed
    python benchmarks/render_readme.py engine-overhead  # print one block
    python benchmarks/render_readme.py proof-sdedit --source results/proof/results.json
    python benchmarks/render_readme.py --check          # exit 1 when a README block differs from its rendering
    python benchmarks/render_readme.py --write          # rewrite the README's blocks in place

Blocks and their sources:

* ``engine-overhead``: ``benchmarks/results/engine_overhead.json`` (``benchmarks/engine_overhead.py``);
* ``protect-methods``: ``benchmarks/results/protect_methods.json`` (``benchmarks/protect_methods.py``);
* ``protect-methods-diffusionguard``: ``benchmarks/results/protect_methods_diffusionguard.json``
  (``benchmarks/protect_methods.py --methods advdm diffusionguard``: DiffusionGuard on ``demo-inpaint``);
* ``proof-sdedit``, ``proof-lora``, ``proof-inpaint``: ``benchmarks/results/protection_proof.json``, the
  ``results.json`` that ``examples/protection_proof.py`` writes (copy it there to commit it);
* ``proof-lora-runs``: ``benchmarks/results/protection_proof_lora_runs.json`` (world v1);
* ``proof-v2-sdedit``: ``benchmarks/results/protection_proof_v2.json``, ``proof-v2-inpaint``:
  ``benchmarks/results/protection_proof_inpaint_v2.json`` (rerun on the 6000-step inpainting twin), and
  ``proof-v2-lora-runs``: ``benchmarks/results/protection_proof_lora_runs_v2.json`` (``examples/protection_proof.py
  --write-result``, on the shipped world v2; the commands are in the README); ``proof-v2-lora-purified``:
  ``benchmarks/results/protection_proof_lora_purified_v2.json`` (the LoRA mimic under purification, both judges),
  ``proof-v2-lora-diffpure``: ``benchmarks/results/protection_proof_lora_diffpure_v2.json`` (the same under DiffPure),
  ``proof-v2-lora-six-runs``: ``benchmarks/results/protection_proof_lora_six_runs_v2.json`` (every LoRA cell over six
  training runs on one machine), ``proof-v2-lora-purified-six-runs``:
  ``benchmarks/results/protection_proof_lora_purified_six_runs_v2.json`` (PhotoGuard-diffusion under every
  purification over six training runs, both judges, each run's effect);
* ``style-judges``: ``benchmarks/results/style_judges.json`` (``benchmarks/style_judges.py``);
* ``demo-world``, ``demo-world-v1``: ``benchmarks/results/demo_world.json`` (``benchmarks/demo_world.py``, the
  shipped model) and ``demo_world_v1.json`` (the same script on the world-v1 weights shipped before 2026-12-03);
* ``lora-mimicry``: ``benchmarks/results/lora_artist_mimicry_v2.json`` (``examples/lora_artist_mimicry.py``'s
  ``results.json``);
* ``memorization-detection``, ``memorization-prune``: ``benchmarks/results/memorization_demo.json``
  (``examples/memorization_demo.py``'s ``results.json``), and ``memorization-heavy-*`` from
  ``memorization_demo_heavy.json`` (the same script with 40 copies of each memorized image);
* ``bayesian-subject``, ``bayesian-artist``, ``bayesian-low-lr``: ``benchmarks/results/bayesian_vs_plain_*.json``
  (``examples/bayesian_vs_plain.py``'s ``results.json``: its defaults, ``--target artist --method lora``, and
  ``--learning_rate 5e-5 --max_train_steps 1200 --validation_steps 50``);
* ``fl-proof``: ``benchmarks/results/fl_proof.json`` (``examples/fl_proof.py`` writes it there itself);
* ``fl-aggregation``: ``benchmarks/results/fl_aggregation.json`` (``benchmarks/fl_aggregation.py``);
* ``sd-scale``: ``benchmarks/results/sd_scale.json`` (``benchmarks/sd_scale.py``);
* ``authenticate-proof``: ``benchmarks/results/authenticate_proof.json`` (``examples/authenticate_proof.py
  --write-result benchmarks/results/authenticate_proof.json``);
* ``authenticate-proof-latent``: ``benchmarks/results/authenticate_proof_latent.json`` (the same script with
  ``--t-max 200 --suspect-recovery --variance-draws 0``, the same suspects);
* ``authenticate-proof-v1``, ``authenticate-proof-latent-v1``: the same two runs on world v1 (the demo weights
  shipped before 2026-12-03), ``authenticate_proof_v1.json`` and ``authenticate_proof_latent_v1.json``;
* ``authenticate-pair``: ``benchmarks/results/authenticate_pair.json`` (``benchmarks/authenticate_pair.py``).

A block whose result file is not committed cannot be in the README (the test refuses it).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from artshield.cli_support import ArgumentParser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"(<!-- table:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


# --------------------------------------------------------------------------------------------------
# formatting, one function per kind of result file
# --------------------------------------------------------------------------------------------------


def engine_overhead_table(data: dict) -> str:
    """``benchmarks/engine_overhead.py``'s JSON: ms per step through artshield and a bare loop, and the ratio."""
    lines = [
        f"Model `{data['model']}` on {data['device']} ({data['dtype']}, torch {data['torch']}, {data['threads']} "
        f"thread{'s' * (data['threads'] != 1)}), median of {data['repeats']} alternating runs; target ratio "
        f"≤ {data['target_ratio']:.2f}" + (f"; allocator: {data['allocator']}." if "allocator" in data else "."),
        "",
        "| resolution | steps | artshield ms/step | bare PyTorch ms/step | ratio |",
        "|---|---|---|---|---|",
    ]
    for row in data["rows"]:
        lines.append(f"| {row['resolution']}² | {row['steps']} | {row['artshield_s_per_step'] * 1000:.1f} | "
                     f"{row['bare_s_per_step'] * 1000:.1f} | {row['ratio']:.3f} |")
    if data.get("note"):
        lines += ["", f"Note: {data['note']}."]
    return "\n".join(lines)


def protect_methods_table(data: dict) -> str:
    """``benchmarks/protect_methods.py``'s JSON: time per step and memory of each method, as ratios to AdvDM."""
    rows = data["rows"]
    alternating = any("advdm_s_per_step" in row for row in rows)
    timing = ("AdvDM and the method alternating in one process" if alternating
              else "each method in its own processes (the script's earlier timing)")
    budget = data["budget"]
    lines = [
        f"Model `{data['model']}`, torch {data['torch']}, OMP_NUM_THREADS={data.get('omp_num_threads') or 'unset'}; "
        f"{data['steps']} steps of {budget['norm']} {budget['eps'] * 255:.0f}/255, step {budget['step_size'] * 255:g}/255, "
        f"{budget['samples_per_step']} sample per step; medians over {data['rounds']} rounds of {data['repeats']} "
        f"timed runs; time ratio: {timing}.",
        "",
        "| method | model | resolution | ms/step | time / AdvDM | peak RSS MB | MB above baseline | memory / AdvDM |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def ratio(row: dict, key: str) -> str:
        return f"{row[key]:.2f}" if key in row else "–"

    for row in rows:
        if "s_per_step" not in row:
            reason = row.get("skipped") or row.get("error") or "no measurement"
            lines.append(f"| {row['method']} | {row.get('model', '')} | | {reason} | | | | |")
            continue
        lines.append(
            f"| {row['method']} | {row['model']} | {row['resolution']}² | {row['s_per_step'] * 1000:.1f} | "
            f"{ratio(row, 'time_ratio')} | {row['peak_rss_mb']:.0f} | {row['peak_above_baseline_mb']:.1f} | "
            f"{ratio(row, 'memory_ratio')} |"
        )
    if data.get("note"):
        lines += ["", f"Note: {data['note']}."]
    return "\n".join(lines)


def proof_table(results: dict, mimicry: str) -> str:
    """One mimicry attack of ``examples/protection_proof.py``'s ``results.json``: method × purification →
    headline score (interval); the worst case, plain and net of the purification."""
    entry = results["mimicry"][mimicry]
    table = summary_table(f"{mimicry}: {entry['headline_score']} of the mimic's outputs (lower = mimicry spoiled)",
                          entry["scores"], entry["purifications"], entry["quality"])
    if "psnr_to_clean" in entry.get("to_clean", {}):
        table += "\n\n" + to_clean_table(entry["to_clean"]["psnr_to_clean"], entry["purifications"], entry["quality"])
    return table


def to_clean_table(conditions: dict, specs: list[str], quality: dict) -> str:
    """PSNR of what the mimic made from each input set against what it made from the clean images (same masks and
    seeds): the edit measure of PhotoGuard and DiffusionGuard. Beside it the protected images' own PSNR, the
    distance an edit that merely redraws the perturbation would keep."""
    lines = ["PSNR (dB) of what the mimic made from each set against what it made from the clean images, same masks "
             "and seeds (lower = the edit was disrupted); mean [95 % bootstrap]:", "",
             "| images | the images' own PSNR | " + " | ".join(specs) + " |",
             "|---|---|" + "---|" * len(specs)]  # fmt: skip
    labels = dict.fromkeys(name.rpartition("+")[0] for name in conditions)
    for label in labels:
        own = f"{quality[label]['psnr_db']['mean']:.1f}" if label in quality else ""
        cells = []
        for spec in specs:
            cell = conditions.get(f"{label}+{spec}")
            cells.append(f"{cell['value']:.1f} [{cell['ci95'][0]:.1f}, {cell['ci95'][1]:.1f}]" if cell else "")
        lines.append(f"| {label} | {own} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def proof_judges_table(results: dict, mimicry: str) -> str:
    """Every judge's method × purification table at the last checkpoint of a mimicry attack run over training
    runs (``examples/protection_proof.py --train-seeds … --lora-checkpoints …``)."""
    entry = results["mimicry"][mimicry]
    step = max(entry["curve"], key=int)
    return "\n\n".join(summary_table(f"{mimicry}, step {step}: {score} of the mimic's outputs (lower = mimicry spoiled)",
                                     summary, entry["purifications"], entry["quality"])
                       for score, summary in entry["curve"][step].items())  # fmt: skip


def summary_table(title: str, summary: dict, specs: list[str], quality: dict) -> str:
    """One score's table: the clean images' score under each purification, then per protected set its image
    quality, its score under each purification (interval), and the worst-case effect, plain and net of the
    purification."""
    conditions = summary["conditions"]
    clean = conditions["clean+none"]
    lines = [f"{title}; clean images **{clean['value']:.3f}** [{clean['ci95'][0]:.3f}, {clean['ci95'][1]:.3f}]", "",
             "| images | PSNR | SSIM | " + " | ".join(specs) + " | worst-case effect | net of purification |",
             "|---|---|---|" + "---|" * len(specs) + "---|---|",
             "| clean | | | " + " | ".join(f"{conditions[f'clean+{p}']['value']:.3f}" if f"clean+{p}" in conditions else ""
                                       for p in specs) + " | | |"]  # fmt: skip

    def effect(cell: dict) -> str:
        mark = " ✓" if cell["protects"] else ""
        return (f"{cell['effect']:+.3f} [{cell['effect_ci95'][0]:+.3f}, {cell['effect_ci95'][1]:+.3f}] "
                f"({cell['purification']}){mark}")

    for label, protection in summary["protection"].items():
        image_quality = quality[label]
        cells = [f"{p['value']:.3f} [{p['ci95'][0]:.2f}, {p['ci95'][1]:.2f}]" for p in protection["per_purification"].values()]
        net = protection.get("worst_case_vs_purified_clean")
        lines.append(f"| {label} | {image_quality['psnr_db']['mean']:.1f} | {image_quality['ssim']['mean']:.3f} | "
                     + " | ".join(cells) + f" | {effect(protection['worst_case'])} | {effect(net) if net else '–'} |")
    return "\n".join(lines)


def proof_curve_table(results: dict, mimicry: str) -> str:
    """The checkpoint curve of one mimicry attack of ``examples/protection_proof.py``'s results: per judge and
    training step, the score of what the mimic made from clean and from each protected set (unpurified), and each
    set's worst-case effect over the purifications; intervals over training runs, then outputs."""
    entry = results["mimicry"][mimicry]
    curve, labels, runs = entry["curve"], list(entry["scores"]["protection"]), entry.get("runs", [])
    steps = sorted(curve, key=int)
    lines = [f"{mimicry} over {len(runs) or 1} training run{'s' * (len(runs) != 1)} ({', '.join(runs) or 'one seed'}), "
             f"the same generation noise at every step; effect = worst case over {', '.join(entry['purifications'])} "
             "(✓ = interval above 0); mean [95 % bootstrap over runs, then outputs]."]  # fmt: skip

    def value(cell: dict) -> str:
        return f"{cell['value']:.3f} [{cell['ci95'][0]:.2f}, {cell['ci95'][1]:.2f}]"

    for score in dict.fromkeys(name for step in steps for name in curve[step]):
        lines += ["", f"{score}:", "",
                  "| step | clean | " + " | ".join(labels) + " | " + " | ".join(f"effect: {label}" for label in labels) + " |",
                  "|---|---|" + "---|" * (2 * len(labels))]  # fmt: skip
        for step in steps:
            summary = curve[step].get(score)
            if summary is None:
                continue
            protected = [value(summary["conditions"][f"{label}+none"]) for label in labels]
            effects = []
            for label in labels:
                worst = summary["protection"][label]["worst_case"]
                mark = " ✓" if worst["protects"] else ""
                effects.append(f"{worst['effect']:+.3f} [{worst['effect_ci95'][0]:+.3f}, {worst['effect_ci95'][1]:+.3f}]{mark}")
            lines.append(f"| {step} | {value(summary['conditions']['clean+none'])} | " + " | ".join(protected) + " | "
                         + " | ".join(effects) + " |")
    return "\n".join(lines)


def proof_per_run_table(results: dict, mimicry: str) -> str:
    """Each training run's own effect (the clean images' score, unpurified, minus the protected images' score
    under each purification; same generation noise) at the last step of the checkpoint curve, per judge: whether
    an effect's sign holds from run to run. A row per protected set, and per purification when there are several."""
    entry = results["mimicry"][mimicry]
    step = max(entry["curve"], key=int)
    runs = entry.get("runs", [])
    purified = entry.get("purifications", ["none"]) != ["none"]
    compared = "clean, unpurified − protected under each purification" if purified else "clean − protected, unpurified"
    lines = [f"{mimicry}, step {step}: each training run's effect ({compared}; > 0 = the protection lowered the score "
             "in that run)."]
    for score, summary in entry["curve"][step].items():
        lines += ["", f"{score}:", "", "| images | " + " | ".join(runs) + " | runs with effect > 0 |",
                  "|---|" + "---|" * (len(runs) + 1)]
        for label, protection in summary.get("protection", {}).items():
            for purification, cell in protection["per_purification"].items():
                per_run = cell.get("effect_per_run", {})
                values = [per_run.get(run) for run in runs]
                positive = sum(v > 0 for v in values if v is not None)
                cells = ["" if v is None else f"{v:+.2f}" for v in values]
                name = label if purification == "none" else f"{label} + {purification}"
                lines.append(f"| {name} | " + " | ".join(cells) + f" | {positive} of {len(runs)} |")
    return "\n".join(lines)


def style_judges_table(data: dict) -> str:
    """``benchmarks/style_judges.py``'s JSON: both demo judges on fresh renders, VAE round trips, colour-swapped
    renders and (when given) what mimics made."""
    judges = data["judges"]
    names = {"style_metric": "style metric (`artist_score`)", "structure_judge": "structure judge (`structure_score`)"}
    first = judges[next(iter(judges))]
    sets = list(first["sets"])
    lines = [f"{data['per_style']} fresh renders per style at {data['size']} px (seed {data['seed']}, unseen by both judges); "
             f"artist = `{data['artist']}`. AUC: artist vs the 7 other styles. Other columns: mean artist probability "
             "(share called the artist, p > 0.5).", "",
             "| judge | AUC renders | AUC VAE round trip | artist renders | other styles | " + " | ".join(sets) + " |",
             "|---|---|---|---|---|" + "---|" * len(sets)]  # fmt: skip

    def cell(summary: dict) -> str:
        return f"{summary['mean']:.2f} ({summary['called_artist'] * 100:.0f} %)"

    for name, entry in judges.items():
        lines.append(f"| {names.get(name, name)} | {entry['auc']['renders']:.3f} | {entry['auc']['vae']:.3f} | "
                     f"{cell(entry['artist_images']['renders'])} | {cell(entry['other_images']['renders'])} | "
                     + " | ".join(cell(entry["sets"][label]) for label in sets) + " |")
    return "\n".join(lines)


def demo_world_table(data: dict) -> str:
    """``benchmarks/demo_world.py``'s JSON: the VAE round trip per style, and the inpainting twin's fills."""

    def cell(entry: dict) -> str:
        return f"{entry['mean']:.1f} [{entry['ci'][0]:.1f}, {entry['ci'][1]:.1f}]"

    vae = data["vae_round_trip_psnr_db"]
    styles = list(vae["per_style"])
    lines = [f"Model `{data['model']}`; fresh renders at {data['size']} px (seed {data['seed']}, unseen in training), "
             f"{vae['per_style'][styles[0]]['n']} per style; PSNR in dB, mean [95 % bootstrap over images]; "
             f"artist = `{data['artist']}`.", "",
             "| VAE round trip | " + " | ".join(styles) + " | training styles' mean | artist − that mean |",
             "|---|" + "---|" * (len(styles) + 2),
             "| PSNR | " + " | ".join(cell(vae["per_style"][s]) for s in styles)
             + f" | {vae['training_styles_mean']:.1f} | {vae['artist_minus_training_mean']:+.1f} |"]  # fmt: skip
    inpainting = data.get("inpainting")
    if inpainting:
        gains, agreement = inpainting["gain_over_baseline_db"], inpainting.get("same_style_as_image", {})
        columns = ["fill", "masked-region PSNR",
                   "gain over the baseline told the same prompt" if any("baseline" in g for g in gains.values())
                   else "gain over the prompt-only baseline"]  # older results compared every fill with that one
        if "coarse_scale" in inpainting:
            columns.append(f"at 1/{inpainting['coarse_scale']} size: PSNR, gain")
        if agreement:
            columns.append("same style as the image: style metric / structure judge")
        header = "| " + " | ".join(columns) + " |"
        lines += ["", f"Inpainting ({inpainting['held_out_images']} held-out renders of the training styles, random "
                  f"masks covering {inpainting['mask_coverage'] * 100:.0f} % on average; {inpainting['sampler']}):", "",
                  header, "|" + "---|" * (header.count("|") - 1)]

        def signed(gain: dict) -> str:
            return f"{gain['mean']:+.2f} [{gain['ci'][0]:+.2f}, {gain['ci'][1]:+.2f}]"

        def gain_cell(gain: dict | None) -> str:
            if not gain:
                return ""
            if gain.get("baseline", "prompt-only baseline") != "prompt-only baseline":
                return f"{signed(gain)} (over the {gain['baseline'].split(' (')[0]})"
            return signed(gain)

        for label, entry in inpainting["psnr_masked_region_db"].items():
            row = f"| {label} | {cell(entry)} | {gain_cell(gains.get(label))} |"
            if "coarse_scale" in inpainting:
                coarse_gain = inpainting["coarse_gain_over_baseline_db"].get(label)
                row += (f" {cell(inpainting['coarse_psnr_masked_region_db'][label])}"
                        + (f", {signed(coarse_gain)}" if coarse_gain else "") + " |")
            if agreement:
                judged = agreement[label]
                row += " " + " / ".join(f"{judged[j]['mean']:.2f} [{judged[j]['ci'][0]:.2f}, {judged[j]['ci'][1]:.2f}]"
                                        for j in ("style_metric", "structure_judge")) + " |"
            lines.append(row)
    attack = data.get("encoder_attack")
    if attack:
        lines += ["", f"How attackable the encoder is ({attack['method']} encoder attack, {attack['strength']} budget, "
                  f"{attack['steps']} steps, {attack['images']} artist renders): the latent moves by "
                  f"{attack['latent_relative_shift']['mean']:.2f} [{attack['latent_relative_shift']['ci'][0]:.2f}, "
                  f"{attack['latent_relative_shift']['ci'][1]:.2f}] of its norm (mean [95 % bootstrap over images]); what the decoder draws from the "
                  f"protected image is {cell(attack['decoded_psnr_protected_vs_clean_db'])} dB PSNR from what it "
                  f"draws from the clean one (the perturbation itself: "
                  f"{cell(attack['image_psnr_protected_vs_clean_db'])} dB)."]  # fmt: skip
    room = data.get("diffusionguard_headroom")
    if room:
        def pct(entry: dict) -> str:
            return f"{entry['mean']:+.2f} % [{entry['ci'][0]:+.2f}, {entry['ci'][1]:+.2f}]"

        share = room["masked_latents_share_of_prediction"]
        latent = room["latent_attack_change_pct_by_relative_radius"]
        lines += ["", f"How far DiffusionGuard's objective moves on the inpainting twin ({room['images']} artist renders, "
                  f"its default mask, t = {room['timestep']}, empty prompt, {room['noise_draws']} fixed noise draws): "
                  f"the objective is {room['objective']['mean']:.1f}"
                  + (f"; the masked-image latents decide {share['mean']:.2f} [{share['ci'][0]:.2f}, {share['ci'][1]:.2f}] "
                     "of the prediction (its relative change when another image's latents replace them)" if share else "")
                  + f"; DiffusionGuard ({attack['strength'] if attack else ''} budget) moves it by "
                  f"{pct(room['diffusionguard_pixel_attack_change_pct'])}; an L2 attack on the masked-image latents "
                  "themselves moves it by " + ", ".join(f"{pct(v)} at a radius of {k} of their norm" for k, v in latent.items())
                  + "."]  # fmt: skip
    return "\n".join(lines)


def lora_mimicry_table(data: dict) -> str:
    """``examples/lora_artist_mimicry.py``'s ``results.json``: artist score before and after the LoRA."""
    scores, training = data["artist_score"], data["training"]

    def cell(entry: dict) -> str:
        return f"{entry['mean']:.3f} [{entry['ci95'][0]:.3f}, {entry['ci95'][1]:.3f}]"

    return "\n".join([
        f"LoRA on {training['images']} {data['artist_style']} images, rank {training['rank']}"
        f"{' + text-encoder LoRA' * bool(training['train_text_encoder'])}, {training['steps']} steps at lr "
        f"{training['learning_rate']:g}, {training['wall_seconds']:.0f} s; artist score (mean [95 % bootstrap]):",
        "",
        "| prompts | images | before | after |",
        "|---|---|---|---|",
        f"| the artist's | {scores['artist_prompts_after']['n']} | {cell(scores['artist_prompts_before'])} | "
        f"{cell(scores['artist_prompts_after'])} |",
        f"| control (other styles) | {scores['control_prompts_after']['n']} | {cell(scores['control_prompts_before'])} | "
        f"{cell(scores['control_prompts_after'])} |",
    ])  # fmt: skip


def bayesian_vs_plain_table(data: dict) -> str:
    """``examples/bayesian_vs_plain.py``'s ``results.json``: each mode's peak, final value and deepest drop of the
    fidelity and style scores over seeds, and the paired Bayesian-minus-plain difference."""
    settings, summary, paired = data["settings"], data["summary"], data["bayesian_minus_plain"]
    seeds = settings["train_seeds"]
    lines = [f"{settings['method']} on the {settings['target']} target, {settings['max_train_steps']} steps at lr "
             f"{settings['learning_rate']:g}, "
             f"seeds {', '.join(map(str, seeds))}; mean ± s.d. over seeds; the difference is paired by seed, "
             "[95 % bootstrap over seeds], and the number of seeds where the Bayesian run is higher.", "",
             "| score | statistic | plain | bayesian | bayesian − plain | higher in |", "|---|---|---|---|---|---|"]
    rows = [("dct_similarity", "peak"), ("dct_similarity", "final"), ("dct_similarity", "deepest_drop_below_running_peak"),
            ("style_score", "final"), ("nn_ssim", "final"), ("hf_energy_ratio", "peak")]
    labels = {"dct_similarity": "fidelity (DCT similarity)", "style_score": "style score",
              "nn_ssim": "copying (nearest-instance SSIM)", "hf_energy_ratio": "high-frequency ratio",
              "deepest_drop_below_running_peak": "deepest drop below running peak"}  # fmt: skip
    for key, stat in rows:
        if stat in paired.get(key, {}):
            label, stat_label = labels[key], labels.get(stat, stat)
            plain, bayes, diff = summary["plain"][key][stat], summary["bayesian"][key][stat], paired[key][stat]
            ci = f" [{diff['ci'][0]:+.3f}, {diff['ci'][1]:+.3f}]" if diff["ci"] else ""
            lines.append(f"| {label} | {stat_label} | {plain['mean']:.3f} ± {plain['std']:.3f} | "
                         f"{bayes['mean']:.3f} ± {bayes['std']:.3f} | {diff['mean']:+.3f}{ci} | "
                         f"{diff['bayesian_higher_in']} of {diff['n']} |")
    return "\n".join(lines)


def memorization_detection_table(data: dict) -> str:
    """``examples/memorization_demo.py``'s ``results.json``: detection on the original and over-fitted model."""
    columns = [data["detection"][name] for name in ("original", "overfit")]

    def auc(against: str):
        def text(d: dict) -> str:
            low, high = d[f"auc_vs_{against}_ci95"]
            return f"{d[f'auc_vs_{against}']:.2f} [{low:.2f}, {high:.2f}]"
        return text

    rows = [
        ("memorized prompts' generations nearest their own training image", lambda d: f"{d['copies_own_image']:.2f}"),
        ("Wen et al. metric: memorized / controls / world captions", lambda d: " / ".join(
            f"{d[k]:.2f}" for k in ("mean_metric_memorized", "mean_metric_controls", "mean_metric_world_captions"))),
        ("detection AUC vs controls [95 % bootstrap]", auc("controls")),
        ("detection AUC vs world captions [95 % bootstrap]", auc("world_captions")),
    ]  # fmt: skip
    lines = ["| | original demo model | over-fitted |", "|---|---|---|"]
    lines += [f"| {label} | " + " | ".join(fmt(d) for d in columns) + " |" for label, fmt in rows]
    return "\n".join(lines)


def memorization_prune_table(data: dict) -> str:
    """``examples/memorization_demo.py``'s ``results.json``: memorization and utility at each pruning ratio."""

    def weights(row: dict) -> str:
        count = f"{row['pruned_weights']:,}".replace(",", " ")
        return count if not row["pruned_weights"] else f"{count} ({100 * row['fraction_of_located_layers']:.2g} %)"

    from artshield.finetune.memorization import LAYER_CHOICES

    def location(row: dict) -> str:  # results written before --sweep_layers located in ff.net.2 only
        return " + ".join(f"`{LAYER_CHOICES[name]}`" for name in row.get("layers", ["ffn2"])) if row["ratio"] else "—"

    sweep = data["prune_sweep"]
    rows = [sweep["before"], *sweep["after"]]
    located = len({location(row) for row in sweep["after"]}) > 1  # a column only when the sweep compares places
    lines = ["| " + ("layers | " if located else "") + "base | ratio | weights zeroed | metric | own-image rate | "
             "style accuracy | SSIM to original |", "|---|---|---|---|---|---|---|" + ("---|" if located else "")]
    for row in rows:
        ssim, ratio = row["utility_ssim_to_original"], row["ratio"]
        ssim_text = "–" if ssim is None else "1" if ssim == 1 else f"{ssim:.2f}"
        lines.append(
            ("| " + location(row) + " " if located else "")
            + f"| {row['base_prompts'] or '—'} | {f'{100 * ratio:g} %' if ratio else '0'} | {weights(row)} | "
            f"{row['memorization_metric']:.2f} | {row['copies_own_image']:.2f} | {row['utility_style_accuracy']:.2f} | "
            f"{ssim_text} |"
        )
    return "\n".join(lines)


def fl_proof_table(data: dict) -> str:
    """``examples/fl_proof.py``'s JSON: the sweep report's tables (the same Markdown as ``artshield fl sweep``
    writes) under a line naming the setting, and the goal line for LIE and min-max."""
    from artshield.fl_bridge.report import markdown

    config = data["config"]
    fed, part, attack = config["federation"], config["partition"], config["attack"]
    split = f"Dirichlet α = {part['alpha']:g}" if part["scheme"] == "dirichlet" else part["scheme"]
    lines = [
        f"Task `{config['task']['name']}`, {fed['clients']} clients ({100 * attack['fraction']:g} % malicious), "
        f"{split}, {fed['rounds']} rounds, seeds {', '.join(map(str, data['seeds']))}; "
        f"{len(data['cells'])} cells, {sum(c.get('wall_seconds') or 0 for c in data['cells']) / 60:.0f} min of "
        f"cell compute on one core ({data['machine']}).",
        "",
        markdown(data["summary"]),
    ]
    for name, goal in data.get("goals", {}).items():
        fedavg = (f"; FedAvg {100 * goal['fedavg_accuracy']:.1f} % ({goal['fedavg_drop_points']:.1f} points below clean)"
                  if "fedavg_accuracy" in goal else "")
        lines += ["", f"Under {name}: best defense **{goal['best_defense']}** at {100 * goal['best_accuracy']:.1f} %, "
                  f"{goal['best_gap_points']:.1f} points below clean FedAvg ({100 * goal['clean_fedavg_accuracy']:.1f} %; "
                  f"goal ≤ {goal['within_points']:g}: {'met' if goal['met'] else 'not met'}){fedavg}."]
    return "\n".join(lines)


def fl_aggregation_table(data: dict) -> str:
    """``benchmarks/fl_aggregation.py``'s JSON: seconds per round of each rule, ours and Flower's, and the ratio."""
    lines = [
        f"Random float32 updates, CPU, {data['threads']} thread{'s' * (data['threads'] != 1)}, torch {data['torch']}, "
        f"flwr {data['flwr']}; median of {data['repeats']} runs; Flower = its strategy's `aggregate_train` on the "
        f"same updates as full weights; target ≤ {data['target_s']:g} s per round for distance/median rules.",
        "",
        "| rule | n | d | ours s | Flower s | Flower / ours | ArrayRecords → matrix s | ≤ target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in data["rows"]:
        flower = "–" if row.get("flower_s") is None else f"{row['flower_s']:.3f}"
        ratio = "–" if row.get("flower_s") is None else f"{row['ratio']:.1f}"
        target = {True: "yes", False: "no", None: ""}[row.get("meets_target")]
        lines.append(f"| {row['rule']} | {row['clients']} | {row['dims']:,} | {row['ours_s']:.3f} | {flower} | {ratio} | "
                     f"{row['stack_s']:.3f} | {target} |".replace(",", " "))
    if data.get("note"):
        lines += ["", f"Note: {data['note']}."]
    return "\n".join(lines)


def sd_scale_table(data: dict) -> str:
    """``benchmarks/sd_scale.py``'s JSON: seconds per step at SD size under each knob, the allocator, every method
    at the defaults, peak memory with and without ``--low-memory``, the component split, gradient fidelity."""
    sizes = sorted((k for k in data if k.isdigit()), key=int)
    where = "GPU" if str(data["device"]).startswith("cuda") else f"{data.get('cpus', '?')}-core CPU"
    lines = [f"`{data['arch']}` (random weights, the real configs) on a {where} ({data.get('cpu', '?')}), torch "
             f"{data['torch']}; medians of {data['repeats']} alternating rounds, seconds per step; one image, one tile, "
             f"L∞ 8/255." + (f" Conditions: {data['note']}" if data.get("note") else ""), ""]

    def cell(medians: dict, key: str) -> str:
        return f"{medians[key]:.2f}" if key in medians else "–"

    knob_rows = [(size, data[size]["knobs"]["median_s"]) for size in sizes if data[size].get("knobs", {}).get("median_s")]
    if knob_rows:
        knobs = ["fp32", "bf16", "bf16-cl", "bf16-cl2", "fp32-cl", "bf16-lm"]  # all but the last keep full memory
        lines += ["| step | fp32 (exact) | bf16 autocast | bf16 + channels-last VAE | bf16 + channels-last VAE and UNet | "
                  "fp32 + channels-last VAE | bf16 + `--low-memory` | best / fp32 |", "|---|---|---|---|---|---|---|---|"]
        for size, medians in knob_rows:
            for method in sorted({k.split("/")[1] for k in medians}, key=lambda m: (m != "advdm", m)):
                values = [medians[f"{k}/{method}"] for k in knobs[:-1] if f"{k}/{method}" in medians]
                best = min(values) / medians[f"fp32/{method}"] if f"fp32/{method}" in medians else float("nan")
                lines.append(f"| {method} {size}² | " + " | ".join(cell(medians, f"{k}/{method}") for k in knobs)
                             + f" | {best:.2f} |")
        lines.append("")
    alloc_rows = [(size, data[size]["allocator"]) for size in sizes if "allocator" in data[size]]
    if alloc_rows:
        lines += ["| step (defaults) | glibc's malloc | freed memory kept | ratio |", "|---|---|---|---|"]
        for size, alloc in alloc_rows:
            default, keep = alloc["default"]["median_s"], alloc["keep"]["median_s"]
            for key in default:
                if key in keep:
                    lines.append(f"| {key.split('/')[1]} {size}² | {default[key]:.2f} | {keep[key]:.2f} | "
                                 f"{keep[key] / default[key]:.2f} |")
        lines.append("")
    method_rows = [(size, data[size]) for size in sizes if data[size].get("methods", {}).get("median_s") or data[size].get("memory")]
    if method_rows:
        lines += ["| method | size | s/step (defaults) | peak MB above the model | with `--low-memory` |",
                  "|---|---|---|---|---|"]
        for size, block in method_rows:
            memory = {(r.get("method"), r.get("low_memory")): r for r in block.get("memory", []) if "peak_above_model_mb" in r}
            seconds = {key.split("/")[1]: value for key, value in block.get("methods", {}).get("median_s", {}).items()}
            for method in dict.fromkeys([*seconds, *(m for m, _ in memory)]):
                plain, low = memory.get((method, False)), memory.get((method, True))
                time_text = f"{seconds[method]:.2f}" if method in seconds else "–"
                plain_text = f"{plain['peak_above_model_mb']:.0f}" if plain else "–"
                low_text = f"{low['peak_above_model_mb']:.0f}" if low else "–"
                lines.append(f"| {method} | {size}² | {time_text} | {plain_text} | {low_text} |")
        lines.append("")
    notes = []
    names = {"vae_forward_backward": "VAE encoder fwd+bwd", "unet_forward_backward": "UNet fwd+bwd"}
    for size in sizes:
        block = data[size]
        parts = block.get("components", {}).get("median_s", {})
        if parts:
            kinds = [d for d in ("fp32", "bf16", "bf16-stored", "weights") if any(k.startswith(f"{d}/") for k in parts)]
            split = ", ".join(f"{label} " + " → ".join(f"{parts[f'{d}/{part}']:.2f}" for d in kinds if f"{d}/{part}" in parts)
                              for part, label in names.items())
            legend = " → ".join({"bf16-stored": "bf16 with the weights already bf16"}.get(d, d) for d in kinds)
            exact = block["components"].get("bf16_stored_unet_grad_max_abs_diff")
            exact_text = "" if exact is None else f", UNet input gradient of the last vs bf16: max |Δ| {exact:g}"
            notes.append(f"{size}²: {split} s ({legend}{exact_text})")
        attention = block.get("attention", {})
        if attention.get("median_s"):
            kernels = ", ".join(f"{k} {v:.3f}" for k, v in attention.get("median_s", {}).items())
            shape = "×".join(map(str, attention["self_attention_shape"]))
            share = attention.get("unet_attention_share")
            share_text = "" if share is None else f"attention is {100 * share:.0f} % of the UNet's fwd+bwd; "
            notes.append(f"{size}²: {share_text}its largest self-attention ({shape}) fwd+bwd: {kernels} s")
        overhead = block.get("overhead", {})
        if "ratio" in overhead:
            notes.append(f"{size}²: engine / bare loop {overhead['ratio']:.3f}")
        for row in block.get("fidelity", []):
            for method, values in row.get("rows", {}).items():
                notes.append(f"{row['arch']} {row['size']}² {method}: bf16 gradient cosine to fp32 ≥ "
                             f"{values['cosine_min']:.4f}, signs agree {values['sign_agreement'] * 100:.1f} %")
    if notes:
        lines += ["Components, engine overhead and gradient fidelity: " + "; ".join(notes) + "."]
    return "\n".join(lines)


def authenticate_proof_table(data: dict) -> str:
    """``examples/authenticate_proof.py``'s JSON: per suspect kind and score, the AUC members vs hold-out over
    training seeds and pooled per image, TPR at 1 % FPR, the negative control's AUC and every seed's p-value."""
    s = data["settings"]
    seeds = data["seeds"]
    first = data["summary"][next(iter(data["summary"]))]["scores"]
    n = first[next(iter(first))]["suspect"]["pooled"]
    steps = {"lora": f"LoRA rank {s['rank']}, {s['lora_steps']} steps", "dreambooth": f"DreamBooth (every UNet weight), "
             f"{s['dreambooth_steps']} steps"}  # fmt: skip
    kinds = "; ".join(steps[k] for k in data["summary"])
    feature = data["runs"][0]["suspects"][next(iter(data["summary"]))]["suspect"]["feature_space"]
    lines = [
        f"Demo model, {s['size']}² px, {len(seeds)} training seed{'s' * (len(seeds) != 1)} ({', '.join(map(str, seeds))}); "
        f"per seed {n['n_members'] // len(seeds)} members vs {n['n_nonmembers'] // len(seeds)} hold-out images of the artist; "
        f"{kinds}; negative controls: the same recipe on {s['control_images']} images of other styles; CGI-DM "
        f"{s['cgidm_steps']} steps, {feature} features; {data['wall_seconds'] / 60:.0f} min in all ({data['machine']}).",
        "",
        "| suspect | score | AUC, mean over seeds [95 % CI] | pooled AUC [95 % CI] | TPR @ 1 % FPR (pooled) | "
        "control AUC (mean) | p per seed: suspect / control |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, entry in data["summary"].items():
        for name, score in entry["scores"].items():
            sus, ctl = score["suspect"], score.get("control")
            over, pooled = sus["auc_over_seeds"], sus["pooled"]
            p = ", ".join(f"{x:.2g}" for x in sus["p_values"])
            if ctl:
                p += " / " + ", ".join(f"{x:.2g}" for x in ctl["p_values"])
            control = f"{ctl['auc_over_seeds']['mean']:.2f}" if ctl else "–"
            lines.append(f"| {kind} | {name} | {over['mean']:.2f} [{over['ci'][0]:.2f}, {over['ci'][1]:.2f}] | "
                         f"{pooled['auc']:.2f} [{pooled['auc_ci'][0]:.2f}, {pooled['auc_ci'][1]:.2f}] | "
                         f"{pooled['tpr_at_1pct']:.2f} | {control} | {p} |")  # fmt: skip
    lines.append("")
    for kind, entry in data["summary"].items():
        verdicts = entry["verdicts"]
        accused = sum(v["suspect"]["learned"] for v in verdicts)
        controls = [v["control"] for v in verdicts if "control" in v]
        text = (f"{kind}: the CGI-DM verdict (α = {data['alpha']:g}) accused the real suspect in {accused} of "
                f"{len(verdicts)} seeds")
        if controls:
            text += f" and the negative control in {sum(c['learned'] for c in controls)} of {len(controls)}"
        lines.append(f"- {text}; {entry['seconds_per_image']:.1f} s per audited image, {entry['train_seconds']:.0f} s "
                     "to train a suspect.")
    return "\n".join(lines)


def authenticate_pair_table(data: dict) -> str:
    """``benchmarks/authenticate_pair.py``'s JSON: seconds per audited image and peak memory, LoRA toggled on
    one set of weights vs a second loaded model, and the ratios."""
    lines = [
        f"Model `{data['model']}` on {data['device']} ({data['dtype']}, torch {data['torch']}, "
        f"{data['threads']} thread{'s' * (data['threads'] != 1)}); CGI-DM audit of one {data['resolution']}² image, "
        f"{data['steps']} steps (contrast and base-only recovery), {data['repeats']} timed per subprocess; each variant in "
        f"fresh subprocesses, alternating ({', '.join(data['variants'])}) × {data['rounds']} rounds; medians.",
        "",
        "| variant | s / image (wall) | CPU s / image | peak RSS MiB | peak above start MiB | weights MiB | "
        "wall-time ratio | CPU-time ratio | peak RSS ratio | above-start ratio | weights ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in data["rows"]:
        lines.append(f"| {row['variant']} | {row['s_per_image']:.2f} | {row['cpu_s_per_image']:.2f} | {row['peak_rss_mb']:.0f} | "
                     f"{row['peak_above_start_mb']:.0f} | {row['weights_mb']:.1f} | {row['time_ratio']:.2f} | "
                     f"{row['cpu_time_ratio']:.2f} | "
                     f"{row['memory_ratio']:.2f} | {row['above_start_ratio']:.2f} | {row['weights_ratio']:.2f} |")  # fmt: skip
    lines += ["", f"Ratios are to `{data['rows'][0]['variant']}`. Peak RSS includes Python, torch and the libraries; "
              "above start: the peak above the resident set after importing them (the models and the audit)."]
    if data.get("note"):
        lines += ["", f"Note: {data['note']}."]
    return "\n".join(lines)


#: Block name -> (result file relative to the repository root, formatter).
BLOCKS: dict[str, tuple[str, Callable[[dict], str]]] = {
    "engine-overhead": ("benchmarks/results/engine_overhead.json", engine_overhead_table),
    "protect-methods": ("benchmarks/results/protect_methods.json", protect_methods_table),
    "protect-methods-diffusionguard": ("benchmarks/results/protect_methods_diffusionguard.json", protect_methods_table),
    "proof-sdedit": ("benchmarks/results/protection_proof.json", lambda d: proof_table(d, "sdedit")),
    "proof-lora": ("benchmarks/results/protection_proof.json", lambda d: proof_table(d, "lora")),
    "proof-inpaint": ("benchmarks/results/protection_proof.json", lambda d: proof_table(d, "inpaint")),
    "proof-lora-runs": ("benchmarks/results/protection_proof_lora_runs.json", lambda d: proof_curve_table(d, "lora")),
    "proof-v2-sdedit": ("benchmarks/results/protection_proof_v2.json", lambda d: proof_table(d, "sdedit")),
    "proof-v2-inpaint": ("benchmarks/results/protection_proof_inpaint_v2.json", lambda d: proof_table(d, "inpaint")),
    "proof-v2-lora-runs": ("benchmarks/results/protection_proof_lora_runs_v2.json", lambda d: proof_curve_table(d, "lora")),
    "proof-v2-lora-purified": ("benchmarks/results/protection_proof_lora_purified_v2.json",
                               lambda d: proof_judges_table(d, "lora")),
    "proof-v2-lora-diffpure": ("benchmarks/results/protection_proof_lora_diffpure_v2.json",
                               lambda d: proof_judges_table(d, "lora")),
    "proof-v2-lora-six-runs": ("benchmarks/results/protection_proof_lora_six_runs_v2.json",
                               lambda d: proof_curve_table(d, "lora") + "\n\n" + proof_per_run_table(d, "lora")),
    "proof-v2-lora-purified-six-runs": ("benchmarks/results/protection_proof_lora_purified_six_runs_v2.json",
                                        lambda d: proof_judges_table(d, "lora") + "\n\n" + proof_per_run_table(d, "lora")),
    "style-judges": ("benchmarks/results/style_judges.json", style_judges_table),
    "demo-world": ("benchmarks/results/demo_world.json", demo_world_table),
    "demo-world-v1": ("benchmarks/results/demo_world_v1.json", demo_world_table),
    "lora-mimicry": ("benchmarks/results/lora_artist_mimicry_v2.json", lora_mimicry_table),
    "bayesian-subject": ("benchmarks/results/bayesian_vs_plain_subject.json", bayesian_vs_plain_table),
    "bayesian-artist": ("benchmarks/results/bayesian_vs_plain_artist.json", bayesian_vs_plain_table),
    "bayesian-low-lr": ("benchmarks/results/bayesian_vs_plain_low_lr.json", bayesian_vs_plain_table),
    "memorization-detection": ("benchmarks/results/memorization_demo.json", memorization_detection_table),
    "memorization-prune": ("benchmarks/results/memorization_demo.json", memorization_prune_table),
    "memorization-heavy-detection": ("benchmarks/results/memorization_demo_heavy.json", memorization_detection_table),
    "memorization-heavy-prune": ("benchmarks/results/memorization_demo_heavy.json", memorization_prune_table),
    "fl-proof": ("benchmarks/results/fl_proof.json", fl_proof_table),
    "fl-aggregation": ("benchmarks/results/fl_aggregation.json", fl_aggregation_table),
    "sd-scale": ("benchmarks/results/sd_scale.json", sd_scale_table),
    "authenticate-proof": ("benchmarks/results/authenticate_proof.json", authenticate_proof_table),
    "authenticate-proof-latent": ("benchmarks/results/authenticate_proof_latent.json", authenticate_proof_table),
    "authenticate-proof-v1": ("benchmarks/results/authenticate_proof_v1.json", authenticate_proof_table),
    "authenticate-proof-latent-v1": ("benchmarks/results/authenticate_proof_latent_v1.json", authenticate_proof_table),
    "authenticate-pair": ("benchmarks/results/authenticate_pair.json", authenticate_pair_table),
}


# --------------------------------------------------------------------------------------------------
# README blocks
# --------------------------------------------------------------------------------------------------


def render(name: str, source: str | Path | None = None, root: Path = ROOT) -> str:
    """The Markdown of block `name`, from `source` (default: its committed result file)."""
    if name not in BLOCKS:
        raise KeyError(f"unknown table {name!r}; known: {', '.join(BLOCKS)}")
    default, formatter = BLOCKS[name]
    path = Path(source) if source is not None else root / default
    return formatter(json.loads(path.read_text(encoding="utf-8")))


def readme_blocks(text: str) -> dict[str, str]:
    """Block name -> its current body (without the marker lines) in a README text."""
    blocks: dict[str, str] = {}
    for match in BLOCK.finditer(text):
        if match["name"] in blocks:
            raise ValueError(f"table {match['name']!r} appears twice in the README")
        blocks[match["name"]] = match["body"]
    return blocks


def updated(text: str, root: Path = ROOT) -> str:
    """`text` with every block's body replaced by its rendering (surrounded by one blank line each side)."""
    return BLOCK.sub(lambda m: f"{m[1]}\n{render(m['name'], root=root)}\n\n{m[4]}", text)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="render_readme.py", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"blocks to print (default: all with a committed source): {', '.join(BLOCKS)}")
    parser.add_argument("--source", help="result file to render instead of the committed one (with one NAME)")
    parser.add_argument("--readme", default=str(README))
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", action="store_true", help="exit 1 if a README block differs from its rendering")
    group.add_argument("--write", action="store_true", help="rewrite the README's blocks from the result files")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BLOCKS]
    if unknown:
        parser.error(f"unknown table {unknown[0]!r}; known: {', '.join(BLOCKS)}")
    if args.source and len(args.names) != 1:
        parser.error("--source needs exactly one table name")
    if args.check or args.write:
        readme = Path(args.readme)
        text = readme.read_text(encoding="utf-8")
        new = updated(text)
        if args.write:
            if new != text:
                readme.write_text(new, encoding="utf-8")
            print(f"{readme}: {len(readme_blocks(new))} tables {'rewritten' if new != text else 'already up to date'}")
            return 0
        stale = [n for n, body in readme_blocks(text).items() if body != readme_blocks(new)[n]]
        for name in stale:
            print(f"{readme}: table {name!r} differs from {BLOCKS[name][0]}; run {Path(__file__).name} --write",
                  file=sys.stderr)
        return 1 if stale else 0
    names = args.names or [n for n, (source, _) in BLOCKS.items() if (ROOT / source).is_file()]
    print("\n\n".join(f"<!-- table:{name} -->\n\n{render(name, args.source)}\n\n<!-- /table -->" for name in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
