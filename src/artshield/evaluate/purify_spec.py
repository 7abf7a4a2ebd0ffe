"""The purification registry and its spec language (grammar in :mod:`artshield.evaluate.purify`):
:func:`parse_spec` reads a spec, :func:`check_spec` also checks its values without loading anything, and
:func:`get_purification` builds the purification."""

from __future__ import annotations

import inspect
import os
import re
from typing import Any

import torch

from ..errors import InvalidArgumentError
from .purify_base import Purification
from .purify_image import DownUpscale, GaussianBlurring, GaussianNoising, JpegCompression, NoPurification
from .purify_model import DiffPure, GrIDPure, Impress, NoisyUpscaling

PURIFICATIONS: dict[str, type[Purification]] = {
    cls.name: cls
    for cls in (NoPurification, JpegCompression, DownUpscale, GaussianNoising, GaussianBlurring, NoisyUpscaling,
                DiffPure, GrIDPure, Impress)
}  # fmt: skip
ALIASES: dict[str, str] = {
    "identity": "none",
    "jpg": "jpeg",
    "gaussian": "noise",
    "downscale": "resize",
    "noisy-upscaling": "noisy-upscale",
    "noisyupscale": "noisy-upscale",
    "noisy_upscale": "noisy-upscale",
    "upscale": "noisy-upscale",
    "grid-pure": "gridpure",
}
#: Constructor arguments a spec may not set (objects, not values).
_NOT_IN_SPEC = {"self", "model", "progress", "device", "dtype"}
_HEAD_RE = re.compile(r"([a-z][a-z_-]*?)((?:\d+(?:\.\d*)?|\.\d+)(?:e-?\d+)?)?")
_PARAM_SPLIT_RE = re.compile(r":(?=\s*[A-Za-z_][A-Za-z0-9_]*\s*=)")
_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT_RE = re.compile(r"[+-]?\d+")
_FLOAT_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def _parse_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    if lowered == "none":
        return None
    if _INT_RE.fullmatch(text):
        return int(text)
    if _FLOAT_RE.fullmatch(text):
        return float(text)
    return text


def _spec_keys(cls: type[Purification]) -> list[str]:
    return [name for name in inspect.signature(cls.__init__).parameters if name not in _NOT_IN_SPEC]


def parse_spec(spec: str) -> tuple[type[Purification], dict[str, Any]]:
    """Read a purification spec (grammar in the module docstring) into its class and keyword arguments.

    Raises:
        InvalidArgumentError: naming the spec and what could not be read.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidArgumentError(f"purification spec must be a non-empty string, but is {spec!r}.")
    head, has_params, rest = spec.strip().partition(":")
    match = _HEAD_RE.fullmatch(head.strip().lower())
    name = ALIASES.get(match.group(1), match.group(1)) if match else None
    if name not in PURIFICATIONS:
        # "noise" + "0.05" fails above only when the name is unknown; say what is known.
        raise InvalidArgumentError(
            f"unknown purification {head.strip()!r} in spec {spec!r} (known: {', '.join(PURIFICATIONS)}; "
            "e.g. jpeg75, resize0.5, noise0.1, diffpure:t_star=0.2)."
        )
    cls = PURIFICATIONS[name]
    keys = _spec_keys(cls)
    kwargs: dict[str, Any] = {}
    if match.group(2):
        if cls.primary is None:
            raise InvalidArgumentError(f"purification {name!r} takes no number (in spec {spec!r}).")
        kwargs[cls.primary] = _parse_value(match.group(2))
    for assignment in (piece.strip() for piece in _PARAM_SPLIT_RE.split(rest)) if has_params else ():
        key, sep, value = (part.strip() for part in assignment.partition("="))
        if not sep or not _KEY_RE.fullmatch(key) or not value:
            raise InvalidArgumentError(f"bad parameter {assignment!r} in purification spec {spec!r} (expected key=value).")
        if key not in keys:
            raise InvalidArgumentError(
                f"purification {name!r} has no parameter {key!r} (in spec {spec!r}; it takes: {', '.join(keys) or 'none'})."
            )
        if key in kwargs:
            raise InvalidArgumentError(f"parameter {key!r} is given twice in purification spec {spec!r}.")
        kwargs[key] = _parse_value(value)
    return cls, kwargs


def get_purification(
    spec: str | Purification,
    model=None,
    *,
    progress: bool = False,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> Purification:
    """Build a purification from its spec (``"jpeg75"``, ``"noise0.1"``, ``"diffpure:t_star=0.2"``, ...).

    Args:
        spec: the spec (grammar in the module docstring), or a purification (returned as is).
        model (*optional*): a :class:`~artshield.models.DiffusionModel`, or a model spec string passed to
            :func:`artshield.models.load`; needed by ``diffpure``, ``gridpure``, ``impress`` and the fallback of
            ``noisy-upscale``, ignored by the others.
        progress: show a progress bar where the purification has one.
        device, dtype: where a purification that loads its own weights (``noisy-upscale`` with ``upscaler=``
            and no model) puts them; default: the best device.

    Raises:
        InvalidArgumentError: the spec cannot be read, a value is out of range, or a model is needed and missing.
    """
    if isinstance(spec, Purification):
        return spec
    cls, kwargs = check_spec(spec)  # bad values fail before a model is loaded
    needs_model = cls.needs_model(kwargs)
    if needs_model and model is None:
        raise InvalidArgumentError(
            f"purification spec {spec!r} needs a diffusion model: pass model= (a loaded model, or 'demo', a hub id, "
            "a folder or a .safetensors file; --model on the command line)."
        )
    if isinstance(model, (str, os.PathLike)):
        # Load a model spec only when it is used (not, e.g., for noisy-upscale with its own upscaler).
        from ..models import load

        model = load(model, device=device, dtype=dtype) if needs_model else None
    accepted = inspect.signature(cls.__init__).parameters
    if "progress" in accepted:
        kwargs["progress"] = progress
    if "device" in accepted and model is None:
        kwargs["device"], kwargs["dtype"] = device, dtype
    try:
        if cls.uses_model:
            return cls(model, **kwargs)
        return cls(**kwargs)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"purification spec {spec!r}: {exc}") from None
    except TypeError as exc:  # e.g. a word where a number belongs, caught by no validator
        raise InvalidArgumentError(f"purification spec {spec!r}: {exc}") from None


def check_spec(spec: str) -> tuple[type[Purification], dict[str, Any]]:
    """:func:`parse_spec`, then check every value (ranges, types) without building the purification or loading a
    model, so a command can refuse a bad spec (``jpeg0``, ``diffpure:t_star=2``, ``noise-1``) before any work.

    Raises:
        InvalidArgumentError: naming the spec and what is wrong with it.
    """
    cls, kwargs = parse_spec(spec)
    try:
        cls.check_settings(**kwargs)
    except (InvalidArgumentError, TypeError) as exc:
        raise InvalidArgumentError(f"purification spec {spec!r}: {exc}") from None
    return cls, kwargs


def describe_purifications() -> list[tuple[str, str]]:
    """(name, one-line summary) for every purification, in table order."""
    return [(name, cls.summary) for name, cls in PURIFICATIONS.items()]


__all__ = ["ALIASES", "PURIFICATIONS", "check_spec", "describe_purifications", "get_purification", "parse_spec"]
