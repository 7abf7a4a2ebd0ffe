"""Experiment files: a small TOML file → a validated :class:`Experiment` → the platform's ``FederationConfig``.

An experiment file names the task, how its training data is split over the clients, the federation (clients,
the fraction sampled per round, rounds, seed, engine), the clients' local training, the attack (its name,
the fraction of malicious clients and its parameters) and the server's defense (its name and parameters)::

    name = "quickstart"                 # optional; also `description`

    [task]
    name = "digits"                     # digits | styles | mnist | fashion-mnist | cifar10
    # root = "data"                     # torchvision datasets only (relative to this file's folder)
    # params = { ... }                  # passed to load_task

    [partition]
    scheme = "dirichlet"                # iid | dirichlet | shards
    alpha = 0.5                         # Dirichlet concentration
    shards_per_client = 2               # shards scheme

    [federation]
    clients = 10
    fraction = 1.0                      # of the clients sampled each round, in (0, 1]
    rounds = 5
    seed = 0
    engine = "inprocess"                # inprocess | ray
    # max_update_norm = 100.0           # replies whose delta is longer are dropped as malformed
    # root_size = 100                   # the server's clean root examples (FLTrust, SkyMask)
    # ray_num_cpus = 2                  # engine = "ray" only

    [training]
    epochs = 1
    lr = 0.05
    batch_size = 32
    momentum = 0.0
    weight_decay = 0.0

    [attack]                            # omit (or name = "clean") for a clean run
    name = "lie"                        # any name of attacks.registry.ATTACKS; "pill" needs base = "<attack>"
    fraction = 0.2                      # of the clients that are malicious, in [0, 1)
    # every other key is a parameter of the attack (e.g. z = 1.5)

    [defense]
    name = "median"                     # defenses.registry.DEFENSES, or flower-krum|flower-multikrum|
                                        # flower-bulyan|flower-median|flower-trimmedmean (default fedavg)
    # every other key is a parameter of the defense

    [privacy]                           # optional: user-level DP-FedAvg (fl_bridge.privacy)
    clip = 1.0                          # L2 bound on each client's delta (the initial bound when adaptive)
    epsilon = 4.0                       # target epsilon after all rounds (or noise_multiplier = 1.1)
    # delta = 1e-4                      # default 1 / clients^2
    # adaptive = false                  # Andrew et al.'s quantile-tracking clip
    # blur = 1.0                        # clients: Bounded Local Update Regularization strength (Cheng et al.)
    # lus = 0.5                         # clients: Local Update Sparsification, fraction of the delta zeroed

    [sweep]                             # defaults of `artshield fl sweep`
    attacks = ["clean", "lie", "pill+lie"]
    defenses = ["fedavg", "median"]
    seeds = [0, 1, 2]

    [leakage]                           # a curious server (see fl_bridge.leakage.runner); omit for none
    attack = "ig"                       # dlg | idlg | ig | gradinversion
    labels = "zero-shot"                # idlg | analytic | yin | llg | zero-shot | known | joint (not idlg)
    clients = [0, 3]                    # partition ids, or a count k (clients 0..k-1); default 1
    rounds = [1]                        # the rounds whose updates are attacked (1 = the initial model)
    batch_size = 4                      # the attacked clients hold this many samples (drawn from the seed)
    # steps = 2000                      # inversion steps (default: the attack's preset)
    # restarts = 1
    # kind = "fedavg"                   # fedsgd | fedavg; default fedsgd when a client's update is one step

Every mistake is refused with one line that names the file and the field, e.g.
``experiment.toml: [attack] fraction must be in [0, 1), got 1.5``; unknown keys are refused with the
nearest known one.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..errors import DependencyError, InvalidArgumentError

#: The attack name that means "no attack" (a clean federation).
CLEAN = "clean"
#: Sweep syntax for the pill wrapped around a base attack: ``pill+lie``.
PILL_PREFIX = "pill+"
ENGINES = ("inprocess", "ray")
SCHEMES = ("iid", "dirichlet", "shards")

SECTIONS = ("task", "partition", "federation", "training", "attack", "defense", "sweep", "leakage", "privacy")
TOP_KEYS = ("name", "description", *SECTIONS)
TASK_KEYS = ("name", "root", "params")
PARTITION_KEYS = ("scheme", "alpha", "shards_per_client")
FEDERATION_KEYS = ("clients", "fraction", "rounds", "seed", "engine", "max_update_norm", "root_size", "ray_num_cpus")
#: Flower's own robust strategies, run as they are (``fl_bridge.strategy.flower_strategy``), beside the registry's.
FLOWER_DEFENSES = ("flower-krum", "flower-multikrum", "flower-bulyan", "flower-median", "flower-trimmedmean")
TRAINING_KEYS = ("epochs", "lr", "batch_size", "momentum", "weight_decay")
SWEEP_KEYS = ("attacks", "defenses", "seeds")
LEAKAGE_KEYS = ("attack", "labels", "clients", "rounds", "batch_size", "steps", "restarts", "kind")
#: Gradient-inversion attacks (``fl_bridge.leakage.inversion.ATTACKS``), label strategies (``leakage.labels.
#: LABEL_METHODS`` plus ``known``: the true labels, and ``joint``: optimised with the images as DLG does), kinds.
LEAKAGE_ATTACKS = ("dlg", "idlg", "ig", "gradinversion")
LEAKAGE_LABELS = ("idlg", "analytic", "yin", "llg", "zero-shot", "known", "joint")  # joint: not with idlg
LEAKAGE_KINDS = ("fedsgd", "fedavg")
PRIVACY_KEYS = ("clip", "noise_multiplier", "epsilon", "delta", "adaptive", "blur", "lus")
#: Local training defaults, the same as ``fl_bridge.training.LocalTraining``'s.
TRAINING_DEFAULTS = MappingProxyType({"epochs": 1, "lr": 0.05, "batch_size": 32, "momentum": 0.0, "weight_decay": 0.0})
DEFAULT_ATTACK_FRACTION = 0.2


def _frozen(params: dict | None) -> MappingProxyType:
    return MappingProxyType(dict(params or {}))


@dataclass(frozen=True)
class Experiment:
    """One federated experiment, validated. Build it with :func:`load_experiment` / :func:`parse_experiment`,
    change it with :meth:`replace` / :meth:`cell`."""

    task: str
    clients: int
    rounds: int
    task_root: str | None = None
    task_params: MappingProxyType = field(default_factory=lambda: _frozen({}))
    partition: str = "iid"
    alpha: float = 0.5
    shards_per_client: int = 2
    fraction: float = 1.0
    seed: int = 0
    engine: str = "inprocess"
    max_update_norm: float | None = None
    root_size: int = 100
    ray_num_cpus: int | None = None
    training: MappingProxyType = field(default_factory=lambda: _frozen(TRAINING_DEFAULTS))
    attack: str = CLEAN
    attack_fraction: float = 0.0
    attack_params: MappingProxyType = field(default_factory=lambda: _frozen({}))
    defense: str = "fedavg"
    defense_params: MappingProxyType = field(default_factory=lambda: _frozen({}))
    name: str = "experiment"
    description: str = ""
    sweep_attacks: tuple[str, ...] = ()
    sweep_defenses: tuple[str, ...] = ()
    sweep_seeds: tuple[int, ...] = ()
    leakage: MappingProxyType | None = None  # the [leakage] table, resolved (see leakage_settings)
    privacy: MappingProxyType | None = None  # the [privacy] table, validated (None: no DP)
    source: str | None = None  # the file it was read from (for error messages), not part of the config

    # ---------------------------------------------------------------------------------------------
    @property
    def num_malicious(self) -> int:
        """Malicious clients among all clients (0 for a clean run)."""
        return 0 if self.attack == CLEAN else int(round(self.attack_fraction * self.clients))

    @property
    def clients_per_round(self) -> int:
        return max(1, int(self.fraction * self.clients))

    @property
    def label(self) -> str:
        """``attack`` as the sweep writes it: ``clean``, ``lie``, ``pill+lie``."""
        if self.attack == "pill" and "base" in self.attack_params:
            return f"{PILL_PREFIX}{self.attack_params['base']}"
        return self.attack

    def replace(self, **changes) -> Experiment:
        return dataclasses.replace(self, **changes)

    def cell(self, attack: str, defense: str, seed: int) -> Experiment:
        """This experiment with another attack (``clean``, ``lie``, ``pill+lie``), defense and seed.

        The file's attack/defense parameters are kept when the name is the file's own; otherwise the
        named method runs with its defaults (``pill+X`` keeps the file's pill parameters, with base X)."""
        if attack.startswith(PILL_PREFIX):
            params = dict(self.attack_params) if self.attack == "pill" else {}
            params["base"] = attack[len(PILL_PREFIX):]
            name = "pill"
        else:
            name = attack
            params = dict(self.attack_params) if attack == self.attack else {}
        fraction = self.attack_fraction if self.attack != CLEAN else DEFAULT_ATTACK_FRACTION
        defense_params = dict(self.defense_params) if defense == self.defense else {}
        return self.replace(attack=name, attack_params=_frozen({} if name == CLEAN else params),
                            attack_fraction=0.0 if name == CLEAN else fraction, defense=defense,
                            defense_params=_frozen(defense_params), seed=int(seed))

    # ---------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Everything that determines the result (not the name, description, sweep defaults or source)."""
        return {
            "task": {"name": self.task, "root": self.task_root, "params": dict(self.task_params)},
            "partition": {"scheme": self.partition, "alpha": self.alpha, "shards_per_client": self.shards_per_client},
            "federation": {"clients": self.clients, "fraction": self.fraction, "rounds": self.rounds,
                           "seed": self.seed, "engine": self.engine, "max_update_norm": self.max_update_norm,
                           "root_size": self.root_size, "ray_num_cpus": self.ray_num_cpus},
            "training": dict(self.training),
            "attack": {"name": self.attack, "fraction": self.attack_fraction, "params": dict(self.attack_params)},
            "defense": {"name": self.defense, "params": dict(self.defense_params)},
            **({"leakage": _plain(self.leakage)} if self.leakage is not None else {}),
            **({"privacy": dict(self.privacy)} if self.privacy is not None else {}),
        }

    def config_hash(self) -> str:
        """SHA-256 of :meth:`to_dict` as canonical JSON: a cell computed under another configuration has
        another hash. The engine and Ray's CPUs are left out (both engines run the same federation)."""
        data = self.to_dict()
        data["federation"] = {k: v for k, v in data["federation"].items() if k not in ("engine", "ray_num_cpus")}
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def federation_config(self):
        """The platform's ``fl_bridge.federation.FederationConfig`` for this experiment (imports torch)."""
        federation = importlib.import_module("artshield.fl_bridge.federation")
        training = importlib.import_module("artshield.fl_bridge.training")
        dp, client_options = None, {}
        if self.privacy is not None:
            p = dict(self.privacy)
            client_options = {k: p[k] for k in ("blur", "lus") if p.get(k)}
            dp = importlib.import_module("artshield.fl_bridge.privacy").DPConfig(
                clip=p["clip"], noise_multiplier=p.get("noise_multiplier"), target_epsilon=p.get("epsilon"),
                delta=p.get("delta"), adaptive=bool(p.get("adaptive", False)))
        return federation.FederationConfig(
            task=self.task,
            data_root=self.task_root,
            task_params=dict(self.task_params),
            num_clients=self.clients,
            partition=self.partition,
            alpha=self.alpha,
            shards_per_client=self.shards_per_client,
            fraction=self.fraction,
            rounds=self.rounds,
            training=training.LocalTraining(**dict(self.training), **client_options),
            attack=None if self.attack == CLEAN else self.attack,
            attack_params=dict(self.attack_params),
            malicious_fraction=self.attack_fraction if self.attack != CLEAN else 0.0,
            defense=self.defense,
            defense_params=dict(self.defense_params),
            max_update_norm=self.max_update_norm,
            root_size=self.root_size,
            seed=self.seed,
            engine=self.engine,
            ray_num_cpus=self.ray_num_cpus,
            **({"leakage": _plain(self.leakage)} if self.leakage is not None else {}),
            privacy=dp,
        )


# -------------------------------------------------------------------------------------------------
# registries (imported lazily: they import torch)
# -------------------------------------------------------------------------------------------------


def _module(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise DependencyError(f"{name} is not available ({exc}); install artshield[fl].") from exc
        raise


def attack_names() -> tuple[str, ...]:
    return tuple(_module("artshield.fl_bridge.attacks.registry").ATTACKS)


def defense_names() -> tuple[str, ...]:
    """The registry's defenses, then Flower's own strategies (``flower-krum``...)."""
    return (*_module("artshield.fl_bridge.defenses.registry").DEFENSES, *FLOWER_DEFENSES)


def task_names() -> tuple[str, ...]:
    return tuple(_module("artshield.fl_bridge.tasks").TASKS)


class _NoRoot:
    """Stands in for the server's root data while a defense's parameters are checked (never called)."""

    def update(self, global_vector):  # pragma: no cover - never called at construction
        raise RuntimeError("root data is not available while an experiment file is checked")

    def loss(self, vector):  # pragma: no cover
        raise RuntimeError("root data is not available while an experiment file is checked")


# -------------------------------------------------------------------------------------------------
# parsing
# -------------------------------------------------------------------------------------------------


class _Fields:
    """Reads one section of the file, naming ``<file>: [section] key`` in every error."""

    def __init__(self, source: str, section: str | None, table: Any):
        self.source, self.section = source, section
        if not isinstance(table, dict):
            self.fail(f"must be a table ([{section}]), got {_describe(table)}", key=None)
        self.table = table

    def where(self, key: str | None) -> str:
        parts = [f"{self.source}:"]
        if self.section:
            parts.append(f"[{self.section}]")
        if key is not None:
            parts.append(key)
        return " ".join(parts)

    def fail(self, message: str, key: str | None):
        raise InvalidArgumentError(f"{self.where(key)} {message}")

    def refuse_unknown(self, known: tuple[str, ...]) -> None:
        for key in self.table:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
                self.fail(f"is not a known key{hint}", key)

    def text(self, key: str, default: str | None = None, *, required: bool = False, choices=None) -> str | None:
        if key not in self.table:
            if required:
                self.fail("is missing", key)
            return default
        value = self.table[key]
        if not isinstance(value, str) or not value.strip():
            self.fail(f"must be a non-empty string, got {_describe(value)}", key)
        value = value.strip()
        if choices is not None and value not in choices:
            close = difflib.get_close_matches(value, choices, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            self.fail(f"must be one of {', '.join(choices)}, got {value!r}{hint}", key)
        return value

    def number(self, key: str, default, *, kind: type = float, low=None, high=None, low_open=False,
               high_open=False, required: bool = False):
        if key not in self.table:
            if required:
                self.fail("is missing", key)
            return default
        value = self.table[key]
        ok = isinstance(value, int) and not isinstance(value, bool)
        if kind is float:
            ok = ok or isinstance(value, float)
        if not ok:
            self.fail(f"must be {'a whole number' if kind is int else 'a number'}, got {_describe(value)}", key)
        if not math.isfinite(value):
            self.fail(f"must be a finite number, got {value}", key)
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            if low is not None and high is not None:
                interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
                self.fail(f"must be in {interval}, got {value}", key)
            sign = (">" if low_open else ">=") if too_low else ("<" if high_open else "<=")
            self.fail(f"must be {sign} {low if too_low else high}, got {value}", key)
        return kind(value)

    def table_of(self, key: str) -> dict:
        value = self.table.get(key, {})
        if not isinstance(value, dict):
            self.fail(f"must be a table, got {_describe(value)}", key)
        return dict(value)

    def names(self, key: str, kind: type = str) -> tuple:
        if key not in self.table:
            return ()
        value = self.table[key]
        if not isinstance(value, list) or not value or not all(
                isinstance(v, kind) and not isinstance(v, bool) for v in value):
            what = "strings" if kind is str else "whole numbers"
            self.fail(f"must be a non-empty list of {what}, got {_describe(value)}", key)
        return tuple(value)


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return repr(value)
    return f"{value!r} ({type(value).__name__})"


def _parse_toml(text: str, source: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError as exc:
            raise DependencyError("reading experiment files on Python 3.10 needs `tomli` (pip install tomli).") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgumentError(f"{source}: not valid TOML: {' '.join(str(exc).split())}") from None


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment file (see the module's docstring); raises a one-line
    :class:`~artshield.errors.InvalidArgumentError` naming the file and the field."""
    path = Path(path).expanduser()
    source = str(path)
    if not path.exists():
        raise InvalidArgumentError(f"{source}: no such experiment file.")
    if path.is_dir():
        raise InvalidArgumentError(f"{source} is a folder, not an experiment file.")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgumentError(f"{source}: not a text (UTF-8) file; an experiment file is TOML.") from None
    except OSError as exc:
        raise InvalidArgumentError(f"{source}: cannot be read ({exc.strerror or exc}).") from None
    return parse_experiment(text, source=source, base=path.parent)


def parse_experiment(text: str | dict, source: str = "experiment.toml", base: str | Path | None = None,
                     check_names: bool = True) -> Experiment:
    """Validate an experiment given as TOML text (or an already parsed dict). `base` is the folder a relative
    ``[task] root`` is taken from. With `check_names`, the task, attack and defense names (and the attack's and
    defense's parameters) are checked against the registries."""
    data = _parse_toml(text, source) if isinstance(text, str) else dict(text)
    top = _Fields(source, None, data)
    top.refuse_unknown(TOP_KEYS)
    name = top.text("name", default=Path(source).stem) or "experiment"
    description = "" if data.get("description", "") == "" else top.text("description")

    task = _Fields(source, "task", data.get("task", {}))
    task.refuse_unknown(TASK_KEYS)
    task_name = task.text("name", required=True)
    root = task.text("root")
    if root is not None and base is not None and not Path(root).expanduser().is_absolute():
        root = str(Path(base) / Path(root).expanduser())
    task_params = task.table_of("params")

    part = _Fields(source, "partition", data.get("partition", {}))
    part.refuse_unknown(PARTITION_KEYS)
    scheme = part.text("scheme", "iid", choices=SCHEMES)
    alpha = part.number("alpha", 0.5, low=0, low_open=True)
    shards = part.number("shards_per_client", 2, kind=int, low=1)

    fed = _Fields(source, "federation", data.get("federation", {}))
    fed.refuse_unknown(FEDERATION_KEYS)
    clients = fed.number("clients", None, kind=int, low=2, required=True)
    fraction = fed.number("fraction", 1.0, low=0, high=1, low_open=True)
    rounds = fed.number("rounds", None, kind=int, low=1, required=True)
    seed = fed.number("seed", 0, kind=int, low=0)
    engine = fed.text("engine", "inprocess", choices=ENGINES)
    max_update_norm = fed.number("max_update_norm", None, low=0, low_open=True)
    root_size = fed.number("root_size", 100, kind=int, low=1)
    ray_num_cpus = fed.number("ray_num_cpus", None, kind=int, low=1)

    train = _Fields(source, "training", data.get("training", {}))
    train.refuse_unknown(TRAINING_KEYS)
    training = {
        "epochs": train.number("epochs", TRAINING_DEFAULTS["epochs"], kind=int, low=1),
        "lr": train.number("lr", TRAINING_DEFAULTS["lr"], low=0, low_open=True),
        "batch_size": train.number("batch_size", TRAINING_DEFAULTS["batch_size"], kind=int, low=1),
        "momentum": train.number("momentum", TRAINING_DEFAULTS["momentum"], low=0, high=1, high_open=True),
        "weight_decay": train.number("weight_decay", TRAINING_DEFAULTS["weight_decay"], low=0),
    }

    atk = _Fields(source, "attack", data.get("attack", {}))
    attack = atk.text("name", CLEAN)
    if attack in ("none", CLEAN):
        attack = CLEAN
        extra = [k for k in atk.table if k not in ("name", "fraction")]
        if extra:
            atk.fail("is a parameter, but no attack is named (set [attack] name)", extra[0])
    if attack != CLEAN and attack.startswith(PILL_PREFIX):
        atk.fail(f"{attack!r}: in a file write name = \"pill\" and base = {attack[len(PILL_PREFIX):]!r}", "name")
    attack_fraction = atk.number("fraction", DEFAULT_ATTACK_FRACTION if attack != CLEAN else 0.0, low=0, high=1,
                                 high_open=True)
    attack_params = {k: v for k, v in atk.table.items() if k not in ("name", "fraction")}
    if attack != CLEAN and round(attack_fraction * clients) < 1:
        atk.fail(f"{attack_fraction} of {clients} clients is no malicious client; raise it to at least "
                 f"{1 / clients:.3g} (or name = \"clean\")", "fraction")

    dfn = _Fields(source, "defense", data.get("defense", {}))
    defense = dfn.text("name", "fedavg")
    defense_params = {k: v for k, v in dfn.table.items() if k != "name"}

    swp = _Fields(source, "sweep", data.get("sweep", {}))
    swp.refuse_unknown(SWEEP_KEYS)
    sweep_attacks = swp.names("attacks")
    sweep_defenses = swp.names("defenses")
    sweep_seeds = swp.names("seeds", int)
    for value in sweep_seeds:
        if value < 0:
            swp.fail(f"must hold seeds >= 0, got {value}", "seeds")

    privacy = _parse_privacy(data["privacy"], source, clients, rounds, fraction, defense) if "privacy" in data else None
    experiment = Experiment(
        task=task_name, task_root=root, task_params=_frozen(task_params), partition=scheme, alpha=alpha,
        shards_per_client=shards, clients=clients, fraction=fraction, rounds=rounds, seed=seed, engine=engine,
        max_update_norm=max_update_norm, root_size=root_size, ray_num_cpus=ray_num_cpus,
        training=_frozen(training), attack=attack, attack_fraction=attack_fraction if attack != CLEAN else 0.0,
        attack_params=_frozen(attack_params), defense=defense, defense_params=_frozen(defense_params),
        name=name, description=description or "", sweep_attacks=sweep_attacks, sweep_defenses=sweep_defenses,
        sweep_seeds=sweep_seeds, privacy=privacy, source=source,
        leakage=_parse_leakage(source, data, training, clients, rounds),
    )
    if check_names:
        check_experiment(experiment, where={"task": task, "attack": atk, "defense": dfn, "sweep": swp})
    return experiment


# -------------------------------------------------------------------------------------------------
# [leakage]: a curious server's gradient-inversion attack (fl_bridge.leakage)
# -------------------------------------------------------------------------------------------------


class _LeakageFields(_Fields):
    """`_Fields` for [leakage]; a key given on the command line is named by its option (``--batch-size``)."""

    def __init__(self, source: str, table: Any, options: dict[str, str]):
        self.options = options
        super().__init__(source, "leakage", table)

    def where(self, key: str | None) -> str:
        return self.options[key] if key in self.options else super().where(key)

    def name(self, key: str) -> str:
        return self.options.get(key, key)


def _ids(fields: _LeakageFields, key: str, default, low: int, high: int | None, what: str) -> tuple[int, ...]:
    value = fields.table.get(key, default)
    values = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(values, list | tuple) or not values or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in values):
        fields.fail(f"must be a whole number or a non-empty list of whole numbers, got {_describe(value)}", key)
    for v in values:
        if v < low or (high is not None and v > high):
            fields.fail(f"must hold {what} in [{low}, {high}], got {v}" if high is not None
                        else f"must hold {what} >= {low}, got {v}", key)
    if len(set(values)) != len(values):
        fields.fail(f"names {sorted(v for v in values if values.count(v) > 1)[0]} twice", key)
    return tuple(sorted(values))


def leakage_settings(table: Any, *, source: str, training: dict, clients: int, max_round: int | None = None,
                     options: dict[str, str] | None = None) -> dict[str, Any]:
    """Validate a [leakage] table: the attack, the label strategy, the attacked clients (partition ids, or a
    count k meaning clients 0..k-1), the attacked rounds (1 = the initial model; at most `max_round`), the
    attacked clients' batch (they hold that many samples), inversion steps / restarts, and the kind of update
    (``fedsgd`` when the client's update is one local step, else ``fedavg``). `options` names keys that came
    from the command line (``{"batch_size": "--batch-size"}``) so that errors name the option."""
    f = _LeakageFields(source, table, dict(options or {}))
    f.refuse_unknown(LEAKAGE_KEYS)
    attack = f.text("attack", required=True, choices=LEAKAGE_ATTACKS)
    labels = f.text("labels", required=True, choices=LEAKAGE_LABELS)
    batch = f.number("batch_size", 1, kind=int, low=1)
    steps = f.number("steps", None, kind=int, low=1)
    restarts = f.number("restarts", 1, kind=int, low=1)
    kind = f.text("kind", None, choices=LEAKAGE_KINDS)
    value = f.table.get("clients", 1)
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= clients:
            f.fail(f"as a count must be in [1, {clients}] (the federation's clients), got {value}; or give a list "
                   "of partition ids", "clients")
        ids = tuple(range(value))
    else:
        ids = _ids(f, "clients", 1, 0, clients - 1, "partition ids")
    rounds = _ids(f, "rounds", [1], 1, max_round, "rounds")
    if labels == "joint" and attack == "idlg":
        f.fail(f"'joint' (labels optimised with the images) does not go with {f.name('attack')} 'idlg', which needs "
               "labels; choose a label strategy or another attack", "labels")
    if labels == "idlg" and batch > 1:
        f.fail(f"'idlg' recovers a single label: it needs {f.name('batch_size')} = 1, got {batch} (use zero-shot, "
               "llg, analytic or yin for batches)", "labels")
    epochs, local_batch = int(training["epochs"]), min(int(training["batch_size"]), batch)
    local_steps = epochs * math.ceil(batch / local_batch)
    if kind is None:
        kind = "fedsgd" if local_steps == 1 else "fedavg"
    elif kind == "fedsgd" and local_steps > 1:
        f.fail(f"'fedsgd' needs one local step per update, but [training] epochs = {epochs} and batch_size = "
               f"{training['batch_size']} make {local_steps} steps on {batch} samples; set kind = \"fedavg\", or "
               "[training] epochs = 1 and batch_size >= the leakage batch", "kind")
    return {"attack": attack, "labels": labels, "clients": ids, "rounds": rounds, "batch_size": batch,
            "steps": steps, "restarts": restarts, "kind": kind, "local_steps": local_steps}


def _parse_leakage(source: str, data: dict, training: dict, clients: int, rounds: int) -> MappingProxyType | None:
    if "leakage" not in data:
        return None
    return _frozen(leakage_settings(data["leakage"], source=source, training=training, clients=clients,
                                    max_round=rounds))


def _plain(settings) -> dict:
    """Resolved [leakage] settings as JSON-able data (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dict(settings).items()}
def _parse_privacy(table: Any, source: str, clients: int, rounds: int, fraction: float,
                   defense: str) -> MappingProxyType:
    """The ``[privacy]`` table: user-level DP-FedAvg (``fl_bridge.privacy``) and the clients' BLUR / LUS.

    An epsilon that no noise multiplier up to the cap meets in the file's rounds is refused here, naming it."""
    fields = _Fields(source, "privacy", table)
    fields.refuse_unknown(PRIVACY_KEYS)
    clip = fields.number("clip", None, low=0, low_open=True, required=True)
    noise = fields.number("noise_multiplier", None, low=0, low_open=True)
    epsilon = fields.number("epsilon", None, low=0, low_open=True)
    if noise is None and epsilon is None:
        fields.fail("needs epsilon (a target) or noise_multiplier", None)
    if noise is not None and epsilon is not None:
        fields.fail("and noise_multiplier are both given; keep one", "epsilon")
    if defense in FLOWER_DEFENSES:
        fields.fail(f"cannot wrap Flower's own strategy {defense!r} ([defense] name); use a registry defense", None)
    delta = fields.number("delta", None, low=0, high=1, low_open=True, high_open=True)
    adaptive = fields.table.get("adaptive", False)
    if not isinstance(adaptive, bool):
        fields.fail(f"must be true or false, got {_describe(adaptive)}", "adaptive")
    blur = fields.number("blur", None, low=0)
    lus = fields.number("lus", None, low=0, high=1, high_open=True)
    if epsilon is not None:
        privacy = _module("artshield.fl_bridge.privacy")
        try:
            privacy.calibrate_noise(epsilon, delta if delta is not None else 1.0 / clients ** 2, rounds, fraction)
        except InvalidArgumentError as exc:
            fields.fail(str(exc).removeprefix("epsilon ").strip(), "epsilon")
    return _frozen({"clip": clip, "noise_multiplier": noise, "epsilon": epsilon, "delta": delta,
                    "adaptive": adaptive, "blur": blur or None, "lus": lus or None})


def check_experiment(experiment: Experiment, where: dict | None = None) -> None:
    """Check the task, attack and defense names against the registries and build the attack and defense
    once with their parameters (a bad parameter is refused here, before any training)."""
    source = experiment.source or "experiment"
    where = where or {s: _Fields(source, s, {}) for s in ("task", "attack", "defense", "sweep")}
    tasks = task_names()
    if experiment.task not in tasks:
        _unknown(where["task"], "name", "task", experiment.task, tasks)
    check_attack(experiment.attack, dict(experiment.attack_params), where["attack"], experiment.clients)
    check_defense(experiment.defense, dict(experiment.defense_params), where["defense"], experiment.num_malicious)
    for attack in experiment.sweep_attacks:
        check_attack_label(attack, where["sweep"], "attacks")
    defenses = defense_names()
    for defense in experiment.sweep_defenses:
        if defense not in defenses:
            _unknown(where["sweep"], "defenses", "defense", defense, defenses)


def _unknown(fields: _Fields, key: str, what: str, value: str, known) -> None:
    close = difflib.get_close_matches(value, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"choose from {', '.join(known)}"
    fields.fail(f"{value!r} is not a known {what}; {hint}", key)


def check_attack_label(label: str, fields: _Fields, key: str) -> None:
    """A sweep's attack: ``clean``, a registry name, or ``pill+<name>``."""
    attacks = attack_names()
    name = label[len(PILL_PREFIX):] if label.startswith(PILL_PREFIX) else label
    if label == CLEAN:
        return
    if name not in attacks or (label.startswith(PILL_PREFIX) and name in ("pill", CLEAN)):
        _unknown(fields, key, "attack", label, (CLEAN, *attacks, *(f"{PILL_PREFIX}{a}" for a in attacks if a != "pill")))


def check_attack(name: str, params: dict, fields: _Fields, clients: int) -> None:
    if name == CLEAN:
        return
    attacks = attack_names()
    if name not in attacks:
        _unknown(fields, "name", "attack", name, (CLEAN, *attacks))
    registry = _module("artshield.fl_bridge.attacks.registry")
    try:
        registry.make_attack(name, **params)
    except (InvalidArgumentError, TypeError, ValueError) as exc:
        fields.fail(" ".join(str(exc).split()), None)


def check_defense(name: str, params: dict, fields: _Fields, num_malicious: int) -> None:
    defenses = defense_names()
    if name not in defenses:
        _unknown(fields, "name", "defense", name, defenses)
    try:
        if name in FLOWER_DEFENSES:
            _module("artshield.fl_bridge.strategy").flower_strategy(name, **params)
        else:
            registry = _module("artshield.fl_bridge.defenses.registry")
            registry.make_defense(name, root=_NoRoot(), num_malicious=num_malicious, **params)
    except (InvalidArgumentError, TypeError, ValueError) as exc:
        fields.fail(" ".join(str(exc).split()), None)


class _Label:
    """Errors about a command-line option (``--attacks``) rather than a field of the file."""

    def __init__(self, label: str):
        self.label = label

    def fail(self, message: str, key: str | None):
        raise InvalidArgumentError(f"{self.label}: {message}")


def check_grid(experiment: Experiment, attacks, defenses, attacks_label: str = "--attacks",
               defenses_label: str = "--defenses") -> None:
    """Check a sweep's attacks (``clean``, a registry name, ``pill+<name>``) and defenses, and build each
    (attack, defense) cell's attack and defense once with the parameters it will run with."""
    attack_fields, defense_fields = _Label(attacks_label), _Label(defenses_label)
    for attack in attacks:
        check_attack_label(attack, attack_fields, None)
    known = defense_names()
    for defense in defenses:
        if defense not in known:
            _unknown(defense_fields, None, "defense", defense, known)
    checked_attacks, checked_defenses = set(), set()
    for attack in attacks:
        for defense in defenses:
            cell = experiment.cell(attack, defense, experiment.seed)
            if cell.attack != CLEAN and cell.num_malicious < 1:
                attack_fields.fail(f"{attack!r}: {cell.attack_fraction} of {cell.clients} clients is no malicious "
                                   f"client; raise [attack] fraction in {experiment.source or 'the experiment'}", None)
            key = (cell.attack, json.dumps(dict(cell.attack_params), sort_keys=True, default=str))
            if key not in checked_attacks:
                check_attack(cell.attack, dict(cell.attack_params), attack_fields, cell.clients)
                checked_attacks.add(key)
            key = (defense, cell.num_malicious, json.dumps(dict(cell.defense_params), sort_keys=True, default=str))
            if key not in checked_defenses:
                check_defense(defense, dict(cell.defense_params), defense_fields, cell.num_malicious)
                checked_defenses.add(key)


def parse_list(text: str, label: str) -> tuple[str, ...]:
    """``--attacks lie,minmax`` → ('lie', 'minmax'); refuses an empty list or a repeated name."""
    items = tuple(item.strip() for item in text.split(",") if item.strip())
    if not items:
        raise InvalidArgumentError(f"{label} is empty; give a comma-separated list.")
    repeated = sorted({item for item in items if items.count(item) > 1})
    if repeated:
        raise InvalidArgumentError(f"{label} names {repeated[0]!r} twice.")
    return items


__all__ = [
    "CLEAN",
    "ENGINES",
    "FLOWER_DEFENSES",
    "PILL_PREFIX",
    "SCHEMES",
    "Experiment",
    "attack_names",
    "check_experiment",
    "check_grid",
    "defense_names",
    "leakage_settings",
    "load_experiment",
    "parse_experiment",
    "parse_list",
    "task_names",
]
