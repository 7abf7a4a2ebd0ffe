"""The perturbation engine: projected gradient steps on an input under a budget.

Every protection method and every input-space federated attack is an *objective* run by this engine:

    objective(images, generator) -> Tensor of shape (B,)

a per-sample loss, attached to the autograd graph of `images`, that the engine maximises (or minimises
with ``minimize=True``). The engine owns everything else: the budget (L-inf or L2, in pixel units of a
[0, 1] image, or none with ``eps=None``), the step rule (sign / normalised / Adam / signed Adam), the
step-size schedule (constant, linear, cosine, multistep milestones), random start, projection, an
optional mask, expectation over transforms (EOT), several Monte-Carlo samples per step, early stopping,
keeping the best iterate, seeding, progress reporting (a callback sees the current iterate and may stop
the run) and batching. The engine knows nothing of diffusion models.

Its sibling :mod:`.invert` optimises several named tensors jointly (and adds L-BFGS) on the same parts:
budgets from :mod:`.budget`, step rules, schedules, gradient averaging, early stops and progress from
:mod:`.steps`. This module keeps the per-sample features of protection (samples frozen at a target,
per-sample best iterates, batching in chunks, EOT) that a joint inversion does not have.

    >>> engine = Perturber(eps=8 / 255, steps=100, step_size=1 / 255, seed=0)
    >>> result = engine.run(objective, images)          # images: float (B, C, H, W) in [0, 1]
    >>> result.images, result.losses[-1]
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from .. import __version__
from ..errors import InvalidArgumentError, MaskError, ObjectiveError
from .budget import NORMS, Budget
from .steps import (
    NONFINITE_POLICIES,
    SCHEDULES,
    STEP_RULES,
    NonFiniteGuard,
    Plateau,
    Progress,
    StepInfo,
    StepRule,
    check_milestones,
    mean_gradients,
    objective_name,
    seeded_generator,
    step_size_at,
)
from .transform_base import Transform

logger = logging.getLogger(__name__)


class Objective(Protocol):
    """A per-sample loss on a batch: ``(B, ...) -> (B,)``, differentiable with respect to the batch."""

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...


@dataclass(frozen=True)
class PerturbConfig:
    """Engine settings, JSON-serialisable (``dataclasses.asdict``) and saved beside every result.

    Args:
        eps (`float`, defaults to 8/255): budget radius, in pixel units of a [0, 1] image for images; None
            (or ``math.inf``) for no ball (then `step_size` must be given and `random_start` is off).
        norm (`str`, defaults to `"linf"`): ``"linf"`` or ``"l2"``.
        steps (`int`, defaults to 100): number of gradient steps.
        step_size (`float`, *optional*): defaults to ``2.5 * eps / steps`` (Madry et al., 2018).
        step_rule (`str`, *optional*): ``"sign"``, ``"normalized"``, ``"adam"`` or ``"signed-adam"``; defaults
            to sign for L-inf and normalized for L2.
        schedule (`str`, defaults to `"constant"`): ``"constant"``, ``"linear"`` or ``"cosine"`` decay to
            ``step_size * final_step_ratio``, or ``"multistep"``: times `gamma` at each of `milestones`
            (fractions of `steps` in (0, 1), or whole 0-based step indices).
        random_start (`bool`, defaults to `False`): start from a uniform draw in the ball.
        samples_per_step (`int`, defaults to 1): Monte-Carlo samples (objective randomness and EOT draws)
            averaged per step; gradients are accumulated one sample at a time to bound memory.
        minimize (`bool`, defaults to `False`): minimise the objective instead of maximising it.
        early_stop_patience (`int`, *optional*): stop when the mean loss has not improved for this many steps.
        early_stop_target (`float`, *optional*): freeze a sample once its loss reaches this value (≥ when
            maximising, ≤ when minimising); stop when all have.
        keep_best (`bool`, defaults to `False`): return each sample's best iterate seen instead of the last.
            With stochastic objectives the "best" is judged on single noisy draws; leave it off there.
        seed (`int`, *optional*): seeds the generator handed to the objective and transforms.
        batch_size (`int`, *optional*): split larger inputs into chunks of this size, run one after another.
        bounds (`tuple`, defaults to `(0.0, 1.0)`): the valid value range; None for unbounded tensors.
        nonfinite (`str`, defaults to `"skip"`): a draw whose gradient holds NaN/inf is dropped from the
            average and logged (fp16 backward passes overflow in rare draws), and three steps in a row with no
            finite draw raise :class:`ObjectiveError`; ``"raise"`` raises at the first one. Never zeroed
            silently (see :class:`~artshield.engine.steps.NonFiniteGuard`).
    """

    eps: float = 8 / 255
    norm: str = "linf"
    steps: int = 100
    step_size: float | None = None
    step_rule: str | None = None
    schedule: str = "constant"
    final_step_ratio: float = 0.01
    random_start: bool = False
    samples_per_step: int = 1
    minimize: bool = False
    early_stop_patience: int | None = None
    early_stop_target: float | None = None
    keep_best: bool = False
    seed: int | None = None
    batch_size: int | None = None
    bounds: tuple[float, float] | None = (0.0, 1.0)
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    nonfinite: str = "skip"

    def __post_init__(self) -> None:
        def fail(name: str, expected: str) -> None:
            raise InvalidArgumentError(f"`{name}` must be {expected}, but is {getattr(self, name)!r}.")

        if self.norm not in NORMS:
            fail("norm", f"one of {', '.join(NORMS)}")
        if isinstance(self.eps, int | float) and self.eps == math.inf:
            object.__setattr__(self, "eps", None)
        if self.eps is not None and not (isinstance(self.eps, int | float) and math.isfinite(self.eps) and self.eps >= 0):
            fail("eps", "a finite number >= 0, or None for no ball")
        if self.eps is None and self.step_size is None:
            raise InvalidArgumentError("`step_size` must be given when `eps` is None (no ball to derive it from).")
        if self.eps is None and self.random_start:
            raise InvalidArgumentError("`random_start` needs a finite `eps` (a ball to draw from).")
        if not (isinstance(self.steps, int) and self.steps >= 0):
            fail("steps", "an integer >= 0")
        if self.step_size is not None and not (math.isfinite(self.step_size) and self.step_size > 0):
            fail("step_size", "a finite number > 0")
        if self.step_rule is not None and self.step_rule not in STEP_RULES:
            fail("step_rule", f"one of {', '.join(STEP_RULES)}")
        if self.schedule not in SCHEDULES:
            fail("schedule", f"one of {', '.join(SCHEDULES)}")
        if not 0 < self.final_step_ratio <= 1:
            fail("final_step_ratio", "in (0, 1]")
        if not (isinstance(self.samples_per_step, int) and self.samples_per_step >= 1):
            fail("samples_per_step", "an integer >= 1")
        if self.early_stop_patience is not None and self.early_stop_patience < 1:
            fail("early_stop_patience", "an integer >= 1 or None")
        if self.batch_size is not None and self.batch_size < 1:
            fail("batch_size", "an integer >= 1 or None")
        if self.nonfinite not in NONFINITE_POLICIES:
            fail("nonfinite", f"one of {', '.join(NONFINITE_POLICIES)}")
        object.__setattr__(self, "milestones", check_milestones(self.milestones, self.gamma))
        if self.schedule == "multistep" and not self.milestones:
            raise InvalidArgumentError("`milestones` must be given for `schedule` 'multistep'.")
        if self.bounds is not None:
            object.__setattr__(self, "bounds", tuple(float(b) for b in self.bounds))
        Budget(self.eps, self.norm, self.bounds)  # validates bounds

    @property
    def resolved_step_size(self) -> float:
        return self.step_size if self.step_size is not None else 2.5 * self.eps / max(self.steps, 1)

    @property
    def resolved_step_rule(self) -> str:
        return self.step_rule or ("sign" if self.norm == "linf" else "normalized")


@dataclass
class PerturbResult:
    """What :meth:`Perturber.run` returns.

    Attributes:
        images: the perturbed batch, ``origin + delta``, detached, same shape/dtype/device as the input.
        delta: the perturbation (inside the budget, the mask and the valid range).
        losses: mean objective per step, at the iterate each step started from.
        final_losses: (B,) objective at the returned iterate's last evaluation (one noisy draw for
            stochastic objectives; use :func:`evaluate_objective` for a careful estimate).
        steps_run: steps actually taken (fewer than configured after an early stop).
        stopped_early: whether an early-stop rule (or the progress callback) ended the run.
        seconds: wall time.
        skipped_draws: Monte-Carlo draws left out because their gradient was not finite.
    """

    images: torch.Tensor
    delta: torch.Tensor
    losses: list[float] = field(default_factory=list)
    final_losses: torch.Tensor | None = None
    steps_run: int = 0
    stopped_early: bool = False
    seconds: float = 0.0
    skipped_draws: int = 0


class Perturber:
    """Projected gradient steps on an input under a budget (see :class:`PerturbConfig` for every setting).

    Args:
        config (`PerturbConfig`, *optional*): the settings; keyword arguments build one when omitted.
        transform (`Transform`, *optional*): a random differentiable transform applied to the perturbed batch
            before every objective call (expectation over transforms, Athalye et al., 2018).
        progress (`bool` or callable, defaults to `False`): True shows a tqdm bar; a callable receives a
            :class:`StepInfo` after every step, with the current perturbed images as ``info.iterate``, and
            ends the run by returning ``True`` (with `batch_size`, it ends the current chunk).
    """

    def __init__(
        self,
        config: PerturbConfig | None = None,
        *,
        transform: Transform | None = None,
        progress: bool | Callable[[StepInfo], bool | None] = False,
        **settings,
    ):
        if config is not None and settings:
            raise InvalidArgumentError("give either `config` or keyword settings, not both.")
        self.config = config if config is not None else PerturbConfig(**settings)
        self.transform = transform
        self.progress = progress

    # ------------------------------------------------------------------ public
    def run(
        self,
        objective: Objective,
        images: torch.Tensor,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        init_delta: torch.Tensor | None = None,
    ) -> PerturbResult:
        """Optimise a perturbation of `images` for `objective`; `mask` (broadcastable to `images`, values in
        [0, 1]) confines it. Randomness comes from `generator`, else from a CPU generator seeded with
        ``config.seed`` (CPU, so a seed gives the same draws on every device). `init_delta` continues from
        an earlier perturbation (projected onto the budget first) instead of zero or a random start — for
        methods that alternate PGD with other work, such as Anti-DreamBooth's ASPL."""
        images = self._check_images(images)
        mask = self._check_mask(mask, images)
        if init_delta is not None and tuple(init_delta.shape) != tuple(images.shape):
            raise InvalidArgumentError(
                f"`init_delta` must have the images' shape {tuple(images.shape)}, but has {tuple(init_delta.shape)}."
            )
        if generator is None:
            generator = seeded_generator(self.config.seed)
        started = time.perf_counter()
        size = self.config.batch_size or images.shape[0]
        chunks = list(range(0, images.shape[0], size))
        results = []
        for index, start in enumerate(chunks):
            chunk_mask = None
            if mask is not None:
                chunk_mask = mask if mask.shape[0] == 1 else mask[start : start + size]
            chunk_init = None if init_delta is None else init_delta[start : start + size].to(images)
            results.append(
                self._run_chunk(
                    objective, images[start : start + size], chunk_mask, generator, index, len(chunks), chunk_init
                )
            )
        return _merge(results, time.perf_counter() - started)

    # ------------------------------------------------------------------ internals
    def _run_chunk(self, objective, origin, mask, generator, chunk, chunks, init_delta=None) -> PerturbResult:
        cfg = self.config
        origin = origin.detach().clone()
        budget = Budget(cfg.eps, cfg.norm, cfg.bounds)
        rule = StepRule(cfg.resolved_step_rule, cfg.norm)
        guard = NonFiniteGuard(cfg.nonfinite, objective)
        direction_sign = -1.0 if cfg.minimize else 1.0
        if init_delta is not None:
            delta = budget.project(origin, init_delta.detach().float(), mask)
        elif cfg.random_start:
            delta = budget.random_start(origin, generator, mask)
        else:
            delta = torch.zeros_like(origin)
        batch = origin.shape[0]
        active = torch.ones(batch, dtype=torch.bool, device=origin.device)
        best_delta = delta.clone()
        best_loss = torch.full((batch,), -math.inf, device=origin.device)  # in "ascent" units
        losses: list[float] = []
        plateau = Plateau(cfg.early_stop_patience)
        stopped_early = False
        last_loss = None
        progress = Progress(self.progress, "perturb")
        progress.start(cfg.steps, chunk, chunks)
        steps_run = 0
        for step in range(cfg.steps):
            grad, loss = self._gradient(objective, origin, delta, generator, guard, step)
            ascent_loss = direction_sign * loss
            last_loss = loss
            losses.append(float(loss.mean()))
            if cfg.keep_best:
                improved = ascent_loss > best_loss
                best_loss = torch.where(improved, ascent_loss, best_loss)
                best_delta[improved] = delta[improved]
            if cfg.early_stop_target is not None:
                active &= ascent_loss < direction_sign * cfg.early_stop_target
            alpha = step_size_at(
                step, cfg.steps, cfg.resolved_step_size, cfg.schedule, cfg.final_step_ratio, cfg.milestones, cfg.gamma
            )
            update = rule(direction_sign * grad)
            update = update * active.view(-1, *([1] * (update.dim() - 1))).to(update.dtype)
            if mask is not None:
                update = update * mask
            delta = budget.project(origin, delta + alpha * update, mask)
            steps_run = step + 1
            iterate = (origin + delta).detach() if progress.wants_iterate else None
            if progress.report(StepInfo(step + 1, cfg.steps, losses[-1], alpha, chunk, chunks, iterate)):
                stopped_early = True
                break
            if not bool(active.any()):
                stopped_early = True
                break
            if plateau.update(float(ascent_loss.mean())):
                stopped_early = True
                break
        progress.close()
        if cfg.keep_best and steps_run:
            delta = best_delta
            last_loss = direction_sign * best_loss
        return PerturbResult(
            images=(origin + delta).detach(),
            delta=delta.detach(),
            losses=losses,
            final_losses=None if last_loss is None else last_loss.detach(),
            steps_run=steps_run,
            stopped_early=stopped_early,
            skipped_draws=guard.skipped,
        )

    def _gradient(self, objective, origin, delta, generator, guard: NonFiniteGuard, step: int):
        """Average gradient and loss over `samples_per_step` draws, one backward pass per draw; the first
        step checks the objective's contract, every step checks that the loss stays finite."""

        def evaluate(leaves):
            inputs = origin + leaves["images"]
            if self.transform is not None:
                inputs = self.transform(inputs, generator)
            loss = objective(inputs, generator)
            if step == 0:
                check_objective_output(loss, origin.shape[0], objective)
            elif not bool(torch.isfinite(loss).all()):
                raise ObjectiveError(
                    f"objective {_name(objective)} returned non-finite values mid-run ({loss.detach().tolist()}); "
                    "with half-precision weights try dtype fp32."
                )
            return loss

        grads, loss = mean_gradients(evaluate, {"images": delta}, self.config.samples_per_step, guard, step + 1)
        return grads["images"], loss

    def _check_images(self, images) -> torch.Tensor:
        if not isinstance(images, torch.Tensor):
            raise InvalidArgumentError(f"`images` must be a torch.Tensor, but is {type(images).__name__}.")
        if images.dim() < 2:
            raise InvalidArgumentError(f"`images` must have a batch dimension, but has shape {tuple(images.shape)}.")
        if not images.is_floating_point():
            raise InvalidArgumentError(f"`images` must be a floating-point tensor, but has dtype {images.dtype}.")
        if not bool(torch.isfinite(images).all()):
            raise InvalidArgumentError("`images` contains NaN or infinite values.")
        bounds = self.config.bounds
        if bounds is not None and (images.min() < bounds[0] - 1e-6 or images.max() > bounds[1] + 1e-6):
            raise InvalidArgumentError(
                f"`images` must lie in [{bounds[0]}, {bounds[1]}], but spans "
                f"[{float(images.min()):.4g}, {float(images.max()):.4g}]."
            )
        return images.detach().float() if images.dtype != torch.float32 else images.detach()

    @staticmethod
    def _check_mask(mask, images) -> torch.Tensor | None:
        if mask is None:
            return None
        if not isinstance(mask, torch.Tensor):
            raise MaskError(f"`mask` must be a torch.Tensor, but is {type(mask).__name__}.")
        if mask.dim() != images.dim():
            raise MaskError(f"`mask` must have {images.dim()} dimensions like the images, but has shape {tuple(mask.shape)}.")
        for axis, (m, i) in enumerate(zip(mask.shape, images.shape, strict=True)):
            if m not in (1, i):
                raise MaskError(
                    f"`mask` of shape {tuple(mask.shape)} does not fit images of shape {tuple(images.shape)} (axis {axis})."
                )
        if mask.min() < 0 or mask.max() > 1:
            raise MaskError("`mask` values must lie in [0, 1].")
        if not bool((mask > 0).any()):
            raise MaskError("`mask` is empty: it leaves no pixel to perturb.")
        return mask.to(device=images.device, dtype=torch.float32)

    @property
    def config_dict(self) -> dict:
        """The engine's settings as JSON, stamped with the class and toolkit version."""
        return {"_class_name": type(self).__name__, "_artshield_version": __version__, **dataclasses.asdict(self.config)}


def check_objective_output(loss, batch: int | None, objective) -> None:
    """Raise :class:`ObjectiveError` unless `loss` is a finite tensor attached to the autograd graph, of
    shape (B,) for ``batch=B`` or, for ``batch=None`` (the inversion engine), a scalar or any 1-D tensor."""
    name = _name(objective)
    expected = f"({batch},)" if batch is not None else "() or (N,)"
    if not isinstance(loss, torch.Tensor):
        raise ObjectiveError(f"objective {name} must return a torch.Tensor of shape {expected}, but returned {type(loss).__name__}.")
    if batch is not None and tuple(loss.shape) != (batch,):
        raise ObjectiveError(f"objective {name} must return shape ({batch},) (one loss per sample), but returned {tuple(loss.shape)}.")
    if batch is None and loss.dim() > 1:
        raise ObjectiveError(f"objective {name} must return a scalar or a 1-D tensor, but returned shape {tuple(loss.shape)}.")
    if not loss.requires_grad:
        raise ObjectiveError(
            f"objective {name} returned a loss that is not attached to the autograd graph of its input "
            "(was it computed under torch.no_grad(), or from a detached copy?)."
        )
    if not bool(torch.isfinite(loss).all()):
        raise ObjectiveError(f"objective {name} returned non-finite values {loss.detach().tolist()}.")


@torch.no_grad()
def evaluate_objective(
    objective: Objective,
    images: torch.Tensor,
    samples: int = 8,
    seed: int = 0,
    transform: Transform | None = None,
) -> torch.Tensor:
    """Mean objective over `samples` draws, shape (B,), without gradients.

    With the same `seed`, two calls use the same random draws (common random numbers), so comparing an
    image before and after protection measures the perturbation, not sampling noise.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    total = torch.zeros(images.shape[0], device=images.device, dtype=torch.float32)
    for _ in range(samples):
        inputs = images if transform is None else transform(images, generator)
        total += objective(inputs, generator).float()
    return total / samples


def _merge(results: list[PerturbResult], seconds: float) -> PerturbResult:
    if len(results) == 1:
        results[0].seconds = seconds
        return results[0]
    steps = max(len(r.losses) for r in results)
    losses = []
    for i in range(steps):
        values = [r.losses[i] for r in results if i < len(r.losses)]
        losses.append(sum(values) / len(values))
    finals = [r.final_losses for r in results]
    return PerturbResult(
        images=torch.cat([r.images for r in results]),
        delta=torch.cat([r.delta for r in results]),
        losses=losses,
        final_losses=None if any(f is None for f in finals) else torch.cat(finals),
        steps_run=max(r.steps_run for r in results),
        stopped_early=all(r.stopped_early for r in results),
        seconds=seconds,
        skipped_draws=sum(r.skipped_draws for r in results),
    )


_name = objective_name
