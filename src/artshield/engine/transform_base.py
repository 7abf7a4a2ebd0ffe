"""The transform contract, the shared base class and argument helpers, and the combinators.

Contract (what ``engine.perturb`` relies on)::

    transform(images, generator) -> images

* ``images``: float tensor of shape (B, C, H, W) with values in [0, 1] (C is 3, sometimes 1), on any
  device, possibly requiring grad.
* The output has the same shape, device and dtype, lies in [0, 1], and is differentiable w.r.t.
  ``images`` with useful (not almost-everywhere-zero) gradients.
* Every random draw comes from ``generator``: the same generator state gives the same output.
  Draws are made on ``generator.device`` and moved to the images' device, so a CPU generator may
  drive CUDA images. Parameters are drawn per sample where that makes sense.
* Half-precision inputs are processed in float32 and cast back, because an 8x8 DCT or a small blur
  kernel in float16 loses more precision than the perturbation budget (a few grey levels).

Every transform is a :class:`BaseTransform` whose constructor arguments have defaults and are
JSON-serialisable; ``.config`` returns them as a dict with a ``"name"`` key, and
:func:`artshield.engine.transform_spec.transform_from_config` rebuilds the transform.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from artshield.errors import InvalidArgumentError

__all__ = [
    "Transform",
    "Range",
    "BaseTransform",
    "Identity",
    "Compose",
    "RandomChoice",
    "is_number",
    "to_range",
    "uniform_draws",
    "pad_to_multiple",
]


@runtime_checkable
class Transform(Protocol):
    """What the engine calls: ``(images (B, C, H, W) in [0, 1], generator) -> same shape in [0, 1]``."""

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...


Range = tuple[float, float]


# --------------------------------------------------------------------------------------------------
# Argument helpers
# --------------------------------------------------------------------------------------------------


def is_number(value: Any) -> bool:
    # bool is an int subclass; `quality=True` is a mistake, not quality 1.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def to_range(value: Any, name: str, low: float, high: float, *, low_open: bool = False) -> Range:
    """Turn a scalar or a (lo, hi) pair into a validated closed range inside [low, high]."""
    if is_number(value):
        pair = (float(value), float(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(is_number(v) for v in value):
        pair = (float(value[0]), float(value[1]))
    else:
        raise InvalidArgumentError(f"`{name}` must be a number or a (low, high) pair, but is {value!r}")
    lo, hi = pair
    if not all(math.isfinite(v) for v in pair):
        raise InvalidArgumentError(f"`{name}` must be finite, but is {value!r}")
    below = lo <= low if low_open else lo < low
    if below or hi > high:
        bracket = "(" if low_open else "["
        raise InvalidArgumentError(f"`{name}` must lie in {bracket}{low}, {high}], but is {value!r}")
    if lo > hi:
        raise InvalidArgumentError(f"`{name}` range must be (low, high) with low <= high, but is {value!r}")
    return pair


def _json_value(value: Any) -> Any:
    """Tuples become lists so that ``config`` survives ``json.dumps`` / ``json.loads`` unchanged."""
    return list(value) if isinstance(value, tuple) else value


def uniform_draws(n: int, bounds: Range, generator: torch.Generator) -> list[float]:
    """``n`` draws from U[lo, hi] made on the generator's device (so CPU generators drive CUDA data)."""
    lo, hi = bounds
    if lo == hi:
        # A fixed value consumes no randomness; the output is then independent of the generator.
        return [lo] * n
    # float32: float64 is not available on every accelerator (MPS) that a generator may live on.
    u = torch.rand(n, generator=generator, device=generator.device, dtype=torch.float32)
    return (lo + (hi - lo) * u).tolist()


def _check_inputs(images: Any, generator: Any) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        got = (
            f"a {images.dtype} tensor of shape {tuple(images.shape)}"
            if isinstance(images, torch.Tensor)
            else type(images).__name__
        )
        raise InvalidArgumentError(f"`images` must be a float tensor of shape (B, C, H, W), but is {got}")
    if not isinstance(generator, torch.Generator):
        raise InvalidArgumentError(
            f"`generator` must be a torch.Generator, but is {type(generator).__name__}"
        )


# --------------------------------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------------------------------


class BaseTransform:
    """Shared plumbing: input checks, float32 promotion of half inputs, config, repr and equality."""

    name: ClassVar[str] = ""

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        _check_inputs(images, generator)
        if images.shape[0] == 0:
            return images
        work = images if images.dtype in (torch.float32, torch.float64) else images.float()
        return self._apply(work, generator).to(images.dtype)

    def _apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def _params(self) -> dict[str, Any]:
        return {}

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments as a JSON-serialisable dict with a ``"name"`` key."""
        return {"name": self.name, **{k: _json_value(v) for k, v in self._params().items()}}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BaseTransform):
            return NotImplemented
        return type(self) is type(other) and self.config == other.config

    __hash__ = None  # type: ignore[assignment]  # mutable-looking value objects; equality only


# --------------------------------------------------------------------------------------------------
# Identity
# --------------------------------------------------------------------------------------------------


class Identity(BaseTransform):
    """Return the images unchanged (the same tensor object, so the gradient is exactly the identity).

    Useful inside :class:`RandomChoice` so that part of the EOT steps see the clean perturbed image.
    """

    name = "identity"

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        _check_inputs(images, generator)
        return images

# --------------------------------------------------------------------------------------------------
# Padding
# --------------------------------------------------------------------------------------------------


def pad_to_multiple(images: torch.Tensor, multiple: int, mode: str = "reflect") -> torch.Tensor:
    """Pad H and W (at the bottom and right) up to a multiple of `multiple`.

    ``mode="reflect"`` (falling back to replication when a side is too small to reflect) is what models
    see; ``mode="replicate"`` is what libjpeg does to partial MCUs, so the edge blocks are coded as a real
    encoder codes them."""
    height, width = images.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_h == 0 and pad_w == 0:
        return images
    if mode == "reflect" and not (pad_h < height and pad_w < width):
        mode = "replicate"
    return F.pad(images, (0, pad_w, 0, pad_h), mode=mode)

# --------------------------------------------------------------------------------------------------
# Combinators
# --------------------------------------------------------------------------------------------------


def _check_children(transforms: Any, name: str) -> list[Transform]:
    if isinstance(transforms, (str, bytes)) or not isinstance(transforms, Sequence) or not transforms:
        raise InvalidArgumentError(f"`{name}` must be a non-empty list of transforms, but is {transforms!r}")
    for t in transforms:
        if not callable(t):
            raise InvalidArgumentError(f"`{name}` must contain transforms (callables), but contains {t!r}")
    return list(transforms)


def _child_config(t: Transform) -> dict[str, Any]:
    config = getattr(t, "config", None)
    if not isinstance(config, dict):
        raise InvalidArgumentError(f"transform {t!r} has no `config`, so it cannot be serialised")
    return config


class Compose(BaseTransform):
    """Apply every transform in order (e.g. resize, then JPEG, as a re-upload would).

    Args:
        transforms: non-empty list of transforms (any callables following the contract).

    Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    name = "compose"

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = _check_children(transforms, "transforms")

    @property
    def config(self) -> dict[str, Any]:
        return {"name": self.name, "transforms": [_child_config(t) for t in self.transforms]}

    def _params(self) -> dict[str, Any]:
        return {"transforms": self.transforms}

    def _apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for t in self.transforms:
            images = t(images, generator)
        return images


class RandomChoice(BaseTransform):
    """Apply one transform, chosen at random per call (the whole batch gets the same one).

    One per call, not per sample, because transforms differ in cost and shape handling and the EOT
    average is taken over optimisation steps anyway.

    Args:
        transforms: non-empty list of transforms.
        p: optional list of non-negative weights, one per transform (normalised; default uniform).

    Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    name = "random_choice"

    def __init__(self, transforms: Sequence[Transform], p: Sequence[float] | None = None) -> None:
        self.transforms = _check_children(transforms, "transforms")
        if p is not None:
            weights = list(p) if isinstance(p, Sequence) and not isinstance(p, str) else None
            if (
                weights is None
                or len(weights) != len(self.transforms)
                or not all(is_number(v) and math.isfinite(v) and v >= 0 for v in weights)
                or sum(weights) <= 0
            ):
                raise InvalidArgumentError(
                    f"`p` must be {len(self.transforms)} non-negative weights with a positive sum, but is {p!r}"
                )
            p = [float(v) for v in weights]
        self.p: list[float] | None = p

    @property
    def config(self) -> dict[str, Any]:
        return {"name": self.name, "transforms": [_child_config(t) for t in self.transforms], "p": self.p}

    def _params(self) -> dict[str, Any]:
        return {"transforms": self.transforms, "p": self.p}

    def choose(self, generator: torch.Generator) -> Transform:
        """Draw the transform for one call."""
        n = len(self.transforms)
        weights = torch.tensor(self.p if self.p is not None else [1.0] * n, dtype=torch.float32)
        index = torch.multinomial(weights.to(generator.device), 1, generator=generator).item()
        return self.transforms[int(index)]

    def _apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.choose(generator)(images, generator)
