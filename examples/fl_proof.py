"""Proof: federated poisoning attacks against robust defenses on the image task, reproducible by one command.

    python examples/fl_proof.py                      # the grid of examples/fl/proof.toml (long on CPU; resumable)
    python examples/fl_proof.py --quick -o /tmp/flq --results /tmp/flq/fl_proof.json   # a smoke run: seconds

The setting is ``examples/fl/proof.toml``: the ``styles`` image task (32x32 renders of the demo world's
styles as classes, a small CNN), 20 clients, 20 % of them malicious, non-IID (Dirichlet α = 0.5), every
defense × {clean, LIE, min-max, IPM, Fang (trimmed-mean variant), scaling, edge-case PGD, DBA, and the pill
around LIE, min-max, IPM and Fang} × 3 seeds. It reports:

- final test accuracy per defense × attack (mean and 95 % bootstrap interval over seeds);
- attack success rate for the targeted attacks (edge-case PGD, DBA, scaling), detection TPR/FPR for the
  defenses that select clients;
- the pill's error-rate increase over its base attack, per defense (final error rate of pill+base ÷ base,
  paired over seeds; the paper reports up to 7× and > 2× on average against 8 defenses);
- the goal: the best defense within 5 points of clean FedAvg under 20 % LIE and min-max while FedAvg collapses.

The sweep folder (``-o``, default ``fl-sweeps/proof``) keeps every finished cell: rerun the command after an
interruption and it resumes. Writes ``--results`` (default ``benchmarks/results/fl_proof.json``), the source
of the README's ``fl-proof`` table (``python benchmarks/render_readme.py fl-proof``), and the sweep's report
(``report.md``, ``report.html``, ``plots/``) in the sweep folder.
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

from artshield.cli_support import ArgumentParser, positive_int
from artshield.fileio import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
QUICK = {"task": "digits", "clients": 10, "rounds": 2, "attacks": ("clean", "lie", "pill+lie"),
         "defenses": ("fedavg", "median"), "seeds": (0,)}


def goals(summary: dict, attacks=("lie", "minmax"), points: float = 5.0) -> dict:
    """For each attack: the best defense's accuracy against clean FedAvg (within `points`?) and FedAvg's drop."""
    accuracy = summary["accuracy"]
    clean = accuracy.get("fedavg", {}).get("clean")
    out = {}
    for attack in attacks:
        under = {d: per[attack]["mean"] for d, per in accuracy.items() if attack in per}
        defended = {d: v for d, v in under.items() if d != "fedavg"}
        if clean is None or not defended:
            continue
        best = max(defended, key=defended.get)
        gap = 100 * (clean["mean"] - defended[best])
        entry = {"clean_fedavg_accuracy": clean["mean"], "best_defense": best, "best_accuracy": defended[best],
                 "best_clean_accuracy": accuracy[best].get("clean", {}).get("mean"),
                 "best_gap_points": gap, "within_points": points, "met": gap <= points}
        if "fedavg" in under:
            entry["fedavg_accuracy"] = under["fedavg"]
            entry["fedavg_drop_points"] = 100 * (clean["mean"] - under["fedavg"])
        out[attack] = entry
    return out


def _list(text: str | None):
    return None if text is None else tuple(item.strip() for item in text.split(",") if item.strip())


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="fl_proof.py", description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default=str(ROOT / "examples/fl/proof.toml"), help="the experiment file")
    parser.add_argument("-o", "--output", default="fl-sweeps/proof", help="sweep folder (cells, report, plots)")
    parser.add_argument("--results", default=str(ROOT / "benchmarks/results/fl_proof.json"), help="result JSON")
    parser.add_argument("--attacks", help="comma-separated (default: the file's [sweep] attacks)")
    parser.add_argument("--defenses", help="comma-separated (default: the file's [sweep] defenses)")
    parser.add_argument("--seeds", help="comma-separated (default: the file's [sweep] seeds)")
    parser.add_argument("--rounds", type=positive_int, help="override [federation] rounds")
    parser.add_argument("--clients", type=positive_int, help="override [federation] clients")
    parser.add_argument("--quick", action="store_true", help="a smoke run: digits, 10 clients, 2 rounds, 3 × 2 cells")
    parser.add_argument("--last-rounds", type=positive_int, default=5,
                        help="accuracy / error rate / ASR as the mean over the last K rounds (default 5)")
    parser.add_argument("--resamples", type=positive_int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    from artshield import __version__
    from artshield.cli_support import run_command
    from artshield.fl_bridge.experiment import load_experiment
    from artshield.fl_bridge.report import markdown, write_report
    from artshield.fl_bridge.runner import sweep

    def body() -> int:
        experiment = load_experiment(args.experiment)
        changes = {}
        if args.quick:
            changes = {k: QUICK[k] for k in ("task", "clients", "rounds")}
        if args.rounds:
            changes["rounds"] = args.rounds
        if args.clients:
            changes["clients"] = args.clients
        experiment = experiment.replace(**changes)
        attacks = _list(args.attacks) or (QUICK["attacks"] if args.quick else experiment.sweep_attacks)
        defenses = _list(args.defenses) or (QUICK["defenses"] if args.quick else experiment.sweep_defenses)
        seeds = tuple(int(s) for s in _list(args.seeds) or ()) or (QUICK["seeds"] if args.quick else
                                                                    experiment.sweep_seeds or (0,))
        start = time.perf_counter()
        result = sweep(experiment, attacks, defenses, seeds, args.output, progress=not args.quiet)
        report = write_report(result.cells, args.output, title="fl_bridge proof", resamples=args.resamples,
                              last_rounds=args.last_rounds)
        summary = report["summary"]
        from importlib.metadata import PackageNotFoundError, version

        try:
            flwr_version = version("flwr")
        except PackageNotFoundError:
            flwr_version = None
        import torch

        data = {
            "benchmark": "fl_proof",
            "experiment": experiment.name,
            "source": str(Path(args.experiment).resolve().relative_to(ROOT)) if Path(args.experiment).resolve()
            .is_relative_to(ROOT) else str(args.experiment),
            "config": experiment.to_dict(),
            "attacks": list(attacks),
            "defenses": list(defenses),
            "seeds": list(seeds),
            "quick": bool(args.quick),
            "summary": summary,
            "goals": goals(summary),
            "cells": [{"attack": c["attack"], "defense": c["defense"], "seed": c["seed"], "summary": c["summary"],
                       "wall_seconds": c.get("wall_seconds")} for c in result.cells],
            "computed": result.computed,
            "reused": result.reused,
            "wall_seconds": time.perf_counter() - start,
            "artshield": __version__,
            "torch": torch.__version__,
            "flwr": flwr_version,
            "machine": f"{platform.machine()} {platform.system()}, python {platform.python_version()}",
        }
        write_json_atomic(args.results, data, what="proof results")
        if not args.quiet:
            print(markdown(summary))
        print(f"{len(result.cells)} cells ({result.computed} computed, {result.reused} reused); results: {args.results}; "
              f"report: {report['markdown']}")
        return 0

    return run_command("fl_proof.py", body, "finished cells are kept in the sweep folder; rerun to resume.")


if __name__ == "__main__":
    sys.exit(main())
