"""Label recovery from FedSGD gradients and FedAvg updates: every method of ``fl_bridge.leakage.labels`` on
batches with duplicate labels, on the digits MLP and the styles CNN, untrained and briefly trained.

For each task, model state, batch size B and observation kind, ``--trials`` random batches are drawn with
duplicate labels forced: the batch's labels come uniformly from ``max(1, min(C, B // 2))`` randomly chosen
classes, and each sample is a random training image of its label. The server observes either the FedSGD
gradient (mean cross-entropy over the batch) or a FedAvg update of ``--local-steps`` full-batch SGD steps with
``--local-lr`` turned into the pseudo-gradient ``(w_before − w_after) / (lr · steps)``. Every method then
recovers B labels; reported per cell: ``label`` = mean |multiset intersection| / B, ``count`` = mean fraction
of classes whose count is exact, ``exact`` = fraction of batches recovered exactly; ``n/a`` where the method
refuses (idlg beyond batch 1, analytic/yin beyond C samples). "trained-Nep" is N epochs (each of
``--train-epochs``) of SGD (lr 0.05, batch 32) on the training set from the untrained model; its test accuracy
is recorded. The last column is ``zero-shot`` on the weight rows (``use_bias=False``, Geng et al.'s formula).

    python benchmarks/fl_labels.py [--tasks digits styles] [--batches 1 4 16 64] [--trials 20]
                                   [--local-steps 4] [--local-lr 0.05] [--train-epochs 2 8] [--output FILE]

Writes ``benchmarks/results/fl_labels.json`` and prints a markdown table. A smoke run takes seconds:
``--tasks digits --batches 1 4 --trials 2 --output x.json``.
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from artshield.cli_support import ArgumentParser, positive_int
from artshield.errors import InvalidArgumentError
from artshield.fileio import write_json_atomic
from artshield.fl_bridge.leakage.labels import LABEL_METHODS, label_metrics, recover_labels
from artshield.fl_bridge.tasks import load_task
from artshield.fl_bridge.training import LocalTraining, evaluate_model, train_locally
from artshield.fl_bridge.updates import ParameterLayout

# Every method, plus zero-shot on the weight rows (Geng et al.'s paper formula) next to its bias default.
METHODS: tuple[str, ...] = (*LABEL_METHODS, "zero-shot/weight")

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "fl_labels.json"
TASK_SETTINGS = {"digits": {}, "styles": {"num_samples": 800, "num_test": 400}}


def duplicate_batch(labels: torch.Tensor, num_classes: int, batch_size: int,
                    generator: torch.Generator) -> torch.Tensor:
    """Indices of a batch whose labels come from max(1, min(C, B // 2)) random classes (duplicates forced)."""
    k = max(1, min(num_classes, batch_size // 2))
    classes = torch.randperm(num_classes, generator=generator)[:k]
    chosen = classes[torch.randint(k, (batch_size,), generator=generator)]
    indices = []
    for c in chosen.tolist():
        pool = torch.nonzero(labels == c).flatten()
        indices.append(int(pool[torch.randint(len(pool), (1,), generator=generator)]))
    return torch.tensor(indices)


def observe(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int,
            lr: float) -> dict[str, torch.Tensor]:
    """FedSGD gradient (steps == 0) or the FedAvg pseudo-gradient of `steps` full-batch SGD steps."""
    params = dict(model.named_parameters())
    if steps == 0:
        loss = F.cross_entropy(model(images), labels)
        return dict(zip(params, (g.detach() for g in torch.autograd.grad(loss, list(params.values()))), strict=True))
    start = {n: p.detach().clone() for n, p in params.items()}
    local = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
    for _ in range(steps):
        loss = F.cross_entropy(torch.func.functional_call(model, local, (images,)), labels)
        grads = torch.autograd.grad(loss, list(local.values()))
        local = {n: (v - lr * g).detach().requires_grad_(True) for (n, v), g in zip(local.items(), grads, strict=True)}
    return {n: (start[n] - local[n].detach()) / (lr * steps) for n in params}


def trained_model(task, epochs: int, seed: int) -> tuple[torch.nn.Module, float]:
    model = task.build_model(seed)
    layout = ParameterLayout.from_arrays(model.state_dict())
    vector = layout.flatten(model.state_dict())
    if epochs:
        delta = train_locally(model, layout, vector, task.train_set(), LocalTraining(epochs=epochs, lr=0.05),
                              torch.Generator().manual_seed(seed))
        vector = vector + delta
        state = layout.unflatten(vector)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(state[name])
    accuracy = evaluate_model(model, layout, vector, task.test_set())["accuracy"]
    return model, accuracy


def measure(task_name: str, batches: list[int], trials: int, local_steps: int, local_lr: float,
            train_epochs: list[int], seed: int) -> list[dict]:
    task = load_task(task_name, **TASK_SETTINGS.get(task_name, {}))
    data = task.train_set()
    rows = []
    states = [("untrained", 0)] + [(f"trained-{e}ep", e) for e in train_epochs]
    for state_name, epochs in states:
        model, accuracy = trained_model(task, epochs, seed)
        for kind, steps in (("fedsgd", 0), (f"fedavg-{local_steps}", local_steps)):
            for batch in batches:
                generator = torch.Generator().manual_seed(seed * 7919 + batch)
                scores = {m: [] for m in METHODS}
                seconds = {m: 0.0 for m in METHODS}
                for _trial in range(trials):
                    index = duplicate_batch(data.labels, task.num_classes, batch, generator)
                    images, labels = data.images[index], data.labels[index]
                    gradients = observe(model, images, labels, steps, local_lr)
                    for method in METHODS:
                        begin = time.perf_counter()
                        name, _, variant = method.partition("/")
                        try:
                            result = recover_labels(name, gradients, model, batch_size=batch,
                                                    num_classes=task.num_classes,
                                                    generator=torch.Generator().manual_seed(_trial),
                                                    local_steps=max(steps, 1), local_lr=local_lr if steps else None,
                                                    input_shape=task.input_shape,
                                                    use_bias=False if variant == "weight" else None)
                        except InvalidArgumentError:
                            scores[method] = None
                            continue
                        seconds[method] += time.perf_counter() - begin
                        if scores[method] is not None:
                            scores[method].append(label_metrics(result.labels, labels, task.num_classes))
                for method in METHODS:
                    cell = {"task": task_name, "model": state_name, "test_accuracy": accuracy, "kind": kind,
                            "batch": batch, "method": method, "trials": trials}
                    if scores[method] is None:
                        cell.update(label=None, count=None, exact=None, seconds=None)
                    else:
                        for key, out in (("label_accuracy", "label"), ("count_accuracy", "count"), ("exact", "exact")):
                            cell[out] = sum(s[key] for s in scores[method]) / trials
                        cell["seconds"] = seconds[method] / trials
                    rows.append(cell)
                    shown = "n/a" if cell["label"] is None else f"{cell['label']:.3f} {cell['count']:.3f}"
                    print(f"{task_name:7s} {state_name:9s} {kind:9s} B={batch:3d} {method:9s} {shown}", file=sys.stderr)
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: one row per task / model / observation / batch, a `label / count / exact` cell per method."""
    lines = ["| task | model (test acc) | update | B | " + " | ".join(METHODS) + " |",
             "|---|---|---|---|" + "---|" * len(METHODS)]
    keys = []
    for r in rows:
        key = (r["task"], r["model"], r["kind"], r["batch"])
        if key not in keys:
            keys.append(key)
    for key in keys:
        cells = {r["method"]: r for r in rows if (r["task"], r["model"], r["kind"], r["batch"]) == key}
        accuracy = next(iter(cells.values()))["test_accuracy"]
        values = []
        for method in METHODS:
            r = cells[method]
            values.append("n/a" if r["label"] is None else f"{r['label']:.3f} / {r['count']:.3f} / {r['exact']:.2f}")
        lines.append(f"| {key[0]} | {key[1]} ({accuracy:.2f}) | {key[2]} | {key[3]} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="fl_labels.py", description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["digits", "styles"], choices=["digits", "styles"])
    parser.add_argument("--batches", nargs="+", type=positive_int, default=[1, 4, 16, 64])
    parser.add_argument("--trials", type=positive_int, default=20)
    parser.add_argument("--local-steps", type=positive_int, default=4)
    parser.add_argument("--local-lr", type=float, default=0.05)
    parser.add_argument("--train-epochs", nargs="*", type=positive_int, default=[2, 8])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    begin = time.perf_counter()
    rows = []
    for name in args.tasks:
        rows.extend(measure(name, args.batches, args.trials, args.local_steps, args.local_lr, args.train_epochs,
                            args.seed))
    result = {"command": "python benchmarks/fl_labels.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "threads": torch.get_num_threads()},
              "seconds": time.perf_counter() - begin, "rows": rows}
    write_json_atomic(args.output, result)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
