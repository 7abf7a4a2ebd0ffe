"""Checks that the installed libraries work together, made before minutes of work rather than after.

transformers and diffusers each refuse peft releases older than their own ``MIN_PEFT_VERSION``, but only
deep inside ``add_adapter`` / ``load_lora_weights``, as a bare ``ValueError``. :func:`check_lora_stack`
asks the same question up front and answers in one line that names both versions and the fix.
"""

from __future__ import annotations

import importlib
import importlib.metadata

from packaging.version import Version

from .errors import DependencyError

#: What the README's commands install; the fix a user is told about.
FIX = 'reinstall from the lock file: pip install -c constraints.txt -e . (or: pip install -U peft, or "transformers<5.24")'


def installed_version(distribution: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def required_peft(library: str) -> str | None:
    """The oldest peft `library` (``transformers`` or ``diffusers``) accepts, or None when it does not say."""
    module = {"transformers": "transformers.integrations.peft", "diffusers": "diffusers.utils.constants"}[library]
    try:
        return getattr(importlib.import_module(module), "MIN_PEFT_VERSION", None)
    except ImportError:
        return None


def check_lora_stack(*, text_encoder: bool = True) -> None:
    """Raise :class:`DependencyError` when peft is missing or older than diffusers (and, for LoRA on the
    text encoder, transformers) require."""
    peft = installed_version("peft")
    if peft is None:
        raise DependencyError(f"LoRA needs the peft package, which is not installed; {FIX}.")
    libraries = ["diffusers"] + (["transformers"] if text_encoder else [])
    for library in libraries:
        needed = required_peft(library)
        if needed is not None and Version(peft) < Version(needed):
            raise DependencyError(
                f"{library} {installed_version(library)} needs peft >= {needed}, but peft {peft} is installed; {FIX}."
            )


__all__ = ["check_lora_stack", "installed_version", "required_peft"]
