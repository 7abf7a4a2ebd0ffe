"""FL throughput: client updates per second of run_federation (Flower's loop, in-process) vs bare loops.

Three ways to do the same federated rounds (same task, partitions, model, local SGD settings, FedAvg mean):

- ``bare``: a hand-written PyTorch loop: for every client, load the global vector into the model, run
  mini-batch SGD with ``torch.optim.SGD``, take the delta; average; no Flower, no artshield training code;
- ``train_locally``: the same loop calling ``fl_bridge.training.train_locally`` (what clients run);
- ``flower``: ``run_federation(engine="inprocess")``: Flower's ``Strategy.start`` on ``LocalGrid``, a
  ``ClientApp`` per update, ``ArrayRecord`` serialisation both ways, reply validation, RobustStrategy with
  the registry's ``fedavg`` rule.

Client updates/s = clients per round × rounds / seconds of the rounds (central evaluation excluded for all
three). Repeats alternate between the three so drift of the machine hits them alike; medians are printed
and saved to ``benchmarks/results/fl_throughput.json``. Goal: ≥ 1,000 updates/s for ``flower`` on digits.

    python benchmarks/fl_throughput.py [--task digits] [--clients 100] [--rounds 10] [--repeats 3] [--output FILE]
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import torch  # noqa: E402

from artshield.cli_support import ArgumentParser, positive_int  # noqa: E402
from artshield.fileio import write_json_atomic  # noqa: E402
from artshield.fl_bridge import partition as P  # noqa: E402
from artshield.fl_bridge import tasks  # noqa: E402
from artshield.fl_bridge import training as T  # noqa: E402
from artshield.fl_bridge.federation import FederationConfig, run_federation  # noqa: E402
from artshield.fl_bridge.updates import ParameterLayout  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def setup(task_name: str, clients: int, seed: int):
    task = tasks.load_task(task_name)
    train = task.train_set()
    parts = P.partition(train.labels, clients, "iid", seed=seed)
    model = task.build_model(seed)
    layout = ParameterLayout.from_arrays(model.state_dict())
    return task, train, parts, model, layout


def bare_loop(task_name: str, clients: int, rounds: int, config, seed: int) -> float:
    """Seconds for `rounds` rounds of hand-written FedAvg with torch.optim.SGD."""
    _, train, parts, model, _ = setup(task_name, clients, seed)
    data = [(train.images[p], train.labels[p]) for p in parts]
    params = [p for p in model.parameters()]
    global_vector = torch.nn.utils.parameters_to_vector(params).detach().clone()
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(rounds):
        total = torch.zeros_like(global_vector)
        for images, labels in data:
            torch.nn.utils.vector_to_parameters(global_vector, params)
            optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                                        weight_decay=config.weight_decay)
            for _ in range(config.epochs):
                order = torch.randperm(len(labels), generator=generator)
                for i in range(0, len(labels), config.batch_size):
                    batch = order[i:i + config.batch_size]
                    optimizer.zero_grad(set_to_none=True)
                    loss_fn(model(images[batch]), labels[batch]).backward()
                    optimizer.step()
            total += torch.nn.utils.parameters_to_vector(params).detach() - global_vector
        global_vector = global_vector + total / len(data)
    return time.perf_counter() - start


def train_locally_loop(task_name: str, clients: int, rounds: int, config, seed: int) -> float:
    """Seconds for the same rounds with fl_bridge.training.train_locally and no Flower."""
    _, train, parts, model, layout = setup(task_name, clients, seed)
    data = [train.subset(p) for p in parts]
    global_vector = layout.flatten(model.state_dict())
    start = time.perf_counter()
    for r in range(rounds):
        deltas = [T.train_locally(model, layout, global_vector, d, config, torch.Generator().manual_seed(r * 7919 + i))
                  for i, d in enumerate(data)]
        global_vector = global_vector + torch.stack(deltas).mean(0)
    return time.perf_counter() - start


def flower_run(task_name: str, clients: int, rounds: int, config, seed: int) -> tuple[float, float]:
    """(seconds of the rounds, final accuracy) of run_federation in-process."""
    result = run_federation(FederationConfig(task=task_name, num_clients=clients, rounds=rounds, training=config,
                                             seed=seed, engine="inprocess"))
    return sum(r["seconds"] for r in result.rounds), result.rounds[-1]["accuracy"]


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="fl_throughput", description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="digits")
    parser.add_argument("--clients", type=positive_int, default=100)
    parser.add_argument("--rounds", type=positive_int, default=10)
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", default="")
    parser.add_argument("--output", default=str(RESULTS / "fl_throughput.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = T.LocalTraining()
    updates = args.clients * args.rounds
    seconds: dict[str, list[float]] = {"bare": [], "train_locally": [], "flower": []}
    accuracy = None
    for warm_up in (bare_loop, train_locally_loop, flower_run):  # first-call costs (autograd, imports) once
        warm_up(args.task, args.clients, 1, config, args.seed)
    for repeat in range(args.repeats):
        seconds["bare"].append(bare_loop(args.task, args.clients, args.rounds, config, args.seed))
        seconds["train_locally"].append(train_locally_loop(args.task, args.clients, args.rounds, config, args.seed))
        flower_seconds, accuracy = flower_run(args.task, args.clients, args.rounds, config, args.seed)
        seconds["flower"].append(flower_seconds)
        print(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(
            f"{k} {updates / v[-1]:.0f}/s" for k, v in seconds.items()), file=sys.stderr)
    rate = {k: updates / statistics.median(v) for k, v in seconds.items()}
    report = {
        "task": args.task, "clients_per_round": args.clients, "rounds": args.rounds, "repeats": args.repeats,
        "local_training": vars(config), "updates_per_second": {k: round(v, 1) for k, v in rate.items()},
        "seconds": seconds, "ratio_flower_to_bare": round(rate["flower"] / rate["bare"], 3),
        "ratio_flower_to_train_locally": round(rate["flower"] / rate["train_locally"], 3),
        "goal_updates_per_second": 1000, "meets_goal": rate["flower"] >= 1000, "final_accuracy_flower": accuracy,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "cpus": os.cpu_count()}, "note": args.note,
    }
    for k, v in rate.items():
        print(f"{k:>14}: {v:8.0f} client updates/s")
    print(f"flower / bare = {report['ratio_flower_to_bare']:.2f}, "
          f"flower / train_locally = {report['ratio_flower_to_train_locally']:.2f}")
    write_json_atomic(args.output, report, what="benchmark result")
    print(f"saved {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
