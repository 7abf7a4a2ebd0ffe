"""Attacks by name: ``make_attack("lie", knowledge="own")``, the names in :data:`ATTACKS`, and ``describe``.

An attack's parameters are its constructor's keyword arguments (so the class is the one place that defines
them); an unknown name, an unknown parameter or a value out of range raises
:class:`~artshield.errors.InvalidArgumentError` with one line naming the attack and the parameter.

``make_attack("pill", base="lie", base_params={...}, **pill_params)`` wraps a base attack in the pill
augmentation (``attacks.pill.Pill``, imported only when asked for).
"""

from __future__ import annotations

import inspect
from typing import Any

from ...errors import InvalidArgumentError
from .base import ModelPoisoning, TrainingAttack
from .model_poisoning import MODEL_POISONING
from .training import TRAINING_ATTACKS

PILL = "pill"
ATTACKS: tuple[str, ...] = (*MODEL_POISONING, *TRAINING_ATTACKS, PILL)


def _pill_class():
    try:
        from .pill import Pill
    except ImportError as error:  # the pill module ships with the package; a broken install says so
        raise InvalidArgumentError(f"attack `{PILL}` is not available: {error}") from None
    return Pill


def _class_of(name: str) -> type:
    if not isinstance(name, str) or name not in ATTACKS:
        raise InvalidArgumentError(f"unknown attack {name!r} (known: {', '.join(ATTACKS)})")
    if name == PILL:
        return _pill_class()
    return MODEL_POISONING.get(name) or TRAINING_ATTACKS[name]


def parameters(cls: type, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Keyword parameters of `cls`'s constructor and their defaults (``inspect.Parameter.empty`` if none)."""
    out = {}
    for param in inspect.signature(cls.__init__).parameters.values():
        if param.name == "self" or param.name in skip or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        out[param.name] = param.default
    return out


def _check_names(attack: str, given: dict, known: dict) -> None:
    for key in given:
        if key not in known:
            listed = ", ".join(known) or "none"
            raise InvalidArgumentError(f"attack `{attack}`: unknown parameter `{key}` (known: {listed})")


def make_attack(name: str, **params: Any) -> ModelPoisoning | TrainingAttack:
    """A configured attack. Model-poisoning names give a :class:`ModelPoisoning`, the others a
    :class:`TrainingAttack`; ``"pill"`` takes ``base`` (default ``"lie"``), ``base_params`` (a dict) and
    the pill's own parameters."""
    cls = _class_of(name)
    if name == PILL:
        base = params.pop("base", "lie")
        base_params = params.pop("base_params", None) or {}
        if base == PILL:
            raise InvalidArgumentError(f"attack `{PILL}`: `base` must be another attack, not {PILL!r}")
        if not isinstance(base_params, dict):
            raise InvalidArgumentError(f"attack `{PILL}`: `base_params` must be a table of parameters, but is {base_params!r}")
        _check_names(PILL, params, parameters(cls, skip=("base",)))
        return cls(base=make_attack(base, **base_params), **params)
    _check_names(name, params, parameters(cls))
    return cls(**params)


def _shown(value: Any) -> Any:
    return "(required)" if value is inspect.Parameter.empty else value


def describe(name: str) -> dict[str, Any]:
    """What an attack is and takes: ``{"name", "kind", "summary", "needs_benign", "targeted", "params"}``,
    ``params`` mapping every parameter to its default. Omniscience and targeting are those of the defaults."""
    cls = _class_of(name)
    summary = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")
    if name == PILL:
        params = {"base": "lie", "base_params": {}}
        params.update({k: _shown(v) for k, v in parameters(cls, skip=("base",)).items()})
        return {"name": name, "kind": "model-poisoning", "summary": summary, "needs_benign": None,
                "targeted": False, "params": params}
    params = {k: _shown(v) for k, v in parameters(cls).items()}
    instance = make_attack(name)
    poisoning = isinstance(instance, ModelPoisoning)
    return {
        "name": name,
        "kind": "model-poisoning" if poisoning else "training",
        "summary": summary,
        "needs_benign": bool(instance.needs_benign) if poisoning else False,
        "targeted": bool(getattr(instance, "targeted", False)),
        "params": params,
    }


def settings(attack: ModelPoisoning | TrainingAttack) -> dict[str, Any]:
    """The parameter values an attack was built with (for reports)."""
    known = parameters(type(attack))
    return {key: getattr(attack, key) for key in known if hasattr(attack, key) and
            isinstance(getattr(attack, key), int | float | str | bool | type(None))}
