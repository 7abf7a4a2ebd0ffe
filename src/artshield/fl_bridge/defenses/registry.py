"""Defenses by name: ``make_defense("krum", num_malicious=2)``, ``DEFENSES``, ``describe(name)``.

Every name maps to an :class:`~.base.AggregationRule` class; its constructor's keyword parameters are the
defense's parameters (validated by the class, errors name the defense and the parameter). ``num_malicious``
(the ``f`` the rule assumes) is passed to the rules that use it (krum, multikrum, bulyan) and ignored by the
others, so an experiment can pass it uniformly. ``root`` (the server's root dataset, a
:class:`~.base.RootAccess`) is required by fltrust and skymask. Flower's own Krum/MultiKrum/Bulyan/FedMedian/
FedTrimmedAvg strategies are reached through ``fl_bridge.strategy.flower_strategy``, not here.
"""

from __future__ import annotations

import inspect

import numpy as np

from ...errors import InvalidArgumentError
from .base import AggregationRule, RootAccess

DEFENSES: tuple[str, ...] = ("fedavg", "krum", "multikrum", "bulyan", "median", "trimmedmean", "rfa", "centeredclip",
                             "normbound", "fltrust", "flame", "foolsgold", "multimetrics", "skymask")
#: Defenses whose constructor takes ``num_malicious``.
USES_NUM_MALICIOUS = frozenset({"krum", "multikrum", "bulyan"})
#: Defenses that need the server's root dataset.
NEEDS_ROOT = frozenset({"fltrust", "skymask"})


def defense_class(name: str) -> type[AggregationRule]:
    """The rule class of a known defense name (imports lazily: skymask's module is heavy)."""
    if name == "skymask":
        try:
            from .skymask import SkyMask
        except ModuleNotFoundError as error:
            if not (error.name or "").endswith("skymask"):
                raise
            raise InvalidArgumentError("defense 'skymask' is not available in this installation") from None
        return SkyMask
    if name == "fltrust":
        from .fltrust import FLTrust

        return FLTrust
    if name == "flame":
        from .flame import FLAME

        return FLAME
    if name == "foolsgold":
        from .foolsgold import FoolsGold

        return FoolsGold
    if name == "multimetrics":
        from .multimetrics import MultiMetrics

        return MultiMetrics
    from . import robust

    return {"fedavg": robust.FedAvgRule, "krum": robust.Krum, "multikrum": robust.MultiKrum, "bulyan": robust.Bulyan,
            "median": robust.Median, "trimmedmean": robust.TrimmedMean, "rfa": robust.RFA,
            "centeredclip": robust.CenteredClipping, "normbound": robust.NormBounding}[name]


def _known(name) -> str:
    key = str(name).strip().lower() if isinstance(name, str) else None
    if key not in DEFENSES:
        raise InvalidArgumentError(f"unknown defense {name!r}; known: {', '.join(DEFENSES)}")
    return key


def _parameters(cls: type) -> tuple[dict[str, inspect.Parameter], bool]:
    """The constructor's own keyword parameters (without root/num_malicious) and whether it takes **kwargs."""
    own, open_ended = {}, False
    if cls.__init__ is object.__init__:
        return own, open_ended
    signature = inspect.signature(cls.__init__)
    for parameter in list(signature.parameters.values())[1:]:
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            open_ended = True
        elif parameter.kind is not inspect.Parameter.VAR_POSITIONAL and parameter.name not in ("root", "num_malicious"):
            own[parameter.name] = parameter
    return own, open_ended


def make_defense(name: str, *, root: RootAccess | None = None, num_malicious: int = 0, **params) -> AggregationRule:
    """A configured aggregation rule; one-line :class:`InvalidArgumentError` naming the defense and the parameter
    for an unknown name, an unknown or bad parameter, or a missing root."""
    key = _known(name)
    if isinstance(num_malicious, bool) or not isinstance(num_malicious, int | np.integer) or num_malicious < 0:
        raise InvalidArgumentError(f"defense {key!r}: num_malicious must be an integer >= 0, got {num_malicious!r}")
    if key in NEEDS_ROOT and root is None:
        raise InvalidArgumentError(f"defense {key!r} needs root (the server's root dataset); none was given")
    cls = defense_class(key)
    own, open_ended = _parameters(cls)
    unknown = [p for p in params if p not in own]
    if unknown and not open_ended:
        takes = f"its parameters: {', '.join(own)}" if own else "it takes none"
        raise InvalidArgumentError(f"defense {key!r} has no parameter {unknown[0]!r} ({takes})")
    kwargs = dict(params)
    if key in USES_NUM_MALICIOUS:
        kwargs["num_malicious"] = int(num_malicious)
    try:
        return cls(root, **kwargs) if key in NEEDS_ROOT else cls(**kwargs)
    except TypeError as error:  # e.g. a parameter given a value of a kind the constructor cannot take
        raise InvalidArgumentError(f"defense {key!r}: {error}") from None


def describe(name: str) -> str:
    """One paragraph about a defense: what it does, its parameters with defaults, and what it needs."""
    key = _known(name)
    cls = defense_class(key)
    summary = (inspect.getdoc(cls) or key).split("\n\n")[0].replace("\n", " ")
    own, _ = _parameters(cls)
    parameters = ", ".join(f"{p.name}={p.default!r}" if p.default is not inspect.Parameter.empty else p.name
                           for p in own.values())
    notes = []
    if key in USES_NUM_MALICIOUS:
        notes.append("uses num_malicious")
    if key in NEEDS_ROOT:
        notes.append("needs root")
    if getattr(cls, "selects", False):
        notes.append("selects clients (detection TPR/FPR)")
    lines = [f"{key}: {summary}", f"  parameters: {parameters or 'none'}"]
    if notes:
        lines.append(f"  {'; '.join(notes)}")
    return "\n".join(lines)
