"""Proof: what a curious server reconstructs from one digits client's update, with and without user-level DP.

    OMP_NUM_THREADS=1 python examples/fl_privacy_leakage.py          # the full grid (about 12 minutes, one core)
    python examples/fl_privacy_leakage.py --quick --results /tmp/l.json --plot /tmp/l.png   # a smoke run

The leakage side of ``examples/fl_dp_proof.py`` (whose utility figures, ``benchmarks/results/fl_dp.json``, this
script reads; it re-runs none of them). Same setting: scikit-learn's digits, the 64-32-10 MLP, 500 clients,
Poisson sampling at q = 0.1, 40 rounds, 5 local epochs of SGD at lr 0.3 (batch 32), clip S = 0.3, δ = 1/N²,
z calibrated by the RDP accountant for ε ∈ {2, 4, 8} after 40 rounds; BLUR λ = 5 (bound S), LUS 90 %.

The attacked model is round 11's global model: the initial model after 10 honest FedAvg rounds (no DP) of the
same federation, per seed 0-2. The attacked client holds B ∈ {1, 4} training images (drawn at random, labels may
repeat); it trains exactly as ``train_locally`` does (5 epochs, each one step on its whole batch: a FedAvg
update of 5 local steps). The server sees that delta after what the variant does to it:

- **FedAvg, no DP**: the delta itself;
- **central DP** (DP-FedAvg, :class:`~artshield.fl_bridge.privacy.UserLevelDP`): the server adds the noise to
  the *sum*, after it has seen every update, so a curious server sees each delta clipped to S and nothing
  else (+ BLUR / + LUS change the delta the client sends; the server clips it);
- **distributed noise** σ = z·S/√(qN): each client adds its share of the central noise to its clipped delta
  (the noise of secure-aggregation-style distributed DP; the sum carries the same N(0, (zS)²) as central DP,
  so the accuracy is the central row's, not re-run). Here the server sees each noised update *individually*:
  the case where the secure aggregation that distributed DP relies on is absent or broken;
- **local noise** σ = z·S: each client adds the full central noise to its own clipped delta, as Flower's
  ``LocalDpMod`` does per client: the one that protects against the server itself. Its accuracy is measured
  with DP-FedAvg at the noise multiplier z·√(qN) (the same aggregate noise in distribution).

The attack (on the shared inversion engine): the delta becomes a FedAvg observation
(``leakage.observe.observation_from_delta``: pseudo-gradient over lr·5 steps, the 5 steps unrolled exactly), the
labels are either known or recovered zero-shot (Geng et al., ``leakage.labels.recover_labels`` with the FedAvg
treatment), and Inverting Gradients (cosine matching, signed Adam, box [0, 1]) runs 200 steps with TV 0.01 (TV
picked on a pilot of the no-DP case, seed 0: 0.2 / 0.05 / 0.01 gave 15 / 20 / 29 dB at B = 1). The attacker
is not adaptive: it does not model BLUR's penalty, LUS's zeros or the noise. PSNR is matched by assignment
(``leakage.assess``); the baselines are the attack's own uniform-noise start and the mean training image (a
guess from no update at all).

Writes ``--results`` (default ``benchmarks/results/fl_privacy_leakage.json``) and ``--plot`` (default
``benchmarks/results/fl_privacy_leakage.png``), and prints the Markdown table.
"""

from __future__ import annotations

import io
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

from artshield.cli_support import ArgumentParser, positive_int
from artshield.fileio import write_bytes_atomic, write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
EPSILONS = (2.0, 4.0, 8.0)
#: fl_dp_proof.py's setting (checked against fl_dp.json before its accuracies are used).
SETTING = {"task": "digits", "hidden": 32, "clients": 500, "fraction": 0.1, "rounds": 40, "epochs": 5, "lr": 0.3,
           "batch_size": 32, "clip": 0.3}
ATTACK = {"honest_rounds": 10, "batch_sizes": [1, 4], "batches": 3, "steps": 200, "tv": 0.01, "blur": 5.0,
          "lus": 0.9}
QUICK_SETTING = {**SETTING, "clients": 100, "fraction": 0.2, "rounds": 3, "epochs": 1}
QUICK_ATTACK = {**ATTACK, "honest_rounds": 1, "batch_sizes": [1], "batches": 1, "steps": 5}
#: client options: the name fl_dp.json uses for the same variant, and LocalTraining's fields.
OPTIONS = {"": {}, "+ BLUR": {"blur": True}, "+ LUS": {"lus": True}, "+ BLUR + LUS": {"blur": True, "lus": True}}
#: (row name, how the server sees the delta, client options, the fl_dp.json variant with the same accuracy)
VARIANTS = [
    ("FedAvg, no DP", "none", "", None),
    *[(f"central DP{' ' + o if o else ''} (clip only)", "central", o, "DP-FedAvg" if not o else o) for o in OPTIONS],
    *[(f"distributed noise zS/√(qN){' ' + o if o else ''}", "distributed", o, "DP-FedAvg" if not o else o)
      for o in OPTIONS],
    ("local noise zS (LocalDpMod)", "local", "", "local"),
]
LABEL_MODES = ("known", "zero-shot")


def derive(*parts: int) -> int:
    value = 0
    for part in parts:
        value = (value * 1_000_003 + int(part)) % (1 << 62)
    return value


def generator(*parts: int):
    import torch

    return torch.Generator().manual_seed(derive(*parts))


# ------------------------------------------------------------------------------------------------ measuring
def honest_model(setting: dict, attack: dict, seed: int):
    """Seed `seed`'s global model after `honest_rounds` rounds of FedAvg without DP, and its test accuracy."""
    from artshield.fl_bridge.federation import FederationConfig, run_federation
    from artshield.fl_bridge.training import LocalTraining

    config = FederationConfig(
        task=setting["task"], task_params={"hidden": setting["hidden"]}, num_clients=setting["clients"],
        fraction=setting["fraction"], rounds=attack["honest_rounds"], seed=seed,
        training=LocalTraining(epochs=setting["epochs"], lr=setting["lr"], batch_size=setting["batch_size"]))
    result = run_federation(config)
    return result.final_vector.detach().clone(), float(result.rounds[-1]["accuracy"])


def observed_delta(delta, mode: str, setting: dict, z: float | None, noise_seed: int):
    """What the curious server sees of one client's `delta` under the variant's `mode`."""
    import torch

    from artshield.fl_bridge.privacy import clip_deltas

    if mode == "none":
        return delta
    clipped = clip_deltas(delta[None], setting["clip"])[0][0]
    if mode == "central":
        return clipped
    cohort = setting["fraction"] * setting["clients"]
    std = z * setting["clip"] / (math.sqrt(cohort) if mode == "distributed" else 1.0)
    return clipped + torch.randn(delta.shape, generator=generator(noise_seed)) * std


def attack_one(model, layout, data, delta, setting: dict, attack: dict, seed: int) -> dict:
    """Zero-shot labels and IG reconstructions (known / recovered labels) of one observed delta."""

    from artshield.fl_bridge.leakage.assess import assess
    from artshield.fl_bridge.leakage.inversion import reconstruct
    from artshield.fl_bridge.leakage.labels import label_metrics, recover_labels
    from artshield.fl_bridge.leakage.observe import observation_from_delta

    batch = len(data)
    shape = tuple(int(s) for s in data.images.shape[1:])
    steps = setting["epochs"]  # every epoch is one step on the whole batch (batch <= the local batch size)
    observation = observation_from_delta(model, delta, layout, lr=setting["lr"], steps=steps, batch_size=batch,
                                         input_shape=shape, num_classes=10, num_images=batch)
    true = data.labels.sort().values
    start = time.perf_counter()
    recovered = recover_labels("zero-shot", observation.gradients, model, batch_size=batch, num_classes=10,
                               generator=generator(seed, 7), local_steps=steps, local_lr=setting["lr"],
                               input_shape=shape).labels
    out = {"true_labels": true.tolist(), "recovered_labels": recovered.tolist(),
           "label_accuracy": label_metrics(recovered, true, 10)["label_accuracy"]}
    runs: dict = {}
    for mode, labels in (("known", true), ("zero-shot", recovered)):
        key = tuple(labels.tolist())
        if key not in runs:  # the same labels and start give the same reconstruction
            result = reconstruct("ig", model, observation, labels=labels, steps=attack["steps"], tv=attack["tv"],
                                 generator=generator(seed, 11))
            runs[key] = assess(data.images, data.labels, result, recovered_labels=labels, lpips=False)["psnr_mean"]
        out[f"psnr_{mode}"] = float(runs[key])
    out["seconds"] = time.perf_counter() - start
    return out


def baselines(data, train_images, seed: int) -> dict:
    """PSNR of the attack's uniform start (drawn as reconstruct draws it) and of the mean training image."""
    import torch

    from artshield.fl_bridge.leakage.assess import assess
    from artshield.fl_bridge.leakage.inversion import Reconstruction

    start = torch.rand(data.images.shape, generator=generator(seed, 11))
    mean = train_images.mean(dim=0, keepdim=True).expand_as(data.images).clone()
    score = {}
    for name, images in (("noise", start), ("mean_image", mean)):
        score[name] = assess(data.images, data.labels, Reconstruction(images, data.labels.clone(), 0.0, 0.0),
                             lpips=False)["psnr_mean"]
    return score


def local_noise_accuracy(setting: dict, seed: int, z: float) -> dict:
    """Final accuracy when every client adds N(0, (zS)²): DP-FedAvg at the noise multiplier z·√(qN)."""
    from artshield.fl_bridge.federation import FederationConfig, run_federation
    from artshield.fl_bridge.privacy import DPConfig
    from artshield.fl_bridge.training import LocalTraining

    scaled = z * math.sqrt(setting["fraction"] * setting["clients"])
    config = FederationConfig(
        task=setting["task"], task_params={"hidden": setting["hidden"]}, num_clients=setting["clients"],
        fraction=setting["fraction"], rounds=setting["rounds"], seed=seed,
        training=LocalTraining(epochs=setting["epochs"], lr=setting["lr"], batch_size=setting["batch_size"]),
        privacy=DPConfig(clip=setting["clip"], noise_multiplier=scaled))
    result = run_federation(config)
    return {"seed": seed, "accuracy": float(result.rounds[-1]["accuracy"]), "noise_multiplier": scaled}


def measure_all(setting: dict, attack: dict, seeds: list[int], local_utility: bool, log) -> dict:
    import torch

    from artshield.fl_bridge import tasks
    from artshield.fl_bridge.leakage.runner import model_at
    from artshield.fl_bridge.privacy import calibrate_noise
    from artshield.fl_bridge.training import LocalTraining, train_locally
    from artshield.fl_bridge.updates import ParameterLayout

    delta_ = 1.0 / setting["clients"] ** 2
    noise = {f"{e:g}": calibrate_noise(e, delta_, setting["rounds"], setting["fraction"]) for e in EPSILONS}
    task = tasks.load_task(setting["task"], hidden=setting["hidden"])
    train = task.train_set()
    cells, globals_, local = [], [], []
    for seed in seeds:
        base = task.build_model(seed)
        layout = ParameterLayout.from_arrays(base.state_dict())
        vector, accuracy = honest_model(setting, attack, seed)
        globals_.append({"seed": seed, "round_attacked": attack["honest_rounds"] + 1, "accuracy": accuracy})
        log(f"seed {seed}: round {attack['honest_rounds'] + 1}'s global model, test accuracy {accuracy:.3f}")
        model = model_at(base, layout, vector)
        for size in attack["batch_sizes"]:
            for index in range(attack["batches"]):
                case = derive(seed, size, index)
                pick = torch.randperm(len(train), generator=generator(case, 1))[:size]
                data = train.subset(pick)
                floor = baselines(data, train.images, case)
                deltas = {}
                for option, fields in OPTIONS.items():
                    training = LocalTraining(
                        epochs=setting["epochs"], lr=setting["lr"], batch_size=setting["batch_size"],
                        blur=attack["blur"] if fields.get("blur") else None,
                        blur_bound=setting["clip"] if fields.get("blur") else None,
                        lus=attack["lus"] if fields.get("lus") else None)
                    deltas[option] = train_locally(base, layout, vector, data, training, generator(case, 2))
                for name, mode, option, _utility in VARIANTS:
                    keys = [None] if mode in ("none", "central") else [f"{e:g}" for e in EPSILONS]
                    for key in keys:
                        z = None if key is None else noise[key]
                        seen = observed_delta(deltas[option], mode, setting, z, derive(case, 3, int(float(key or 0))))
                        result = attack_one(model, layout, data, seen, setting, attack, case)
                        cells.append({"variant": name, "mode": mode, "options": option, "epsilon": key, "seed": seed,
                                      "batch_size": size, "batch": index, "update_norm": float(deltas[option].norm()),
                                      "observed_norm": float(seen.norm()), **floor, **result})
                log(f"seed {seed} B={size} batch {index}: done ({len(cells)} attacks)")
        if local_utility:
            for key, z in noise.items():
                local.append({"epsilon": key, **local_noise_accuracy(setting, seed, z)})
                log(f"seed {seed} local noise eps {key}: accuracy {local[-1]['accuracy']:.3f}")
    return {"noise_multipliers": noise, "delta": delta_, "global_models": globals_, "cells": cells,
            "local_noise_accuracy": local}


# ------------------------------------------------------------------------------------------------ summarising
def mean_ci(values: list[float]) -> dict:
    from artshield.stats import bootstrap_ci

    values = [float(v) for v in values]
    if len(values) < 2:
        return {"mean": values[0] if values else None, "low": None, "high": None, "n": len(values)}
    estimate, low, high = bootstrap_ci(np.asarray(values), np.mean, n=2000, seed=0)
    return {"mean": float(estimate), "low": float(low), "high": float(high), "n": len(values)}


def summarise(measured: dict, attack: dict) -> dict:
    cells = measured["cells"]
    out: dict = {}
    for name, mode, _option, _utility in VARIANTS:
        keys = ["any"] if mode in ("none", "central") else [f"{e:g}" for e in EPSILONS]
        out[name] = {}
        for key in keys:
            chosen = [c for c in cells if c["variant"] == name and (key == "any" or c["epsilon"] == key)]
            out[name][key] = {
                str(size): {
                    "psnr_known": mean_ci([c["psnr_known"] for c in chosen if c["batch_size"] == size]),
                    "psnr_zero_shot": mean_ci([c["psnr_zero-shot"] for c in chosen if c["batch_size"] == size]),
                    "label_accuracy": mean_ci([c["label_accuracy"] for c in chosen if c["batch_size"] == size]),
                } for size in attack["batch_sizes"]}
    first = [c for c in cells if c["variant"] == VARIANTS[0][0]]
    floors = {str(size): {name: mean_ci([c[name] for c in first if c["batch_size"] == size])
                          for name in ("noise", "mean_image")} for size in attack["batch_sizes"]}
    for size in attack["batch_sizes"]:
        batches = [c["true_labels"] for c in first if c["batch_size"] == size]
        floors[str(size)]["label_chance"] = mean_ci([label_chance(t) for t in batches])
    return {"leakage": out, "baselines": floors}


def label_chance(true_labels: list[int], classes: int = 10, draws: int = 4000) -> float:
    """The expected multiset label accuracy of B labels drawn uniformly at random (Monte Carlo, seeded)."""
    rng = np.random.default_rng(0)
    size = len(true_labels)
    want = np.bincount(true_labels, minlength=classes)
    guesses = rng.integers(0, classes, size=(draws, size))
    have = np.stack([np.bincount(g, minlength=classes) for g in guesses])
    return float(np.minimum(have, want).sum(axis=1).mean() / size)


def utility(fl_dp: dict | None, setting: dict, measured: dict) -> dict:
    """Accuracy per variant and ε: fl_dp.json's (when its setting is this one), the local-noise runs'."""
    table: dict = {}
    same = fl_dp is not None and all(fl_dp.get("setting", {}).get(k) == v for k, v in setting.items())
    for name, _mode, _option, source in VARIANTS:
        row = {}
        for e in EPSILONS:
            key = f"{e:g}"
            value = None
            if source == "local":
                runs = [r["accuracy"] for r in measured["local_noise_accuracy"] if r["epsilon"] == key]
                value = float(np.mean(runs)) if runs else None
            elif source is None and same:
                value = fl_dp["no_dp"]["mean"]
            elif same:
                value = fl_dp["dp"][source][key]["mean"]
            row[key] = value
        table[name] = row
    return {"from_fl_dp": same, "accuracy": table}


def markdown(summary: dict, accuracy: dict, attack: dict) -> str:
    def pct(value):
        return "n/a" if value is None else f"{100 * value:.1f}"

    def leak(entry: dict, size: str, field: str, scale: float = 1.0, digits: int = 1):
        values = [entry[key][size][field]["mean"] for key in entry]
        return " / ".join("n/a" if v is None else f"{scale * v:.{digits}f}" for v in values)

    sizes = [str(s) for s in attack["batch_sizes"]]
    head = ["variant"] + [f"acc. ε={e:g} (%)" for e in EPSILONS]
    for size in sizes:
        head += [f"PSNR B={size} known", f"PSNR B={size} zero-shot", f"labels B={size} (%)"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---|" * (len(head) - 1)]
    for name, mode, _option, _source in VARIANTS:
        acc = accuracy["accuracy"][name]
        prefix = "≈" if mode == "distributed" else ""
        cells = [name] + [prefix + pct(acc[f"{e:g}"]) if acc[f"{e:g}"] is not None else "n/a" for e in EPSILONS]
        entry = summary["leakage"][name]
        for size in sizes:
            cells += [leak(entry, size, "psnr_known"), leak(entry, size, "psnr_zero_shot"),
                      leak(entry, size, "label_accuracy", 100, 0)]
        lines.append("| " + " | ".join(cells) + " |")
    floors = summary["baselines"]
    for label, key in (("baseline: the attack's uniform start; random labels", "noise"),
                       ("baseline: the mean training image", "mean_image")):
        cells = [label, "", "", ""]
        for size in sizes:
            value = f"{floors[size][key]['mean']:.1f}"
            chance = f"{100 * floors[size]['label_chance']['mean']:.0f} (chance)"
            cells += [value, value, chance if key == "noise" else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(summary: dict, accuracy: dict, fl_dp: dict | None, attack: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.log2(EPSILONS)
    keys = [f"{e:g}" for e in EPSILONS]
    figure, left = plt.subplots(figsize=(8, 6.4))
    figure.subplots_adjust(left=0.1, right=0.88, top=0.93, bottom=0.29)
    right = left.twinx()
    acc = accuracy["accuracy"]
    for name, label, style, alpha in (
            ("central DP (clip only)", "DP-FedAvg (central, or distributed noise)", "o-", 1.0),
            ("central DP + BLUR + LUS (clip only)", "+ BLUR + LUS (central, or distributed noise)", "s-", 0.6),
            ("local noise zS (LocalDpMod)", "local noise zS", "^-", 0.35)):
        values = [acc[name][k] for k in keys]
        if any(v is not None for v in values):
            left.plot(x, [np.nan if v is None else 100 * v for v in values], style, color="tab:blue", alpha=alpha,
                      label=f"accuracy: {label}")
    base = acc["FedAvg, no DP"][keys[0]]
    if base is not None:
        left.axhline(100 * base, color="tab:blue", linestyle="--", linewidth=1, label="accuracy: FedAvg, no DP")
    left.set_ylabel("final test accuracy (%)", color="tab:blue")
    left.set_ylim(0, 100)
    size = str(attack["batch_sizes"][0])
    leakage = summary["leakage"]
    for name, label, style in (("central DP (clip only)", "no DP = central DP (the server sees the clipped update)",
                                "-"),
                               ("central DP + BLUR + LUS (clip only)", "central DP + BLUR + LUS", "-.")):
        right.axhline(leakage[name]["any"][size]["psnr_known"]["mean"], color="tab:red", linestyle=style,
                      linewidth=1.5, label=f"PSNR: {label}")
    for name, label, style, alpha in (("distributed noise zS/√(qN)", "distributed noise zS/√qN", "o-", 1.0),
                                      ("distributed noise zS/√(qN) + BLUR + LUS", "distributed noise + BLUR + LUS",
                                       "s-", 0.6),
                                      ("local noise zS (LocalDpMod)", "local noise zS", "^-", 0.35)):
        values = [leakage[name][k][size]["psnr_known"]["mean"] for k in keys]
        right.plot(x, values, style, color="tab:red", alpha=alpha, label=f"PSNR: {label}")
    floor = summary["baselines"][size]
    right.axhline(floor["mean_image"]["mean"], color="grey", linestyle=":", label="PSNR: the mean training image")
    right.axhline(floor["noise"]["mean"], color="black", linestyle=":", label="PSNR: uniform noise (the attack's start)")
    right.set_ylabel(f"IG reconstruction PSNR, B={size}, labels known (dB)", color="tab:red")
    right.set_ylim(0, 5 * math.ceil(max(float(np.max(line.get_ydata())) for line in right.get_lines()) / 5 + 0.2))
    left.set_xticks(x, [f"{e:g}" for e in EPSILONS])
    left.set_xlabel("ε (δ = 1/N², user level, 40 rounds)")
    handles, labels = left.get_legend_handles_labels()
    more_handles, more_labels = right.get_legend_handles_labels()
    figure.legend(handles + more_handles, labels + more_labels, fontsize=7.5, loc="lower center", ncol=2,
                  frameon=False)
    left.set_title("digits: privacy – utility – leakage (inverting one client's FedAvg update)", fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    write_bytes_atomic(path, buffer.getvalue())


def main(argv=None) -> int:
    parser = ArgumentParser(prog="fl_privacy_leakage.py", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny federation, 1 seed, B=1, 5 steps")
    parser.add_argument("--seeds", type=positive_int, default=None, help="number of seeds (default 3; 1 with --quick)")
    parser.add_argument("--no-local-utility", action="store_true",
                        help="skip the 40-round runs that measure the accuracy under local noise")
    parser.add_argument("--render-only", action="store_true",
                        help="re-read --results' measurements and rewrite its summary, table and plot (no attack)")
    parser.add_argument("--fl-dp", type=Path, default=ROOT / "benchmarks" / "results" / "fl_dp.json",
                        help="fl_dp_proof.py's results (the utility side)")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "fl_privacy_leakage.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "benchmarks" / "results" / "fl_privacy_leakage.png")
    args = parser.parse_args(argv)
    if args.render_only and not args.results.is_file():
        parser.error(f"--render-only needs the measurements in --results, but {args.results} is not a file")
    setting = QUICK_SETTING if args.quick else SETTING
    attack = QUICK_ATTACK if args.quick else ATTACK
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    fl_dp = json.loads(args.fl_dp.read_text(encoding="utf-8")) if args.fl_dp.is_file() else None
    start, cpu_start = time.perf_counter(), time.process_time()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f}s] {message}", file=sys.stderr, flush=True)

    if args.render_only:
        previous = json.loads(args.results.read_text(encoding="utf-8"))
        setting = {k: previous["setting"][k] for k in SETTING}
        attack = {k: previous["attack"][k] for k in ATTACK}
        seeds = list(previous["setting"]["seeds"])
        measured = {k: previous[k] for k in ("noise_multipliers", "delta", "global_models", "cells",
                                             "local_noise_accuracy")}
        timing = {k: previous.get(k) for k in ("seconds", "cpu_seconds", "machine", "command")}
    else:
        measured = measure_all(setting, attack, seeds, not args.no_local_utility, log)
        import torch

        timing = {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start,
                  "machine": {"python": platform.python_version(), "platform": platform.platform(),
                              "torch": torch.__version__, "threads": torch.get_num_threads()},
                  "command": "OMP_NUM_THREADS=1 python examples/fl_privacy_leakage.py" + (
                      " --quick" if args.quick else "") + (" --no-local-utility" if args.no_local_utility else "")}
    summary = summarise(measured, attack)
    accuracy = utility(fl_dp, setting, measured)
    table = markdown(summary, accuracy, attack)
    document = {
        "setting": {**setting, "seeds": seeds, "delta": "1/N^2", "epsilons": list(EPSILONS)},
        "attack": {**attack, "name": "ig", "metric": "cosine", "labels": list(LABEL_MODES), "kind": "fedavg",
                   "local_steps": setting["epochs"], "model": f"round {attack['honest_rounds'] + 1}'s global model "
                   f"(after {attack['honest_rounds']} honest FedAvg rounds, no DP)"},
        "variants": [{"name": n, "server_sees": m, "client_options": o, "accuracy_from": s} for n, m, o, s in VARIANTS],
        **{k: measured[k] for k in ("noise_multipliers", "delta", "global_models")},
        "summary": summary,
        "accuracy": accuracy,
        "local_noise_accuracy": measured["local_noise_accuracy"],
        "table": table,
        "cells": measured["cells"],
        **timing,
    }
    write_json_atomic(args.results, document)
    plot(summary, accuracy, fl_dp, attack, args.plot)
    print(table)
    cpu = "?" if document.get("cpu_seconds") is None else f"{document['cpu_seconds']:.0f}"
    print(f"\n{len(seeds)} seed(s), measured in {document['seconds']:.0f} s ({cpu} s of CPU); "
          f"wrote {args.results} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
