"""The purification calling contract: the :class:`Purification` base class, argument checks, seeding.

Every purification (:mod:`.purify_image`, :mod:`.purify_model`) subclasses :class:`Purification`; the
convention is in :mod:`artshield.evaluate.purify`, the public face of the purification modules.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, ClassVar

import torch

from ..errors import InvalidArgumentError

#: Seed of the generator used when a purification is called without one.
DEFAULT_SEED = 0


def check_images(images: Any) -> torch.Tensor:
    """`images` if it is a float tensor (B, 1 or 3, H, W) of finite values in [0, 1]; else InvalidArgumentError."""
    if not isinstance(images, torch.Tensor):
        raise InvalidArgumentError(f"`images` must be a torch.Tensor (B, C, H, W) in [0, 1], but is {type(images).__name__}.")
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise InvalidArgumentError(f"`images` must have shape (B, 1 or 3, H, W), but has {tuple(images.shape)}.")
    if not images.is_floating_point():
        raise InvalidArgumentError(f"`images` must be a floating-point tensor in [0, 1], but has dtype {images.dtype}.")
    if images.numel() and not bool(torch.isfinite(images).all()):
        raise InvalidArgumentError("`images` contains NaN or infinite values.")
    if images.numel() and (float(images.min()) < -1e-6 or float(images.max()) > 1 + 1e-6):
        raise InvalidArgumentError(
            f"`images` must lie in [0, 1], but spans [{float(images.min()):.4g}, {float(images.max()):.4g}]."
        )
    return images


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if value is None or isinstance(value, (bool, int, float, str, list, dict)):
        return value
    return repr(value)


def _plain(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else repr(number)


def check_number(value: Any, name: str, low: float, high: float, *, integer: bool = False, low_open: bool = False,
                 high_open: bool = False, why: str = "") -> Any:
    """Validate a numeric constructor argument (bools are not numbers here: ``quality=True`` is a mistake);
    `why` is added to the message."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and integer:
        ok = float(value).is_integer()
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        kind = "an integer" if integer else "a number"
        interval = f"{'(' if low_open else '['}{_plain(low)}, {_plain(high)}{')' if high_open else ']'}"
        raise InvalidArgumentError(f"`{name}` must be {kind} in {interval}{why}, but is {value!r}.")
    return int(value) if integer else float(value)


class Purification:
    """Base class: see the module docstring for the calling convention.

    Subclasses set `name`, `summary`, `primary` (the parameter a number after the name sets), `random`
    (whether the output depends on the generator), list their settings in `parameters`, and implement
    :meth:`_apply` on a float32 batch (the base class validates, converts and restores dtype and device).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    primary: ClassVar[str | None] = None
    random: ClassVar[bool] = False
    uses_model: ClassVar[bool] = False
    parameters: ClassVar[tuple[str, ...]] = ()

    model = None

    @classmethod
    def needs_model(cls, settings: dict[str, Any]) -> bool:
        """Whether building it with these settings needs a diffusion model."""
        return cls.uses_model

    @classmethod
    def check_settings(cls, **settings: Any) -> dict[str, Any]:
        """Validate constructor settings (what a spec can set) without a model or any loading, and return them
        normalised; a bad value is an InvalidArgumentError naming it. Lets a command refuse a bad spec before
        it loads a model. Purifications that use a model override this; the others are cheap to build."""
        if cls.uses_model:
            return dict(settings)
        return cls(**settings).settings

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Purify a batch (B, C, H, W) in [0, 1]; same shape, dtype and device out. See the module docstring."""
        images = check_images(images)
        if generator is None:
            generator = torch.Generator(device="cpu").manual_seed(DEFAULT_SEED)
        elif not isinstance(generator, torch.Generator):
            raise InvalidArgumentError(f"`generator` must be a torch.Generator or None, but is {type(generator).__name__}.")
        if images.shape[0] == 0:
            return images.clone()
        # float32 throughout: a half-precision JPEG/blur/VAE round trip loses more than a perturbation's budget.
        out = self._apply(images.detach().float(), generator)
        return out.clamp(0.0, 1.0).to(device=images.device, dtype=images.dtype)

    def _apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    @property
    def settings(self) -> dict[str, Any]:
        """The constructor settings (JSON values), without the model."""
        return {key: _jsonable(getattr(self, key)) for key in self.parameters}

    @property
    def config(self) -> dict[str, Any]:
        """JSON-serialisable settings: ``name``, every parameter, and the model's source when one is used."""
        config: dict[str, Any] = {"name": self.name, **self.settings}
        if self.model is not None:
            config["model"] = getattr(self.model, "source", "unknown")
        return config

    @property
    def spec(self) -> str:
        """The command-line spec that rebuilds this purification (given the same model)."""
        parts = [self.name]
        for key, value in self.settings.items():
            if value is None or value == "":
                continue  # the default (None / empty prompt); an empty value would not parse back
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, float):
                text = repr(value)
            else:
                text = str(value)
            parts.append(f"{key}={text}")
        return ":".join(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.settings.items())})"




def image_seed(seed: int, name: str) -> int:
    """The seed of one file's generator: derived from the run's seed and the file's name, so an image gets the
    same draws whatever else is in its folder."""
    digest = hashlib.sha256(f"{int(seed)}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # a non-negative int64


def progress_bar(enabled: bool, total: int, desc: str):
    """A tqdm bar over `total` units, or None when disabled or there is only one unit."""
    if not enabled or total <= 1:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


__all__ = ["DEFAULT_SEED", "Purification", "check_images", "check_number", "image_seed", "progress_bar"]
