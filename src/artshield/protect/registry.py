"""Method names as the CLI and config files use them."""

from __future__ import annotations

from ..errors import InvalidArgumentError
from .advdm import AdvDM
from .base import ProtectionMethod

METHODS: dict[str, type[ProtectionMethod]] = {cls.name: cls for cls in (AdvDM,)}
ALIASES: dict[str, str] = {}


def get_method(name: str) -> type[ProtectionMethod]:
    """The method class registered under `name` (or an alias)."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in METHODS:
        raise InvalidArgumentError(
            f"`method` must be one of {', '.join(sorted(METHODS))}, but is {name!r} (see `protect --list-methods`)."
        )
    return METHODS[key]


def describe_methods() -> list[tuple[str, str]]:
    """(name, one-line summary) for every method, sorted by name."""
    return [(name, METHODS[name].summary) for name in sorted(METHODS)]
