"""Method names as the CLI and config files use them."""

from __future__ import annotations

from ..errors import InvalidArgumentError
from .advdm import AdvDM
from .aspl import ASPL
from .base import ProtectionMethod
from .diffusionguard import DiffusionGuard
from .mist import Mist, MistLunet
from .photoguard import PhotoGuard, PhotoGuardDiffusion
from .sds import SDST, SDSMinus, SDSPlus

METHODS: dict[str, type[ProtectionMethod]] = {
    cls.name: cls
    for cls in (
        AdvDM, SDSPlus, SDSMinus, SDST, Mist, MistLunet, PhotoGuard, PhotoGuardDiffusion, DiffusionGuard, ASPL,
    )
}
ALIASES: dict[str, str] = {"sds": "sds+"}
#: Methods that model an inpainting edit: with no model named, they get an inpainting checkpoint.
INPAINTING_METHODS: frozenset[str] = frozenset({"diffusionguard", "photoguard-diffusion"})


def get_method(name: str) -> type[ProtectionMethod]:
    """The method class registered under `name` (or an alias)."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in METHODS:
        raise InvalidArgumentError(
            f"`method` must be one of {', '.join(sorted(METHODS))}, but is {name!r} (see `protect --list-methods`)."
        )
    return METHODS[key]


def describe_methods() -> list[tuple[str, str]]:
    """(name, one-line summary) for every method, sorted by name; aliases are named in the summary."""
    aliases = {target: alias for alias, target in ALIASES.items()}
    return [
        (name, METHODS[name].summary + (f" (alias: {aliases[name]})" if name in aliases else ""))
        for name in sorted(METHODS)
    ]
