"""The base class of every protection method.

A method is an objective on :mod:`artshield.engine.perturb`, configured once and called on images, in
the spirit of torchattacks (``AdvDM(model, eps=8/255, steps=100)(images)``). A subclass sets `name`,
`summary` and its defaults, stores its own hyperparameters (listed in `hyperparameters`), and implements
:meth:`objective`; optionally :meth:`prepare` (compute targets from the clean images), :meth:`conditions`
(full-resolution tensors such as a mask, cropped and padded with the image and handed to the objective) and
:meth:`default_mask`. The engine owns the loop, the budget, EOT, seeding and progress; this class owns what
every method shares on top of it: image types, devices, full-resolution handling (padding, tiles,
greyscale), masks and strength presets.

Masks follow the ``protect --mask`` convention: **white (1) marks the region an editor may repaint; the
protection covers the rest**. The perturbation is confined to the black (0) region for every method;
methods that model the edit (DiffusionGuard, PhotoGuard's diffusion attack) also read the mask itself.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from .. import __version__
from ..engine import PerturbConfig, Perturber, PerturbResult, evaluate_objective
from ..errors import InvalidArgumentError, MaskError
from ..imageio import as_rgb
from .presets import STRENGTHS, TRAVEL_RATIO, preset_step_size  # noqa: F401 - re-exported
from .tiling import FullResolutionObjective


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
        norm, step_rule, schedule, random_start, samples_per_step: engine settings (see `PerturbConfig`);
            when omitted, the method's `engine_defaults` (e.g. PhotoGuard's random start and linear decay),
            else L-inf, sign steps, a constant step, no random start and one sample per step.
        robust (`bool` or transform, defaults to `False`): expectation over transforms; True uses
            :func:`artshield.engine.transforms.default_robust_transforms`.
        seed (`int`, *optional*): makes the run reproducible.
        progress (`bool` or callable): a tqdm bar, or a callback receiving `StepInfo`.
        tile_size (`int`, *optional*): images that do not fit in ``tile_size²`` pixels are processed in tiles
            of that area (long strips as side-by-side segments, see :mod:`.tiling`); defaults to twice the
            model's native resolution.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    minimize: ClassVar[bool] = False  # whether the objective is minimised (targeted methods)
    hyperparameters: ClassVar[tuple[str, ...]] = ()
    default_eps: ClassVar[float] = 8 / 255
    default_steps: ClassVar[int] = 100
    default_step_size: ClassVar[float | None] = None
    # Engine settings a method's reference uses by default (keys: norm, schedule, random_start,
    # samples_per_step); explicit constructor arguments override them.
    engine_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        model,
        *,
        eps: float | None = None,
        steps: int | None = None,
        step_size: float | None = None,
        norm: str | None = None,
        step_rule: str | None = None,
        schedule: str | None = None,
        random_start: bool | None = None,
        samples_per_step: int | None = None,
        robust: bool | Any = False,
        seed: int | None = None,
        progress: bool | Any = False,
        tile_size: int | None = None,
    ):
        self.model = model
        defaults = {"norm": "linf", "schedule": "constant", "random_start": False, "samples_per_step": 1}
        defaults.update(self.engine_defaults)
        norm = defaults["norm"] if norm is None else norm
        schedule = defaults["schedule"] if schedule is None else schedule
        random_start = defaults["random_start"] if random_start is None else random_start
        samples_per_step = defaults["samples_per_step"] if samples_per_step is None else samples_per_step
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
        """Build with a strength preset (``low``, ``medium``, ``high``); keyword arguments override it.
        Presets are L-inf budgets, so they use the L-inf norm unless `norm` is given."""
        if strength not in STRENGTHS:
            raise InvalidArgumentError(f"`strength` must be one of {', '.join(STRENGTHS)}, but is {strength!r}.")
        eps, steps = STRENGTHS[strength]
        kwargs.setdefault("norm", "linf")
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

    def default_mask(self, images: torch.Tensor) -> torch.Tensor | None:
        """The editable-region mask (B or 1, 1, H, W) to use when none is given; None: protect everything."""
        return None

    def conditions(self, images: torch.Tensor, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Full-resolution tensors (B or 1, k, H, W) aligned with `images` that the objective needs, e.g. the
        mask. They are cropped and padded exactly like the images (tiles, padding) and passed to
        :meth:`objective` as keyword arguments. Default: none."""
        return {}

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

    def full_resolution_objective(self, images: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        """The objective on images of any size: tiles, padding and greyscale handled; with `images` (the clean
        batch) and `mask`, also the method's :meth:`conditions`."""
        conditions = self.conditions(images, mask) if images is not None else {}
        if not conditions:
            return FullResolutionObjective(self.objective, self.model.pixel_multiple, self.tile_size)
        return ConditionedObjective(self.objective, conditions, self.model.pixel_multiple, self.tile_size)

    def editable_mask(self, images: torch.Tensor, mask=None) -> torch.Tensor | None:
        """Check and normalise a mask (white = editable) for `images`: a PIL image, a path, or an (H, W) or
        (1 or B, 1 or C, H, W) tensor in [0, 1] becomes a binary (1 or B, 1, H, W) float tensor on the images'
        device (channels averaged, threshold 0.5). None gives :meth:`default_mask`."""
        if mask is None:
            return self.default_mask(images)
        if not isinstance(mask, torch.Tensor):
            try:
                mask = as_batch(mask)[0]
            except InvalidArgumentError:
                raise MaskError(f"`mask` must be a tensor, a PIL image or a path, but is {type(mask).__name__}.") from None
        mask = mask.detach().float()
        mask = mask.view(1, 1, *mask.shape) if mask.dim() == 2 else mask
        mask = mask.unsqueeze(0) if mask.dim() == 3 else mask
        if mask.dim() != 4 or mask.shape[0] not in (1, images.shape[0]):
            raise MaskError(f"`mask` must have shape (H, W) or (1 or B, C, H, W), but has {tuple(mask.shape)}.")
        if tuple(mask.shape[-2:]) != tuple(images.shape[-2:]):
            (mh, mw), (ih, iw) = mask.shape[-2:], images.shape[-2:]
            raise MaskError(f"the mask is {mw}×{mh} pixels but the image is {iw}×{ih}; they must match.")
        if mask.min() < 0 or mask.max() > 1:
            raise MaskError("`mask` values must lie in [0, 1] (white = editable, black = protected).")
        mask = (mask.mean(dim=1, keepdim=True) >= 0.5).float().to(images.device)
        if bool((mask.flatten(1).min(dim=1).values > 0).any()):
            raise MaskError("the mask is white everywhere: it leaves nothing to protect (black = protected).")
        return mask

    def perturb(
        self,
        batch: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        init_delta: torch.Tensor | None = None,
        steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> PerturbResult:
        """One engine run on a batch already on the model's device, `mask` from :meth:`editable_mask`; the
        perturbation is confined to the protected (mask 0) region. `init_delta`, `steps` and `generator`
        let methods that alternate PGD with other work (ASPL) continue one perturbation over several runs."""
        config = self.engine_config if steps is None else dataclasses.replace(self.engine_config, steps=steps)
        engine = Perturber(config, transform=self.transform, progress=self.progress)
        keep = None if mask is None else 1.0 - mask
        objective = self.full_resolution_objective(batch, mask)
        return engine.run(objective, batch, mask=keep, generator=generator, init_delta=init_delta)

    def protect(self, images, mask: torch.Tensor | None = None) -> ProtectionResult:
        """Protect a batch (tensor (B, C, H, W) in [0, 1], a PIL image or a path) and return the details.
        `mask` (white = may be repainted by an editor) confines the perturbation to its black region."""
        batch, _ = as_batch(images)
        device = batch.device
        batch = batch.to(self.model.device)
        started = time.perf_counter()
        mask = self.editable_mask(batch, mask)
        self.prepare(batch)
        result = self.perturb(batch, mask)
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
        batch, kind = as_batch(images)
        protected = self.protect(batch, mask).images
        if kind == "tensor":
            return protected
        from PIL import Image

        array = (protected[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
        return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)

    @torch.no_grad()
    def evaluate(self, images: torch.Tensor, samples: int = 8, seed: int = 0, mask: torch.Tensor | None = None):
        """The objective (B,) averaged over `samples` seeded draws — the same draws for every call, so
        evaluating before and after protection compares like with like. `mask` as in :meth:`protect`."""
        batch, _ = as_batch(images)
        batch = batch.to(self.model.device)
        mask = self.editable_mask(batch, mask)
        self.prepare(batch)
        return evaluate_objective(self.full_resolution_objective(batch, mask), batch, samples, seed).cpu()

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


class ConditionedObjective:
    """A full-resolution objective that also hands the method its conditions (a mask, a target...),
    cropped and padded exactly like the image: they travel through the tiling as extra channels after
    RGB and are split off again (detached) before the method's objective sees the image."""

    def __init__(self, objective, conditions: dict[str, torch.Tensor], multiple: int, tile_size: int):
        self.objective = objective
        self.names = list(conditions)
        self.widths = [int(c.shape[1]) for c in conditions.values()]
        self.stack = torch.cat([c.float() for c in conditions.values()], dim=1)
        self.tiled = FullResolutionObjective(self._split, multiple, tile_size)

    @property
    def __name__(self) -> str:  # used by the engine's error messages
        return getattr(self.objective, "__qualname__", type(self.objective).__name__)

    def boxes(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        return self.tiled.boxes(height, width)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        images = as_rgb(images)
        stack = self.stack.to(device=images.device, dtype=images.dtype)
        stack = stack.expand(images.shape[0], -1, -1, -1) if stack.shape[0] == 1 else stack
        return self.tiled(torch.cat([images, stack], dim=1), generator)

    def _split(self, view: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        parts = torch.split(view[:, 3:].detach(), self.widths, dim=1)
        return self.objective(view[:, :3], generator, **dict(zip(self.names, parts, strict=True)))


def as_batch(images) -> tuple[torch.Tensor, str]:
    """Accept a (B, C, H, W) / (C, H, W) tensor in [0, 1], a PIL image, or a path; return a float batch and
    what it was (``"tensor"`` or ``"pil"``, for a path too). Every method's entry point uses it."""
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
