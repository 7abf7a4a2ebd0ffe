"""The transform spec language: :func:`parse_transforms` (command line), :func:`transform_from_config`
(``.config`` dicts, also after JSON), and :func:`default_robust_transforms` (``--robust`` / ``default``).

Command-line grammar (whitespace around tokens is ignored)::

    spec        := "default" | alternative ("," alternative)*
    alternative := step ("+" step)*
    step        := name (":" key "=" value)*
    value       := number | number "-" number | word

* ``,`` separates alternatives: with more than one, the result is a :class:`RandomChoice` that
  applies one of them (uniformly) per call, which is the usual EOT reading of
  ``--robust jpeg,resize,crop,noise``. Add ``identity`` to keep some steps on clean images.
* ``+`` chains steps in order (a :class:`Compose`): ``resize+jpeg`` resizes, then compresses.
* ``:key=value`` sets a constructor argument. ``lo-hi`` is a range sampled per call (``50-90``);
  a single number fixes the value. Words (``mode=bicubic``) are passed as strings.
* ``default`` (alone) is :func:`default_robust_transforms`; ``none`` is an alias of ``identity``.
* Names: ``identity``, ``jpeg``, ``resize``, ``crop``, ``noise``, ``blur``.

Examples: ``"jpeg,resize,crop,noise"``, ``"jpeg:quality=50-90,noise:sigma=0.05"``,
``"identity,resize:scale=0.5-0.9:mode=bicubic+jpeg:quality=75"``.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from artshield.errors import InvalidArgumentError

from .image_transforms import GaussianBlur, GaussianNoise, RandomCrop, Resize
from .jpeg import DiffJPEG
from .transform_base import BaseTransform, Compose, Identity, RandomChoice, Transform

__all__ = ["TRANSFORMS", "default_robust_transforms", "parse_transforms", "transform_from_config"]


def default_robust_transforms() -> RandomChoice:
    """The EOT mix behind the command line's ``--robust``.

    ``RandomChoice`` (uniform) over:

    * ``Identity()``: a fifth of the steps optimise the published pixels themselves, so robustness
      is not bought by giving up effectiveness on the clean image;
    * ``DiffJPEG(quality=(50, 90))``: the range social platforms and mimics' re-saves use (Pillow's
      default is 75; below 50 the image is visibly damaged, so a mimic gains little there);
    * ``Resize(scale=(0.5, 1.0))``: down to half resolution (e.g. 1024 px art trained at 512 px);
    * ``RandomCrop(scale=(0.8, 1.0))``: crops keeping at least 80% of the area, like random-crop
      augmentation in fine-tuning scripts;
    * ``GaussianNoise(sigma=(0.0, 0.05))``: noise up to about 13 grey levels, beyond which the image is
      visibly degraded.

    Blur is left out of the default (it removes exactly the high frequencies a small budget lives in,
    and is covered by the evaluation's purification attacks). To add it, spell the mix out:
    ``identity,jpeg:quality=50-90,resize,crop,noise:sigma=0-0.05,blur``.
    """
    return RandomChoice(
        [
            Identity(),
            DiffJPEG(quality=(50, 90)),
            Resize(scale=(0.5, 1.0)),
            RandomCrop(scale=(0.8, 1.0)),
            GaussianNoise(sigma=(0.0, 0.05)),
        ]
    )


# --------------------------------------------------------------------------------------------------
# Serialisation and parsing
# --------------------------------------------------------------------------------------------------

#: Leaf transforms by config / spec name.
TRANSFORMS: dict[str, type[BaseTransform]] = {
    cls.name: cls for cls in (Identity, DiffJPEG, Resize, RandomCrop, GaussianNoise, GaussianBlur)
}
_ALIASES = {"none": "identity"}


def _constructor_keys(cls: type) -> list[str]:
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def _build_leaf(name: str, kwargs: dict[str, Any]) -> BaseTransform:
    cls = TRANSFORMS[name]
    allowed = _constructor_keys(cls)
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        accepted = ", ".join(allowed) if allowed else "no parameters"
        raise InvalidArgumentError(f"`{name}` has no parameter {unknown[0]!r} (it accepts {accepted})")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})


def transform_from_config(config: dict[str, Any]) -> Transform:
    """Rebuild a transform from its ``.config`` dict (inverse of ``.config``, also after JSON).

    Args:
        config: a dict with a ``"name"`` key (``identity``, ``jpeg``, ``resize``, ``crop``, ``noise``,
            ``blur``, ``compose``, ``random_choice``) and that transform's constructor arguments;
            ``compose`` and ``random_choice`` hold their children's configs under ``"transforms"``.

    Raises:
        InvalidArgumentError: unknown name or parameter, or an invalid value.
    """
    if not isinstance(config, dict) or not isinstance(config.get("name"), str):
        raise InvalidArgumentError(f"transform config must be a dict with a string 'name', but is {config!r}")
    kwargs = {k: v for k, v in config.items() if k != "name"}
    name = _ALIASES.get(config["name"], config["name"])
    if name in (Compose.name, RandomChoice.name):
        cls: type[Compose] | type[RandomChoice] = Compose if name == Compose.name else RandomChoice
        allowed = _constructor_keys(cls)
        unknown = [k for k in kwargs if k not in allowed]
        if unknown:
            raise InvalidArgumentError(
                f"`{name}` has no parameter {unknown[0]!r} (it accepts {', '.join(allowed)})"
            )
        children = kwargs.pop("transforms", None)
        if not isinstance(children, list) or not children:
            raise InvalidArgumentError(
                f"`{name}` config must hold a non-empty list 'transforms', but has {children!r}"
            )
        return cls([transform_from_config(c) for c in children], **kwargs)
    if name not in TRANSFORMS:
        known = sorted([*TRANSFORMS, Compose.name, RandomChoice.name])
        raise InvalidArgumentError(f"unknown transform {config['name']!r} (known: {', '.join(known)})")
    return _build_leaf(name, kwargs)


_NUMBER = r"[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?"
_NUMBER_RE = re.compile(rf"(?:{_NUMBER})")
_RANGE_RE = re.compile(rf"({_NUMBER})\s*-\s*({_NUMBER})")
_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WORD_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:]*")
# A ":" starts a new parameter only when a "key=" follows, so values such as "4:4:4" survive.
_PARAM_SPLIT_RE = re.compile(r":(?=\s*[A-Za-z_][A-Za-z0-9_]*\s*=)")


def _parse_number(text: str) -> int | float:
    return int(text) if text.isdigit() else float(text)


def _parse_value(text: str) -> Any:
    if _NUMBER_RE.fullmatch(text):
        return _parse_number(text)
    match = _RANGE_RE.fullmatch(text)
    if match:
        return (_parse_number(match.group(1)), _parse_number(match.group(2)))
    if _WORD_RE.fullmatch(text):
        return text
    raise ValueError(f"cannot read value {text!r} (expected a number, a range 'low-high', or a word)")


def _parse_step(part: str) -> Transform:
    name, has_params, rest = part.partition(":")
    name = _ALIASES.get(name.strip().lower(), name.strip().lower())
    assignments = [piece.strip() for piece in _PARAM_SPLIT_RE.split(rest)] if has_params else []
    if name not in TRANSFORMS:
        raise InvalidArgumentError(
            f"unknown transform {name!r} in transform spec part {part!r} (known: {', '.join(sorted(TRANSFORMS))})"
        )
    kwargs: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, value = (s.strip() for s in assignment.partition("="))
        if not sep or not _KEY_RE.fullmatch(key) or not value:
            raise InvalidArgumentError(
                f"bad parameter {assignment!r} in transform spec part {part!r} (expected key=value)"
            )
        if key in kwargs:
            raise InvalidArgumentError(f"parameter {key!r} given twice in transform spec part {part!r}")
        try:
            kwargs[key] = _parse_value(value)
        except ValueError as exc:
            raise InvalidArgumentError(f"in transform spec part {part!r}: {exc}") from None
    try:
        return _build_leaf(name, kwargs)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"in transform spec part {part!r}: {exc}") from None


def parse_transforms(spec: str) -> Transform:
    """Build a transform from a command-line string (grammar in the module docstring).

    ``"jpeg,resize"`` picks one of the two per call; ``"resize+jpeg"`` applies both in order;
    ``"jpeg:quality=50-90,noise:sigma=0.05"`` sets parameters (``low-high`` is a sampled range);
    ``"default"`` is :func:`default_robust_transforms`. A single step is returned as itself.

    Args:
        spec: the string.

    Raises:
        InvalidArgumentError: naming the part of the spec that could not be read.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidArgumentError(f"transform spec must be a non-empty string, but is {spec!r}")
    if spec.strip().lower() == "default":
        return default_robust_transforms()
    alternatives: list[Transform] = []
    for alternative in spec.split(","):
        steps = [s.strip() for s in alternative.split("+")]
        for step in steps:
            if not step:
                raise InvalidArgumentError(
                    f"empty transform (nothing between separators) in part {alternative!r} of transform spec {spec!r}"
                )
            if step.split(":")[0].strip().lower() == "default":
                raise InvalidArgumentError(
                    f"'default' must be the whole transform spec, but appears in part {alternative.strip()!r}"
                )
        built = [_parse_step(step) for step in steps]
        alternatives.append(built[0] if len(built) == 1 else Compose(built))
    return alternatives[0] if len(alternatives) == 1 else RandomChoice(alternatives)
