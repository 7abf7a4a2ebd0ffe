"""One federated run: task, partitions, clients (some malicious), a defense, Flower's loop, metrics per round.

:func:`run_federation` builds the task's data and model, splits the training set into client partitions,
picks the malicious clients (a fixed set drawn from the seed), builds the ClientApp
(:func:`~artshield.fl_bridge.clients.build_client_app`) and the strategy (a
:class:`~artshield.fl_bridge.strategy.RobustStrategy` around a rule from the defense registry, or one of
Flower's own through :func:`~artshield.fl_bridge.strategy.flower_strategy`), and drives Flower's own
``Strategy.start`` on

- ``engine="inprocess"``: :class:`~artshield.fl_bridge.grid.LocalGrid` (no Ray; deterministic), or
- ``engine="ray"``: Flower's Simulation Engine (Ray actors).

Model-poisoning attackers get the round's updates through :class:`~artshield.fl_bridge.grid.OmniscientExchange`
(a second ``train.craft`` message in the Flower message flow). The global model is evaluated centrally on
the task's test set after every round (accuracy, loss, and attack success rate for targeted attacks).

A curious server: ``config.leakage`` (the experiment's [leakage] table) gives the attacked clients only
``batch_size`` of their samples (:func:`attacked_partitions`), and an `observer` passed to :func:`run_federation` (e.g.
:class:`~artshield.fl_bridge.leakage.runner.CuriousServer`) is handed every accepted reply's delta, inside the
normal message flow: ``observer(server_round, partition_id, delta, global_vector, num_examples)``, after
``observer.attach(task=, model=, layout=, train_set=, partitions=, training=, seed=)`` when it has that method.
With ``privacy`` (a :class:`~artshield.fl_bridge.privacy.DPConfig`) the strategy is wrapped in
:class:`~artshield.fl_bridge.privacy.UserLevelDP`: user-level DP-FedAvg with Poisson sampling at ``fraction``;
every round's record carries the cumulative ``epsilon`` and the result's ``privacy`` the mechanism and ε spent.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..errors import DependencyError, InvalidArgumentError

logger = logging.getLogger(__name__)

ENGINES = ("inprocess", "ray")
PARTITION_SCHEMES = ("iid", "dirichlet", "shards")


def _default_training():
    from .training import LocalTraining

    return LocalTraining()


@dataclass
class FederationConfig:
    """Everything one federated run needs (the experiment file's fields)."""

    task: str = "digits"
    task_params: dict = field(default_factory=dict)
    data_root: str | None = None  # torchvision tasks read their data from here only
    num_clients: int = 10
    partition: str = "iid"  # iid | dirichlet | shards
    alpha: float = 0.5  # Dirichlet concentration
    shards_per_client: int = 2
    fraction: float = 1.0  # share of clients sampled every round
    rounds: int = 5
    training: Any = field(default_factory=_default_training)  # fl_bridge.training.LocalTraining
    attack: str | None = None
    attack_params: dict = field(default_factory=dict)
    malicious_fraction: float = 0.0  # share of all clients that are malicious (a fixed set drawn from seed)
    defense: str = "fedavg"  # a defenses.registry name, or flower-krum|flower-multikrum|flower-bulyan|...
    defense_params: dict = field(default_factory=dict)
    max_update_norm: float | None = None  # replies whose delta norm is above are dropped as malformed
    root_size: int = 100  # examples of the server's clean root data (FLTrust, SkyMask)
    seed: int = 0
    engine: str = "inprocess"  # inprocess | ray
    ray_num_cpus: int | None = None  # CPUs Ray may use (engine="ray"); None: Ray's default
    leakage: dict | None = None  # [leakage] settings: the attacked clients hold only batch_size of their samples
    privacy: Any = None  # fl_bridge.privacy.DPConfig: user-level DP-FedAvg (Poisson sampling at `fraction`)

    def validate(self) -> FederationConfig:
        """Raises InvalidArgumentError naming the first bad field."""
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise InvalidArgumentError(f"{name} {what}, got {getattr(self, name)!r}")

        need(isinstance(self.num_clients, int) and self.num_clients >= 1, "num_clients", "must be a positive integer")
        need(isinstance(self.rounds, int) and self.rounds >= 1, "rounds", "must be a positive integer")
        need(_number(self.fraction) and 0 < self.fraction <= 1, "fraction", "must be in (0, 1]")
        need(_number(self.malicious_fraction) and 0 <= self.malicious_fraction < 1, "malicious_fraction",
             "must be in [0, 1)")
        need(self.partition in PARTITION_SCHEMES, "partition", f"must be one of {', '.join(PARTITION_SCHEMES)}")
        need(_number(self.alpha) and self.alpha > 0, "alpha", "must be a positive number")
        need(isinstance(self.shards_per_client, int) and self.shards_per_client >= 1, "shards_per_client",
             "must be a positive integer")
        need(self.engine in ENGINES, "engine", f"must be one of {', '.join(ENGINES)}")
        need(isinstance(self.seed, int), "seed", "must be an integer")
        need(isinstance(self.root_size, int) and self.root_size >= 1, "root_size", "must be a positive integer")
        need(self.max_update_norm is None or (_number(self.max_update_norm) and self.max_update_norm > 0),
             "max_update_norm", "must be a positive number")
        need(self.ray_num_cpus is None or (isinstance(self.ray_num_cpus, int) and self.ray_num_cpus >= 1),
             "ray_num_cpus", "must be a positive integer")
        need(isinstance(self.defense, str) and bool(self.defense), "defense", "must name a defense")
        if self.malicious_fraction > 0:
            need(isinstance(self.attack, str) and bool(self.attack), "attack",
                 "must name an attack when malicious_fraction > 0")
        if self.privacy is not None:
            need(hasattr(self.privacy, "resolve"), "privacy", "must be a fl_bridge.privacy.DPConfig")
            need(not self.defense.startswith("flower-"), "defense",
                 "must be a registry defense under privacy (Flower's own strategies sample and aggregate themselves)")
            self.privacy.validate()
        return self

    @property
    def clients_per_round(self) -> int:
        return max(1, int(self.num_clients * self.fraction))

    @property
    def num_malicious(self) -> int:
        return int(round(self.malicious_fraction * self.num_clients)) if self.attack else 0

    def to_dict(self) -> dict:
        out = asdict(self) if not hasattr(self.training, "__dataclass_fields__") else {
            **{k: v for k, v in asdict(self).items() if k != "training"}, "training": asdict(self.training)}
        if self.privacy is None:
            out.pop("privacy", None)
        return out


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def attacked_partitions(partitions: list[torch.Tensor], leakage: dict, seed: int = 0) -> list[torch.Tensor]:
    """`partitions` where each client a curious server attacks (``leakage["clients"]``) keeps only
    ``leakage["batch_size"]`` of its samples (drawn once from `seed` and the client, in dataset order: its "first
    batch"), so that its update is that batch's; refuses a batch larger than such a client's data (one line
    naming ``[leakage] batch_size`` and the client)."""
    batch = int(leakage["batch_size"])
    out = list(partitions)
    for pid in leakage["clients"]:
        if not 0 <= pid < len(out):
            raise InvalidArgumentError(f"[leakage] clients names partition {pid}, but there are {len(out)} clients")
        if len(out[pid]) < batch:
            raise InvalidArgumentError(f"[leakage] batch_size {batch} is larger than client {pid}'s data "
                                       f"({len(out[pid])} samples); lower it (--batch-size in `fl leak`) or attack "
                                       "another client")
        generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(pid))
        out[pid] = out[pid][torch.randperm(len(out[pid]), generator=generator)[:batch].sort().values]
    return out


@dataclass
class FederationResult:
    """Per-round records (round, accuracy, loss, asr, tpr, fpr, dropped, seconds, ...) and the final model."""

    config: FederationConfig
    rounds: list[dict]
    initial: dict  # central evaluation of the initial model (round 0)
    final_vector: torch.Tensor
    malicious_clients: list[int]  # partition ids
    seconds: float  # wall time of the whole run, set-up included
    privacy: dict | None = None  # under user-level DP: the mechanism and the (epsilon, delta) spent

    @property
    def epsilon(self) -> float | None:
        """Cumulative ε spent by the run (None without privacy, or with a rule the accounting does not cover)."""
        return None if self.privacy is None else self.privacy.get("epsilon")

    @property
    def final(self) -> dict:
        return self.rounds[-1] if self.rounds else self.initial

    def to_dict(self) -> dict:
        out = {"config": self.config.to_dict(), "initial": self.initial, "rounds": self.rounds,
               "malicious_clients": self.malicious_clients, "seconds": self.seconds}
        if self.privacy is not None:
            out["privacy"] = self.privacy
        return out


@contextlib.contextmanager
def _flower_log_level(level: int):
    import flwr.app  # noqa: F401  (importing Flower sets its logger to DEBUG: do it before changing the level)

    flower = logging.getLogger("flwr")
    old = flower.level
    flower.setLevel(level)
    try:
        yield
    finally:
        flower.setLevel(old)


class _Setup:
    """What both engines share: data, model, attack, defense, evaluation."""

    def __init__(self, config: FederationConfig):
        from . import partition as P
        from . import tasks
        from . import training as T
        from .attacks.base import TrainingAttack
        from .updates import ParameterLayout

        self.config = config
        self.task = tasks.load_task(config.task, root=config.data_root, **config.task_params)
        train_set = self.task.train_set()
        self.train_set = train_set
        self.test_set = self.task.test_set()
        self.partitions = P.partition(train_set.labels, config.num_clients, config.partition, alpha=config.alpha,
                                      shards_per_client=config.shards_per_client, seed=config.seed)
        if config.leakage:
            self.partitions = attacked_partitions(self.partitions, config.leakage, config.seed)
        self.model = self.task.build_model(config.seed)
        self.layout = ParameterLayout.from_arrays(self.model.state_dict())
        generator = torch.Generator().manual_seed(config.seed)
        order = torch.randperm(config.num_clients, generator=generator)
        self.malicious_clients = sorted(int(i) for i in order[:config.num_malicious])
        self.attack = None
        if self.malicious_clients:
            from .attacks.registry import make_attack

            self.attack = make_attack(config.attack, **config.attack_params)
        root_index = torch.randperm(len(train_set), generator=generator)[:config.root_size]
        self.root = T.RootData(self.task.build_model(config.seed), self.layout, train_set.subset(root_index),
                               config.training, torch.Generator().manual_seed(config.seed + 1))
        self.targeted = isinstance(self.attack, TrainingAttack) and self.attack.targeted
        self.clients_per_round = config.clients_per_round
        self.num_malicious_per_round = int(round(len(self.malicious_clients) * self.clients_per_round
                                                 / config.num_clients))
        self.dp = None  # the resolved user-level DP mechanism (privacy.ResolvedDP), if any
        if config.privacy is not None:
            self.dp = config.privacy.resolve(config.num_clients, config.rounds, config.fraction)

    def client_app(self):
        from .clients import build_client_app

        return build_client_app(self.task, self.partitions, self.config.training,
                                malicious={pid: self.attack for pid in self.malicious_clients},
                                seed=self.config.seed, defense=self.config.defense)

    def strategy(self, malicious_nodes: set[int], observer=None):
        from .strategy import RobustStrategy, flower_strategy

        c = self.config
        common = dict(fraction_train=c.fraction, fraction_evaluate=0.0, min_train_nodes=1, min_evaluate_nodes=0,
                      min_available_nodes=c.num_clients)
        with _flower_log_level(logging.ERROR):  # FedAvg warns that fraction_evaluate=0 skips client evaluation
            if c.defense.startswith("flower-"):
                params = dict(c.defense_params)
                if c.defense != "flower-median" and c.defense != "flower-trimmedmean":
                    params.setdefault("num_malicious_nodes", self.num_malicious_per_round)
                return flower_strategy(c.defense, layout=self.layout, malicious_nodes=malicious_nodes,
                                       max_update_norm=c.max_update_norm, seed=c.seed, observer=observer, **common,
                                       **params)
            from .defenses.registry import make_defense

            rule = make_defense(c.defense, root=self.root, num_malicious=self.num_malicious_per_round,
                                **c.defense_params)
            if self.dp is not None:  # user-level DP samples (Poisson) among all nodes itself
                from .privacy import UserLevelDP

                common["fraction_train"] = 1.0
                inner = RobustStrategy(rule, self.layout, malicious_nodes=malicious_nodes,
                                       max_update_norm=c.max_update_norm, seed=c.seed, observer=observer, **common)
                return UserLevelDP(inner, self.dp, seed=c.seed)
            return RobustStrategy(rule, self.layout, malicious_nodes=malicious_nodes,
                                  max_update_norm=c.max_update_norm, seed=c.seed, observer=observer, **common)

    def evaluate(self, vector: torch.Tensor) -> dict:
        from . import training as T

        result = {k: float(v) for k, v in T.evaluate_model(self.model, self.layout, vector, self.test_set).items()}
        result["asr"] = None
        if self.targeted:
            asr = T.attack_success_rate(self.model, self.layout, vector, self.test_set, self.attack)
            result["asr"] = None if asr is None else float(asr)
        return result


def _drive(setup: _Setup, grid, progress: Callable[[dict], None] | None,
           observer=None) -> tuple[list[dict], dict, torch.Tensor]:
    """Flower's ``Strategy.start`` on `grid`; returns (round records, initial evaluation, final vector)."""
    from flwr.app import ConfigRecord, MetricRecord

    from . import messages as M
    from .attacks.base import ModelPoisoning
    from .grid import OmniscientExchange, discover_partitions

    partition_of = discover_partitions(grid, setup.config.num_clients)
    malicious_nodes = {node for node, pid in partition_of.items() if pid in set(setup.malicious_clients)}
    watch = None
    if observer is not None:
        if hasattr(observer, "attach"):
            observer.attach(task=setup.task, model=setup.model, layout=setup.layout, train_set=setup.train_set,
                            partitions=setup.partitions, training=setup.config.training, seed=setup.config.seed)

        def watch(server_round, node_id, delta, global_vector, num_examples):
            observer(server_round, partition_of[node_id], delta, global_vector, num_examples)

    strategy = setup.strategy(malicious_nodes, observer=watch)
    if isinstance(setup.attack, ModelPoisoning):
        grid = OmniscientExchange(grid, malicious_nodes, share_benign=setup.attack.needs_benign)
    records: list[dict] = []
    initial: dict = {}
    final = {"vector": None}

    def evaluate_fn(server_round: int, arrays) -> MetricRecord:
        vector = M.arrays_to_vector(arrays, setup.layout)
        final["vector"] = vector
        result = setup.evaluate(vector)
        if server_round == 0:
            initial.update(result)
        else:
            metrics = dict(getattr(strategy, "round_metrics", {}).get(server_round, {}))
            record = {"round": server_round, **result, "tpr": metrics.get("tpr"), "fpr": metrics.get("fpr"),
                      "dropped": int(metrics.get("dropped", 0)), "seconds": strategy.round_seconds(server_round),
                      "sampled": int(metrics.get("sampled", 0)),
                      "sampled_malicious": int(metrics.get("sampled-malicious", 0)),
                      "kept_model": server_round in getattr(strategy, "kept_model", set()),
                      "metrics": metrics}
            if "epsilon" in metrics:
                record["epsilon"] = float(metrics["epsilon"])
            records.append(record)
            if progress is not None:
                progress(record)
        return MetricRecord({k: v for k, v in result.items() if v is not None})

    initial_arrays = M.state_to_arrays(setup.model.state_dict())
    strategy.start(grid=grid, initial_arrays=initial_arrays, num_rounds=setup.config.rounds,
                   train_config=ConfigRecord({M.NUM_CLIENTS: setup.clients_per_round}), evaluate_fn=evaluate_fn)
    if hasattr(strategy, "privacy_report"):
        setup.privacy_report = strategy.privacy_report()
    return records, initial, final["vector"]


def run_federation(config: FederationConfig, progress: Callable[[dict], None] | None = None,
                   observer=None) -> FederationResult:
    """Run one federation (see the module docstring); `progress` is called with each finished round's record,
    `observer` with every accepted reply (a curious server; see the module docstring)."""
    config.validate()
    start = time.perf_counter()
    setup = _Setup(config)
    with _flower_log_level(logging.WARNING):
        if config.engine == "inprocess":
            records, initial, vector = _run_inprocess(setup, progress, observer)
        else:
            records, initial, vector = _run_ray(setup, progress, observer)
    return FederationResult(config=config, rounds=records, initial=initial, final_vector=vector,
                            malicious_clients=list(setup.malicious_clients), seconds=time.perf_counter() - start,
                            privacy=getattr(setup, "privacy_report", None))


def _run_inprocess(setup: _Setup, progress, observer=None):
    from .grid import LocalGrid

    grid = LocalGrid(setup.client_app(), setup.config.num_clients, seed=setup.config.seed)
    return _drive(setup, grid, progress, observer)


class _StopFlag(Exception):
    pass


def _stoppable(grid, stop):
    """The Simulation Engine's grid, polled faster than its 0.1 s and abandoned when `stop` is set.

    If Ray crashes, Flower 1.42 leaves the ServerApp thread waiting for replies (or for nodes) forever and
    the process cannot exit; this wrapper makes that thread raise instead."""
    from flwr.serverapp import Grid

    class StoppableGrid(Grid):
        def set_run(self, run):
            grid.set_run(run)

        @property
        def run(self):
            return grid.run

        def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
            return grid.create_message(content, message_type, dst_node_id, group_id, ttl)

        def get_node_ids(self):
            if stop.is_set():
                raise _StopFlag("the simulation stopped")
            return grid.get_node_ids()

        def push_messages(self, messages):
            return grid.push_messages(messages)

        def pull_messages(self, message_ids):
            return grid.pull_messages(message_ids)

        def send_and_receive(self, messages, *, timeout=None):
            pending = set(self.push_messages(messages))
            end = None if timeout is None else time.monotonic() + timeout
            out = []
            while pending and (end is None or time.monotonic() < end):
                if stop.is_set():
                    raise _StopFlag("the simulation stopped")
                replies = list(self.pull_messages(pending))
                out.extend(replies)
                pending -= {r.metadata.reply_to_message_id for r in replies}
                if pending:
                    stop.wait(0.01)
            return out

    return StoppableGrid()


_NO_RAY = "engine 'ray' needs Flower's simulation extra (Ray): pip install 'flwr[simulation]'"


def _run_ray(setup: _Setup, progress, observer=None):
    """Flower's Simulation Engine (Ray). Flower 1.42's non-deprecated path is the ``flwr run`` CLI on an app
    folder (see ``examples/fl_app``), which cannot run a ServerApp/ClientApp built in this process; the
    Python entry point for that is ``flwr.simulation.run_simulation``, deprecated but present in 1.42."""
    import importlib.util
    import os
    import shutil
    import tempfile
    import threading
    import warnings

    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    # Flower 1.42 answers a missing Ray with flwr_exit(701): SystemExit(1) *and* a daemon thread that
    # os._exit()s the whole process seconds later, so catching SystemExit is not enough: check first.
    if importlib.util.find_spec("ray") is None:
        raise DependencyError(_NO_RAY)
    outcome: dict = {}
    stop = threading.Event()
    server_app = ServerApp()

    @server_app.main()
    def main(grid, context) -> None:
        outcome["result"] = _drive(setup, _stoppable(grid, stop), progress, observer)

    # Ray's AF_UNIX socket paths must stay under 107 bytes: give it a short session folder of its own
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
    backend_config: dict = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                            "init_args": {"include_dashboard": False, "_temp_dir": temp_dir}}
    if setup.config.ray_num_cpus is not None:
        backend_config["init_args"]["num_cpus"] = setup.config.ray_num_cpus
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            run_simulation(server_app=server_app, client_app=setup.client_app(),
                           num_supernodes=setup.config.num_clients, backend_config=backend_config)
    except SystemExit as exit_:  # flwr_exit: 701 (SIMULATION_MISSING_EXTRA) in older Flower, 1 in 1.42
        if exit_.code in (1, 701) and importlib.util.find_spec("ray") is None:
            raise DependencyError(_NO_RAY) from None
        raise RuntimeError(f"Flower's Simulation Engine exited with code {exit_.code}") from None
    finally:
        stop.set()
        shutil.rmtree(temp_dir, ignore_errors=True)
    if "result" not in outcome:
        raise RuntimeError("Flower's Simulation Engine finished without running the ServerApp")
    return outcome["result"]
