"""Stand-ins for the fl_bridge modules the experiment runner uses, so experiment files, sweeps, resumption and
reports are tested without training anything.

- :func:`install_registries` puts small attack / defense registries, a task list and ``LocalTraining`` in
  ``sys.modules`` — only where the real module cannot be imported (once the real ones exist, they are used);
- :class:`FakeFederation` replaces ``artshield.fl_bridge.federation`` (always): ``run_federation`` returns
  deterministic per-round records that depend on the attack, defense and seed, counts its calls, and can be
  told to raise ``KeyboardInterrupt`` in the middle of a given call (an interrupted sweep).
"""

from __future__ import annotations

import importlib
import sys
import types
from dataclasses import dataclass

from artshield.errors import InvalidArgumentError

ATTACKS = ("lie", "ipm", "minmax", "minsum", "fang-krum", "fang-trim", "signflip", "gaussian", "labelflip", "scaling",
           "edge-pgd", "dba", "neurotoxin", "pill")
DEFENSES = ("fedavg", "krum", "multikrum", "bulyan", "median", "trimmedmean", "rfa", "centeredclip", "normbound",
            "fltrust", "flame", "foolsgold", "multimetrics", "skymask")
TASKS = ("digits", "styles", "mnist", "fashion-mnist", "cifar10")
TARGETED = {"labelflip", "scaling", "edge-pgd", "dba", "neurotoxin"}
SELECTING = {"krum", "multikrum", "bulyan", "flame", "foolsgold", "multimetrics", "skymask"}
ATTACK_PARAMS = {"lie": {"z"}, "ipm": {"epsilon"}, "scaling": {"scale"}, "pill": {"base", "subnet_fraction"}}
DEFENSE_PARAMS = {"trimmedmean": {"beta"}, "normbound": {"max_norm"}, "multimetrics": {"p"}}


def make_attack(name: str, **params):
    if name not in ATTACKS:
        raise InvalidArgumentError(f"unknown attack {name!r}")
    for key, value in params.items():
        if key not in ATTACK_PARAMS.get(name, ()):
            raise InvalidArgumentError(f"attack {name!r} has no parameter {key!r}")
        if key != "base" and (not isinstance(value, (int, float)) or value <= 0):
            raise InvalidArgumentError(f"attack {name!r}: {key} must be a positive number, got {value!r}")
    if name == "pill" and params.get("base") not in set(ATTACKS) - {"pill"}:
        raise InvalidArgumentError(f"attack 'pill': base must be an attack other than pill, got {params.get('base')!r}")
    return types.SimpleNamespace(name=name, params=params)


def make_defense(name: str, *, root=None, num_malicious: int = 0, **params):
    if name not in DEFENSES:
        raise InvalidArgumentError(f"unknown defense {name!r}")
    for key, value in params.items():
        if key not in DEFENSE_PARAMS.get(name, ()):
            raise InvalidArgumentError(f"defense {name!r} has no parameter {key!r}")
        if key == "beta" and not 0 <= value < 0.5:
            raise InvalidArgumentError(f"defense 'trimmedmean': beta must be in [0, 0.5), got {value}")
    return types.SimpleNamespace(name=name, params=params, num_malicious=num_malicious)


def flower_strategy(name: str, **params):
    if name.removeprefix("flower-") not in ("krum", "multikrum", "bulyan", "median", "trimmedmean"):
        raise InvalidArgumentError(f"unknown Flower strategy {name!r}")
    for key in params:
        if key not in ("num_malicious_nodes", "num_nodes_to_select", "beta"):
            raise InvalidArgumentError(f"{name} has no parameter {key!r}")
    return types.SimpleNamespace(name=name, params=params)


def describe(name: str) -> str:
    params = ATTACK_PARAMS.get(name) or DEFENSE_PARAMS.get(name) or ()
    return ", ".join(sorted(params)) or "(no parameters)"


@dataclass
class LocalTraining:
    epochs: int = 1
    lr: float = 0.05
    batch_size: int = 32
    momentum: float = 0.0
    weight_decay: float = 0.0


def _fake_module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    return module


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError:
        return False
    return True


def install_registries(monkeypatch) -> None:
    """Fake registries, tasks and training where the real ones are missing."""
    fakes = {
        "artshield.fl_bridge.attacks.registry": dict(ATTACKS=ATTACKS, make_attack=make_attack, describe=describe),
        "artshield.fl_bridge.defenses.registry": dict(DEFENSES=DEFENSES, make_defense=make_defense, describe=describe),
        "artshield.fl_bridge.tasks": dict(TASKS=TASKS),
        "artshield.fl_bridge.training": dict(LocalTraining=LocalTraining),
        "artshield.fl_bridge.strategy": dict(flower_strategy=flower_strategy),
    }
    for name, attributes in fakes.items():
        if not _importable(name):
            monkeypatch.setitem(sys.modules, name, _fake_module(name, **attributes))


class FederationConfig:
    """Accepts whatever the experiment passes (the real one's fields are the platform's)."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


class FakeFederation:
    """``run_federation`` whose accuracy falls with the attack and rises with a robust defense; per-seed noise."""

    def __init__(self):
        self.calls: list[dict] = []
        self.interrupt_on_call: int | None = None  # 1-based call that raises KeyboardInterrupt after round 1

    def install(self, monkeypatch) -> FakeFederation:
        module = _fake_module("artshield.fl_bridge.federation", FederationConfig=FederationConfig,
                              run_federation=self.run_federation)
        monkeypatch.setitem(sys.modules, "artshield.fl_bridge.federation", module)
        return self

    @staticmethod
    def final_accuracy(attack: str | None, defense: str, seed: int, base: str | None = None) -> float:
        damage = {None: 0.0, "lie": 0.30, "minmax": 0.35, "ipm": 0.2, "scaling": 0.1, "dba": 0.05}.get(attack, 0.15)
        if attack == "pill":
            damage = 2 * {"lie": 0.30, "minmax": 0.35}.get(base, 0.15)
        robust = 0.0 if defense == "fedavg" else 0.6
        return round(0.95 - damage * (1 - robust) - 0.01 * seed, 6)

    def run_federation(self, config, progress=None):
        self.calls.append(dict(config.__dict__))
        attack, defense, seed = config.attack, config.defense, config.seed
        final = self.final_accuracy(attack, defense, seed, config.attack_params.get("base"))
        rounds = []
        for r in range(1, config.rounds + 1):
            record = {"round": r, "accuracy": round(final - 0.05 * (config.rounds - r), 6), "loss": 1.0 / r,
                      "asr": (0.5 if defense == "fedavg" else 0.1) if attack in TARGETED else None,
                      "tpr": 0.75 if defense in SELECTING and attack else None,
                      "fpr": 0.125 if defense in SELECTING and attack else None,
                      "dropped": 1 if r == 1 else 0, "seconds": 0.01}
            record["sampled"] = config.num_clients
            if r == 1:
                record["metrics"] = {"dropped": 1, "dropped-nan": 1}  # as the platform reports the reasons
            rounds.append(record)
            if progress is not None:
                progress(record)
            if r == 1 and self.interrupt_on_call == len(self.calls):
                raise KeyboardInterrupt
        return types.SimpleNamespace(rounds=rounds, final_vector=None)
