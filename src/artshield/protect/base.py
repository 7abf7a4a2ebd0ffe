"""The base class of every protection method.

A method is an objective on :mod:`artshield.engine.perturb`, configured once and called on images, in
the spirit of torchattacks (``AdvDM(model, eps=8/255, steps=100)(images)``). A subclass sets `name`,
`summary` and its defaults, stores its own hyperparameters (listed in `hyperparameters`), and implements
:meth:`objective`; optionally :meth:`prepare` (compute targets from the clean images). The engine owns the
loop, the budget, EOT, seeding and progress; this class owns what every method shares on top of it:
image types, devices, full-resolution handling (padding, tiles, greyscale) and strength presets.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from .. import __version__
from ..engine import PerturbConfig, Perturber, evaluate_objective
from ..errors import InvalidArgumentError
from .tiling import FullResolutionObjective

# Strength presets: (eps, steps). The step size keeps Mist/AdvDM's reference ratio of total travel to
# budget (1/255 per step x 100 steps for eps 16/255: steps * step_size = 6.25 * eps).
STRENGTHS: dict[str, tuple[float, int]] = {
    "low": (4 / 255, 50),
    "medium": (8 / 255, 100),
    "high": (16 / 255, 200),
}
TRAVEL_RATIO = 6.25


def preset_step_size(eps: float, steps: int) -> float:
    """The step size presets use: ``6.25 * eps / steps`` (AdvDM's 1/255 x 100 steps at eps 16/255)."""
    return TRAVEL_RATIO * eps / max(steps, 1)


@dataclass
class ProtectionResult:
    """A protected batch: `images` (B, C, H, W) in [0, 1], the perturbation `delta`, the engine's per-step
    mean `losses`, `steps_run`, wall `seconds`, and the method's `config` (JSON-serialisable)."""

    images: torch.Tensor
    delta: torch.Tensor
    losses: list[float] = field(default_factory=list)
    steps_run: int = 0
    seconds: float = 0.0
    config: dict = field(default_factory=dict)


class ProtectionMethod:
    """Base class: see the module docstring.

    Args (shared by every method; each subclass documents its defaults):
        model (`DiffusionModel`): from :func:`artshield.models.load`.
        eps (`float`): L-inf (or L2) budget in pixel units of a [0, 1] image.
        steps (`int`): gradient steps.
        step_size (`float`, *optional*): defaults to the method's reference value.
        norm, step_rule, schedule, random_start, samples_per_step: engine settings (see `PerturbConfig`).
        robust (`bool` or transform, defaults to `False`): expectation over transforms; True uses
            :func:`artshield.engine.transforms.default_robust_transforms`.
        seed (`int`, *optional*): makes the run reproducible.
        progress (`bool` or callable): a tqdm bar, or a callback receiving `StepInfo`.
        tile_size (`int`, *optional*): larger images are processed in overlapping tiles of this size;
            defaults to twice the model's native resolution.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    minimize: ClassVar[bool] = False  # whether the objective is minimised (targeted methods)
    hyperparameters: ClassVar[tuple[str, ...]] = ()
    default_eps: ClassVar[float] = 8 / 255
    default_steps: ClassVar[int] = 100
    default_step_size: ClassVar[float | None] = None

    def __init__(
        self,
        model,
        *,
        eps: float | None = None,
        steps: int | None = None,
        step_size: float | None = None,
        norm: str = "linf",
        step_rule: str | None = None,
        schedule: str = "constant",
        random_start: bool = False,
        samples_per_step: int = 1,
        robust: bool | Any = False,
        seed: int | None = None,
        progress: bool | Any = False,
        tile_size: int | None = None,
    ):
        self.model = model
        eps = self.default_eps if eps is None else eps
        steps = self.default_steps if steps is None else steps
        if step_size is None:
            step_size = self.default_step_size if self.default_step_size is not None else preset_step_size(eps, steps)
        self.engine_config = PerturbConfig(
            eps=eps,
            norm=norm,
            steps=steps,
            step_size=step_size,
            step_rule=step_rule,
            schedule=schedule,
            random_start=random_start,
            samples_per_step=samples_per_step,
            minimize=self.minimize,
            seed=seed,
        )
        self.transform = self._resolve_transform(robust)
        self.progress = progress
        if tile_size is not None and tile_size < model.pixel_multiple:
            raise InvalidArgumentError(f"`tile_size` must be at least {model.pixel_multiple}, but is {tile_size}.")
        self.tile_size = tile_size or 2 * model.native_resolution

    @classmethod
    def from_strength(cls, model, strength: str = "medium", **kwargs) -> ProtectionMethod:
        """Build with a strength preset (``low``, ``medium``, ``high``); keyword arguments override it."""
        if strength not in STRENGTHS:
            raise InvalidArgumentError(f"`strength` must be one of {', '.join(STRENGTHS)}, but is {strength!r}.")
        eps, steps = STRENGTHS[strength]
        kwargs.setdefault("eps", eps)
        kwargs.setdefault("steps", steps)
        kwargs.setdefault("step_size", preset_step_size(kwargs["eps"], kwargs["steps"]))
        return cls(model, **kwargs)

    # ------------------------------------------------------------------ hooks
    def objective(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The loss (B,) on RGB images in [0, 1] whose sides are multiples of the model's pixel multiple."""
        raise NotImplementedError

    def prepare(self, images: torch.Tensor) -> None:
        """Called once with the clean images before optimising (e.g. to compute a target latent)."""

    # ------------------------------------------------------------------ public
    @property
    def eps(self) -> float:
        return self.engine_config.eps

    @property
    def steps(self) -> int:
        return self.engine_config.steps

    @property
    def config(self) -> dict:
        """JSON-serialisable settings: method name, its hyperparameters, the engine's and the transform's."""
        engine = dataclasses.asdict(self.engine_config)
        transform = getattr(self.transform, "config", None) if self.transform is not None else None
        return {
            "method": self.name,
            "artshield_version": __version__,
            "model": getattr(self.model, "source", "unknown"),
            **{key: _jsonable(getattr(self, key)) for key in self.hyperparameters},
            "tile_size": self.tile_size,
            "engine": {k: _jsonable(v) for k, v in engine.items()},
            "robust": transform if transform is not None else bool(self.transform),
        }

    def full_resolution_objective(self) -> FullResolutionObjective:
        return FullResolutionObjective(self.objective, self.model.pixel_multiple, self.tile_size)

    def protect(self, images, mask: torch.Tensor | None = None) -> ProtectionResult:
        """Protect a batch (tensor (B, C, H, W) in [0, 1], a PIL image or a path) and return the details."""
        batch, _ = _as_batch(images)
        device = batch.device
        batch = batch.to(self.model.device)
        if mask is not None:
            mask = mask.to(self.model.device)
        started = time.perf_counter()
        self.prepare(batch)
        engine = Perturber(self.engine_config, transform=self.transform, progress=self.progress)
        result = engine.run(self.full_resolution_objective(), batch, mask=mask)
        return ProtectionResult(
            images=result.images.to(device),
            delta=result.delta.to(device),
            losses=result.losses,
            steps_run=result.steps_run,
            seconds=time.perf_counter() - started,
            config=self.config,
        )

    def __call__(self, images, mask: torch.Tensor | None = None):
        """Protect and return the same kind of thing: a tensor for a tensor, a PIL image for a PIL image or path."""
        batch, kind = _as_batch(images)
        protected = self.protect(batch, mask).images
        if kind == "tensor":
            return protected
        from PIL import Image

        array = (protected[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
        return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)

    @torch.no_grad()
    def evaluate(self, images: torch.Tensor, samples: int = 8, seed: int = 0) -> torch.Tensor:
        """The objective (B,) averaged over `samples` seeded draws — the same draws for every call, so
        evaluating before and after protection compares like with like."""
        batch, _ = _as_batch(images)
        self.prepare(batch.to(self.model.device))
        return evaluate_objective(self.full_resolution_objective(), batch.to(self.model.device), samples, seed).cpu()

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.hyperparameters)
        return f"{type(self).__name__}(eps={self.eps:.4g}, steps={self.steps}{', ' + params if params else ''})"

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _resolve_transform(robust):
        if robust is False or robust is None:
            return None
        if robust is True:
            from ..engine.transforms import default_robust_transforms

            return default_robust_transforms()
        if isinstance(robust, str):
            from ..engine.transforms import parse_transforms

            return parse_transforms(robust)
        if callable(robust):
            return robust
        raise InvalidArgumentError(f"`robust` must be a bool, a transform spec string or a transform, but is {robust!r}.")


def _as_batch(images) -> tuple[torch.Tensor, str]:
    """Accept a (B, C, H, W) / (C, H, W) tensor in [0, 1], a PIL image, or a path; return a float batch."""
    if isinstance(images, torch.Tensor):
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise InvalidArgumentError(
                f"`images` must have shape (B, 3, H, W) or (B, 1, H, W), but has {tuple(images.shape)}."
            )
        return images.float(), "tensor"
    if isinstance(images, str | Path):
        from ..imageio import read_image

        return read_image(images).rgb, "pil"
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a core dependency
        Image = None
    if Image is not None and isinstance(images, Image.Image):
        import numpy as np

        image = images.convert("RGB") if images.mode not in ("RGB", "L") else images
        array = np.asarray(image, dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array)
        tensor = tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1)
        return tensor.unsqueeze(0), "pil"
    raise InvalidArgumentError(f"`images` must be a tensor, a PIL image or a path, but is {type(images).__name__}.")


def _jsonable(value):
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, float | int | str | bool | list | dict) or value is None:
        return value
    return repr(value)
