"""Proof: user-level DP-FedAvg on the digits task, and what Cheng et al.'s BLUR and LUS buy at ε ∈ {2, 4, 8}.

    OMP_NUM_THREADS=1 python examples/fl_dp_proof.py            # the full grid (about 13 minutes on one core)
    python examples/fl_dp_proof.py --quick --results /tmp/fl_dp.json --plot /tmp/fl_dp.png   # a smoke run

Setting: scikit-learn's digits (1,437 training images) split IID over 500 clients (about 3 images each), a
64-32-10 MLP (2,410 parameters), 40 rounds, Poisson sampling at q = 0.1 (50 clients a round on average),
5 local epochs of SGD (lr 0.3). DP-FedAvg clips each client's delta to S = 0.3 (below the typical local
update norm of about 1.3, the regime where the paper locates the utility loss), averages with the fixed
denominator qN and adds N(0, (zS/qN)²); z is calibrated by bisection on the RDP accountant so that the run
spends exactly the target ε at δ = 1/N² after 40 rounds. Variants: plain DP-FedAvg, + BLUR (λ = 5, bound =
the clip norm), + LUS (90 % of each delta's coordinates, the smallest in magnitude, zeroed), + both; and
FedAvg without DP at the same sampling fraction. Seeds 0-2 (the data split, the model, the sampling and the
noise all follow the seed); final test accuracy with a 95 % percentile-bootstrap interval over seeds.

Writes ``--results`` (default ``benchmarks/results/fl_dp.json``) and ``--plot`` (default
``benchmarks/results/fl_dp.png``), and prints the Markdown table.
"""

from __future__ import annotations

import io
import platform
import sys
import time
from pathlib import Path

import numpy as np

from artshield.cli_support import ArgumentParser, positive_int
from artshield.fileio import write_bytes_atomic, write_json_atomic
from artshield.stats import bootstrap_ci

ROOT = Path(__file__).resolve().parents[1]
EPSILONS = (2.0, 4.0, 8.0)
VARIANTS = {"DP-FedAvg": {}, "+ BLUR": {"blur": 5.0}, "+ LUS": {"lus": 0.9}, "+ BLUR + LUS": {"blur": 5.0, "lus": 0.9}}
SETTING = {"task": "digits", "hidden": 32, "clients": 500, "fraction": 0.1, "rounds": 40, "epochs": 5, "lr": 0.3,
           "batch_size": 32, "clip": 0.3}
QUICK = {**SETTING, "clients": 100, "fraction": 0.2, "rounds": 3, "epochs": 1}


def run_cell(setting: dict, seed: int, epsilon: float | None, options: dict) -> dict:
    from artshield.fl_bridge.federation import FederationConfig, run_federation
    from artshield.fl_bridge.privacy import DPConfig
    from artshield.fl_bridge.training import LocalTraining

    config = FederationConfig(
        task=setting["task"], task_params={"hidden": setting["hidden"]}, num_clients=setting["clients"],
        fraction=setting["fraction"], rounds=setting["rounds"], seed=seed,
        training=LocalTraining(epochs=setting["epochs"], lr=setting["lr"], batch_size=setting["batch_size"],
                               **options),
        privacy=None if epsilon is None else DPConfig(clip=setting["clip"], target_epsilon=epsilon))
    result = run_federation(config)
    last = result.rounds[-1]
    metrics = last.get("metrics", {})
    return {"seed": seed, "accuracy": last["accuracy"], "loss": last["loss"], "epsilon": result.epsilon,
            "noise_multiplier": None if result.privacy is None else result.privacy["noise_multiplier"],
            "delta": None if result.privacy is None else result.privacy["delta"],
            "mean_update_norm": metrics.get("dp-mean-norm"), "clipped_last_round": metrics.get("dp-clipped"),
            "sampled_last_round": metrics.get("sampled"), "seconds": result.seconds}


def interval(values: list[float]) -> dict:
    estimate, low, high = bootstrap_ci(np.asarray(values, dtype=float), np.mean, n=2000, seed=0)
    return {"mean": float(estimate), "low": float(low), "high": float(high), "values": [float(v) for v in values]}


def table(summary: dict) -> str:
    def cell(entry):
        return f"{100 * entry['mean']:.1f} [{100 * entry['low']:.1f}, {100 * entry['high']:.1f}]"

    head = "| variant | " + " | ".join(f"ε = {e:g}" for e in EPSILONS) + " |"
    lines = [head, "|---|" + "---|" * len(EPSILONS)]
    for name in VARIANTS:
        lines.append(f"| {name} | " + " | ".join(cell(summary["dp"][name][f"{e:g}"]) for e in EPSILONS) + " |")
    lines.append("| FedAvg, no DP | " + " | ".join(cell(summary["no_dp"]) for _ in EPSILONS) + " |")
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for offset, name in zip((-0.09, -0.03, 0.03, 0.09), VARIANTS, strict=True):
        entries = [summary["dp"][name][f"{e:g}"] for e in EPSILONS]
        x = np.log2(EPSILONS) + offset
        y = [100 * e["mean"] for e in entries]
        err = [[100 * (e["mean"] - e["low"]) for e in entries], [100 * (e["high"] - e["mean"]) for e in entries]]
        axis.errorbar(x, y, yerr=err, marker="o", capsize=3, label=name)
    base = summary["no_dp"]
    axis.axhline(100 * base["mean"], color="black", linestyle="--", label="FedAvg, no DP")
    axis.axhspan(100 * base["low"], 100 * base["high"], color="black", alpha=0.08)
    axis.set_xticks(np.log2(EPSILONS), [f"{e:g}" for e in EPSILONS])
    axis.set_xlabel("ε (δ = 1/N², user level)")
    axis.set_ylabel("final test accuracy (%)")
    setting = summary["setting"]
    axis.set_title(f"digits, N={setting['clients']}, q={setting['fraction']}, {setting['rounds']} rounds, "
                   f"S={setting['clip']}", fontsize=9)
    axis.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    write_bytes_atomic(path, buffer.getvalue())


def main(argv=None) -> int:
    parser = ArgumentParser(prog="fl_dp_proof.py", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 100 clients, 3 rounds, one seed")
    parser.add_argument("--seeds", type=positive_int, default=None, help="number of seeds (default 3; 1 with --quick)")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "fl_dp.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "benchmarks" / "results" / "fl_dp.png")
    args = parser.parse_args(argv)
    setting = QUICK if args.quick else SETTING
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    start = time.perf_counter()
    cells: dict = {"no_dp": [], "dp": {name: {f"{e:g}": [] for e in EPSILONS} for name in VARIANTS}}
    for seed in seeds:
        cells["no_dp"].append(run_cell(setting, seed, None, {}))
        print(f"seed {seed} no DP: {cells['no_dp'][-1]['accuracy']:.3f}", file=sys.stderr, flush=True)
        for epsilon in EPSILONS:
            for name, options in VARIANTS.items():
                cell = run_cell(setting, seed, epsilon, options)
                cells["dp"][name][f"{epsilon:g}"].append(cell)
                print(f"seed {seed} eps {epsilon:g} {name}: {cell['accuracy']:.3f} (spent {cell['epsilon']:.3f}, "
                      f"z {cell['noise_multiplier']:.3f}, {cell['seconds']:.1f}s)", file=sys.stderr, flush=True)
    summary = {
        "setting": {**setting, "seeds": seeds, "delta": "1/N^2", "sampling": "poisson", "variants": VARIANTS,
                    "epsilons": list(EPSILONS)},
        "no_dp": interval([c["accuracy"] for c in cells["no_dp"]]),
        "dp": {name: {key: {**interval([c["accuracy"] for c in runs]),
                            "epsilon_spent": max(c["epsilon"] for c in runs),
                            "noise_multiplier": runs[0]["noise_multiplier"],
                            "mean_update_norm": float(np.mean([c["mean_update_norm"] for c in runs]))}
                      for key, runs in by_eps.items()} for name, by_eps in cells["dp"].items()},
        "cells": cells,
        "seconds": time.perf_counter() - start,
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "command": "OMP_NUM_THREADS=1 python examples/fl_dp_proof.py" + (" --quick" if args.quick else ""),
    }
    write_json_atomic(args.results, summary)
    plot(summary, args.plot)
    print(table(summary))
    print(f"\n{len(seeds)} seed(s), {summary['seconds']:.0f} s; wrote {args.results} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
