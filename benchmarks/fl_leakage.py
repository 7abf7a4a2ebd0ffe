"""Gradient leakage on the fl_bridge tasks: how well our DLG and Inverting Gradients reconstruct a client's batch.

Default (the benchmark case): the ``styles`` task's CNN at its seed-0 initialisation (the first round's global
model), a fixed batch of 4 training images with their labels known, the FedSGD gradient; our IG and DLG with
short schedules (IG 400 signed-Adam steps, DLG 20 L-BFGS steps of up to 20 iterations). Records PSNR, SSIM
(after Hungarian matching) and seconds, on one CPU thread unless ``OMP_NUM_THREADS`` says otherwise.

``--peer breaching`` runs the same gradient of the same model and batch through breaching 0.1.2's
``OptimizationBasedAttacker`` (its ``invertinggradients`` and ``deepleakage`` configs with the same step counts,
labels given) when ``import breaching`` works, and reports both side by side; otherwise it says breaching is
not installed. breaching optimises in the model's input space as we do (no normalisation: mean 0, std 1).

``--sweep`` measures the table of the README: tasks ``digits`` (8x8, 64-32-10 MLP) and ``styles`` (32x32 RGB,
small CNN), batch 1, 4 and 16, three disjoint batches each, labels known: DLG, IG on the FedSGD gradient, and
IG on FedAvg updates of 2 and 4 local SGD steps (lr 0.05, local batch ceil(B / steps)).

    python benchmarks/fl_leakage.py [--peer breaching] [--sweep] [--output FILE]

Writes ``benchmarks/results/fl_leakage.json`` (``--sweep``: ``fl_leakage_sweep.json``).
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from artshield.cli_support import ArgumentParser
from artshield.fileio import write_json_atomic
from artshield.fl_bridge.leakage.assess import assess
from artshield.fl_bridge.leakage.inversion import Reconstruction, reconstruct
from artshield.fl_bridge.leakage.observe import observe_fedavg, observe_fedsgd
from artshield.fl_bridge.tasks import load_task

RESULTS = Path(__file__).resolve().parent / "results"
IG_STEPS, DLG_STEPS = 400, 20
LOCAL_LR = 0.05


def styles_task():
    return load_task("styles", num_samples=256, num_test=8)


def fixed_case(batch_size: int = 4):
    task = styles_task()
    data = task.train_set()
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:batch_size]
    return task, task.build_model(0), data.images[order], data.labels[order]


def score(images, labels, result: Reconstruction) -> dict:
    scores = assess(images, labels, result, lpips=False)
    return {"psnr": round(scores["psnr_mean"], 2),
            "ssim": None if scores["ssim_mean"] is None else round(scores["ssim_mean"], 3),
            "label_accuracy": scores["label_accuracy"], "seconds": round(result.seconds, 2)}


def ours(model, images, labels) -> dict:
    observation = observe_fedsgd(model, images, labels)
    out = {}
    for attack, steps in (("ig", IG_STEPS), ("dlg", DLG_STEPS)):
        result = reconstruct(attack, model, observation, labels=labels, steps=steps,
                             generator=torch.Generator().manual_seed(0))
        out[attack] = {**score(images, labels, result), "steps": steps}
    return out


class _Meta(dict):
    """breaching reads metadata both as items and as attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc


def peer_breaching(model, images, labels) -> dict:
    """The same case through breaching's own attacker, or why it could not run."""
    try:
        import breaching  # noqa: F401
    except Exception as exc:  # not installed, or its imports fail
        return {"available": False, "reason": f"breaching is not installed here ({type(exc).__name__}: {exc})"}
    observation = observe_fedsgd(model, images, labels)
    gradients = [observation.gradients[name] for name, _ in model.named_parameters()]
    metadata = _Meta(shape=tuple(images.shape[1:]), modality="vision", classes=8)
    payload = {"parameters": [p.detach().clone() for p in model.parameters()], "buffers": None, "metadata": metadata}
    out = {"available": True, "version": getattr(breaching, "__version__", "?")}
    for attack, config, steps in (("ig", "invertinggradients", IG_STEPS), ("dlg", "deepleakage", DLG_STEPS)):
        try:
            cfg = breaching.get_config(overrides=[f"attack={config}", "case=1_single_image_small"])
            cfg.attack.optim.max_iterations = steps
            cfg.attack.optim.callback = max(steps, 1)
            if attack == "dlg":  # labels are given: breaching refuses joint optimisation with known labels
                cfg.attack.attack_type = "optimization"
            attacker = breaching.attacks.prepare_attack(model, torch.nn.CrossEntropyLoss(), cfg.attack,
                                                        dict(device=torch.device("cpu"), dtype=torch.float))
            shared = {"gradients": [g.clone() for g in gradients], "buffers": None,
                      "metadata": _Meta(num_data_points=len(labels), labels=labels.clone(), local_hyperparams=None)}
            started = time.perf_counter()
            data, _stats = attacker.reconstruct([payload], [shared], {}, dryrun=False)
            seconds = time.perf_counter() - started
            result = Reconstruction(data["data"].detach().clamp(0, 1), labels, math.nan, seconds, {})
            out[attack] = {**score(images, labels, result), "steps": steps}
        except Exception as exc:
            out[attack] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def sweep() -> dict:
    rows = []
    for task_name in ("digits", "styles"):
        task = load_task("digits") if task_name == "digits" else styles_task()
        data = task.train_set()
        model = task.build_model(0)
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
        for batch_size in (1, 4, 16):
            per_case: dict[str, list[dict]] = {}
            for trial in range(3):
                index = order[trial * batch_size:(trial + 1) * batch_size]
                images, labels = data.images[index], data.labels[index]
                cases = [("dlg", "fedsgd", 1), ("ig", "fedsgd", 1), ("ig", "fedavg", 2), ("ig", "fedavg", 4)]
                for attack, kind, steps in cases:
                    if kind == "fedsgd":
                        observation = observe_fedsgd(model, images, labels)
                    else:
                        observation = observe_fedavg(model, images, labels, lr=LOCAL_LR, steps=steps,
                                                     batch_size=math.ceil(batch_size / steps))
                    result = reconstruct(attack, model, observation, labels=labels,
                                         steps=DLG_STEPS if attack == "dlg" else IG_STEPS,
                                         generator=torch.Generator().manual_seed(trial))
                    name = f"{attack} {kind}" + (f" K={steps}" if kind == "fedavg" else "")
                    per_case.setdefault(name, []).append(score(images, labels, result))
                    print(task_name, batch_size, trial, name, per_case[name][-1], flush=True)
            for name, scores in per_case.items():
                ssims = [s["ssim"] for s in scores]
                rows.append({"task": task_name, "batch_size": batch_size, "case": name, "batches": len(scores),
                             "psnr_mean": round(statistics.mean(s["psnr"] for s in scores), 2),
                             "psnr_min": min(s["psnr"] for s in scores), "psnr_max": max(s["psnr"] for s in scores),
                             "ssim_mean": None if None in ssims else round(statistics.mean(ssims), 3),
                             "seconds_mean": round(statistics.mean(s["seconds"] for s in scores), 2)})
    return {"rows": rows, "steps": {"dlg": f"{DLG_STEPS} L-BFGS steps x <=20 iterations", "ig": f"{IG_STEPS} signed-Adam"},
            "notes": ["labels known; models at their seed-0 initialisation (round 1); SSIM needs >= 11x11 "
                      "pixels, so digits (8x8) has none"]}


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="fl_leakage", description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer", choices=["breaching"], default=None, help="also run the case through breaching")
    parser.add_argument("--sweep", action="store_true", help="measure the README table instead of the fixed case")
    parser.add_argument("--output", type=Path, default=None, help="the JSON file to write")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    env = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    if args.sweep:
        result = {"benchmark": "fl_leakage_sweep", **sweep(), "environment": env}
        output = args.output or RESULTS / "fl_leakage_sweep.json"
    else:
        _task, model, images, labels = fixed_case()
        result = {"benchmark": "fl_leakage", "case": "styles CNN seed 0, batch 4, labels known, FedSGD",
                  "ours": ours(model, images, labels), "environment": env}
        if args.peer == "breaching":
            result["breaching"] = peer_breaching(model, images, labels)
        output = args.output or RESULTS / "fl_leakage.json"
        for side in ("ours", "breaching"):
            for attack, row in result.get(side, {}).items():
                if isinstance(row, dict):
                    print(f"{side:9s} {attack:4s} {row}")
        if "breaching" in result and not result["breaching"].get("available", True):
            print(result["breaching"]["reason"])
    write_json_atomic(output, result)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
