"""The inversion engine: optimise one or several named tensors, jointly, to match a signal.

:mod:`.perturb` nudges a given image inside a small ball; inversion recovers an input. The two callers it
is built for:

- **Gradient leakage** (DLG, iDLG, Inverting Gradients; :mod:`artshield.fl_bridge`): start from noise, fit
  an image *and* a label logit tensor jointly so that the model's gradient on them matches a client's
  shared gradient. No ball (``eps=None``), a [0, 1] box on the image or none, L-BFGS (DLG) or Adam / Adam
  on signed gradients with step decay at milestones (Geiping et al.), priors such as
  :func:`total_variation` added by the objective, and a callback that sees the current image so the caller
  can log PSNR to the ground truth and stop on it.
- **CGI-DM** (:mod:`artshield.authenticate`): refill the removed half of a latent by *maximising*
  ``L_pre - L_ft``: a mask pins the kept half exactly, an L2 ball bounds the change in latent space, and
  there is no [0, 1] box because a latent is not an image.

Everything else is shared with :mod:`.perturb` rather than repeated: budgets and projection
(:class:`~.budget.Budget`, now with ``eps=None``), step rules, schedules, Monte-Carlo gradient averaging,
the non-finite guard, early stops, seeding and progress (:mod:`.steps`), and the objective contract
(:func:`~.perturb.check_objective_output`). What is added here is what a per-sample perturbation has no use
for: several tensors with their own budgets and masks, minimising by default, L-BFGS, and a scalar loss.

    >>> inverter = Inverter(steps=300, step_rule="lbfgs", step_size=1.0,
    ...                     budgets={"image": Budget(None, bounds=(0, 1)), "label": None})
    >>> result = inverter.run(objective, {"image": torch.rand(1, 3, 32, 32), "label": torch.randn(1, 10)})
    >>> result.values["image"], result.final_loss

An objective is ``objective(values, generator) -> Tensor``, where `values` is what `init` was (a tensor,
or a dict of named tensors) at the current iterate; it returns a scalar or a 1-D tensor of losses
(summed for the gradient, averaged for logging and early stopping), attached to the autograd graph.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from .. import __version__
from ..errors import InvalidArgumentError, MaskError, ObjectiveError
from .budget import Budget
from .perturb import check_objective_output
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

INVERT_STEP_RULES = (*STEP_RULES, "lbfgs")
LINE_SEARCHES = (None, "strong_wolfe")
SINGLE = "input"  # the name a lone tensor goes by in messages


class InvertObjective(Protocol):
    """``(values, generator) -> loss``: `values` is a tensor or a dict of named tensors, like `init`."""

    def __call__(self, values: Any, generator: torch.Generator) -> torch.Tensor: ...


@dataclass(frozen=True)
class InvertConfig:
    """Inversion settings, JSON-serialisable (``dataclasses.asdict``).

    Args:
        steps (`int`, defaults to 100): outer steps (for L-BFGS, each runs up to `lbfgs_max_iter` iterations).
        step_size (`float`, defaults to 0.1): the learning rate (Adam, L-BFGS) or step length (sign,
            normalised), before the schedule.
        step_rule (`str`, defaults to `"adam"`): ``"sign"``, ``"normalized"``, ``"adam"``, ``"signed-adam"``
            (Adam on the gradient's sign, Inverting Gradients) or ``"lbfgs"`` (``torch.optim.LBFGS``, DLG).
        schedule (`str`, defaults to `"constant"`): ``"constant"``, ``"linear"``, ``"cosine"`` (down to
            ``step_size * final_step_ratio``) or ``"multistep"`` (times `gamma` at each milestone).
        milestones (`tuple`, defaults to `()`): fractions of `steps` in (0, 1) or whole 0-based step indices;
            Inverting Gradients uses ``(3/8, 5/8, 7/8)`` with ``gamma=0.1``.
        minimize (`bool`, defaults to `True`): inversion minimises a matching loss; False maximises (CGI-DM).
        samples_per_step (`int`, defaults to 1): Monte-Carlo draws averaged per gradient.
        early_stop_target (`float`, *optional*): stop once the mean loss reaches this (≤ when minimising).
        early_stop_patience (`int`, *optional*): stop when the mean loss has not improved for this many steps.
        keep_best (`bool`, defaults to `False`): return the iterate with the best loss seen, not the last.
        seed (`int`, *optional*): seeds the generator handed to the objective.
        budget (`Budget`, *optional*): the constraint of every tensor not named in `budgets`; None (the
            default) leaves tensors unconstrained, with no box.
        budgets (`dict`, defaults to `{}`): per-tensor constraint by name (a `Budget` or None); each ball is
            centred on that tensor's start.
        line_search (`str`, *optional*): ``"strong_wolfe"`` for L-BFGS.
        lbfgs_max_iter (`int`, defaults to 20), lbfgs_history (`int`, defaults to 100): L-BFGS settings.
        nonfinite (`str`, defaults to `"raise"`): a NaN/inf gradient raises :class:`ObjectiveError` naming
            the tensor; ``"skip"`` drops such draws (not with L-BFGS, whose line search needs every value).
    """

    steps: int = 100
    step_size: float = 0.1
    step_rule: str = "adam"
    schedule: str = "constant"
    final_step_ratio: float = 0.01
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    minimize: bool = True
    samples_per_step: int = 1
    early_stop_patience: int | None = None
    early_stop_target: float | None = None
    keep_best: bool = False
    seed: int | None = None
    budget: Budget | None = None
    budgets: Mapping[str, Budget | None] = field(default_factory=dict)
    line_search: str | None = None
    lbfgs_max_iter: int = 20
    lbfgs_history: int = 100
    adam_betas: tuple[float, float] = (0.9, 0.999)
    nonfinite: str = "raise"

    def __post_init__(self) -> None:
        def fail(name: str, expected: str) -> None:
            raise InvalidArgumentError(f"`{name}` must be {expected}, but is {getattr(self, name)!r}.")

        if not (isinstance(self.steps, int) and self.steps >= 0):
            fail("steps", "an integer >= 0")
        if not (isinstance(self.step_size, int | float) and math.isfinite(self.step_size) and self.step_size > 0):
            fail("step_size", "a finite number > 0")
        if self.step_rule not in INVERT_STEP_RULES:
            fail("step_rule", f"one of {', '.join(INVERT_STEP_RULES)}")
        if self.schedule not in SCHEDULES:
            fail("schedule", f"one of {', '.join(SCHEDULES)}")
        if not 0 < self.final_step_ratio <= 1:
            fail("final_step_ratio", "in (0, 1]")
        object.__setattr__(self, "milestones", check_milestones(self.milestones, self.gamma))
        if self.schedule == "multistep" and not self.milestones:
            raise InvalidArgumentError("`milestones` must be given for `schedule` 'multistep'.")
        if not (isinstance(self.samples_per_step, int) and self.samples_per_step >= 1):
            fail("samples_per_step", "an integer >= 1")
        if self.early_stop_patience is not None and not (isinstance(self.early_stop_patience, int) and self.early_stop_patience >= 1):
            fail("early_stop_patience", "an integer >= 1 or None")
        if self.early_stop_target is not None and not math.isfinite(self.early_stop_target):
            fail("early_stop_target", "a finite number or None")
        object.__setattr__(self, "budget", _as_budget(self.budget, "budget"))
        if not isinstance(self.budgets, Mapping):
            fail("budgets", "a mapping from tensor names to Budget or None")
        object.__setattr__(self, "budgets", {str(k): _as_budget(v, f"budgets[{k!r}]") for k, v in self.budgets.items()})
        if self.line_search not in LINE_SEARCHES:
            fail("line_search", "None or 'strong_wolfe'")
        if self.line_search is not None and self.step_rule != "lbfgs":
            raise InvalidArgumentError("`line_search` applies to `step_rule` 'lbfgs' only.")
        if not (isinstance(self.lbfgs_max_iter, int) and self.lbfgs_max_iter >= 1):
            fail("lbfgs_max_iter", "an integer >= 1")
        if not (isinstance(self.lbfgs_history, int) and self.lbfgs_history >= 1):
            fail("lbfgs_history", "an integer >= 1")
        if not (len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas)):
            fail("adam_betas", "two numbers in [0, 1)")
        object.__setattr__(self, "adam_betas", tuple(float(b) for b in self.adam_betas))
        if self.nonfinite not in NONFINITE_POLICIES:
            fail("nonfinite", f"one of {', '.join(NONFINITE_POLICIES)}")
        if self.nonfinite == "skip" and self.step_rule == "lbfgs":
            raise InvalidArgumentError("`nonfinite` 'skip' cannot be used with `step_rule` 'lbfgs' (its line search needs every value).")

    def budget_for(self, name: str) -> Budget | None:
        return self.budgets[name] if name in self.budgets else self.budget


def _as_budget(value, label: str) -> Budget | None:
    if value is None or isinstance(value, Budget):
        return value
    if isinstance(value, Mapping):  # read back from JSON
        return Budget(**value)
    raise InvalidArgumentError(f"`{label}` must be a Budget, a dict of its fields, or None, but is {value!r}.")


@dataclass
class InvertResult:
    """What :meth:`Inverter.run` returns.

    Attributes:
        values: the optimised tensor, or dict of named tensors (the form `init` had), detached.
        losses: mean objective per step, at the iterate each step started from.
        final_loss: mean objective at the returned values, evaluated once more after the run (one draw
            for a stochastic objective).
        steps_run: steps actually taken.
        stopped_early: whether a target, a plateau or the callback ended the run.
        stop_reason: ``"target"``, ``"patience"``, ``"callback"`` or None.
        best_step: with `keep_best`, the 0-based step whose starting iterate was returned; None otherwise.
        seconds: wall time.
        skipped_draws: draws left out for a non-finite gradient (``nonfinite="skip"`` only).
    """

    values: Any
    losses: list[float] = field(default_factory=list)
    final_loss: float = math.nan
    steps_run: int = 0
    stopped_early: bool = False
    stop_reason: str | None = None
    best_step: int | None = None
    seconds: float = 0.0
    skipped_draws: int = 0


class Inverter:
    """Optimise one or several named tensors jointly (see :class:`InvertConfig` for every setting).

    Args:
        config (`InvertConfig`, *optional*): the settings; keyword arguments build one when omitted.
        progress (`bool` or callable, defaults to `False`): True shows a tqdm bar; a callable receives a
            :class:`StepInfo` after every step whose ``iterate`` is the current values (the form of `init`,
            detached copies), and ends the run by returning ``True``.
    """

    def __init__(
        self,
        config: InvertConfig | None = None,
        *,
        progress: bool | Callable[[StepInfo], bool | None] = False,
        **settings,
    ):
        if config is not None and settings:
            raise InvalidArgumentError("give either `config` or keyword settings, not both.")
        self.config = config if config is not None else InvertConfig(**settings)
        self.progress = progress

    @property
    def config_dict(self) -> dict:
        """The engine's settings as JSON, stamped with the class and toolkit version."""
        return {"_class_name": type(self).__name__, "_artshield_version": __version__, **dataclasses.asdict(self.config)}

    # ------------------------------------------------------------------ public
    def run(
        self,
        objective: InvertObjective,
        init: torch.Tensor | Mapping[str, torch.Tensor],
        masks: torch.Tensor | Mapping[str, torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> InvertResult:
        """Optimise `init` (a tensor, or a dict of named tensors optimised jointly) for `objective`.

        `init` is the start (noise for gradient leakage, the degraded latent for CGI-DM); it is never
        modified, and each tensor's budget ball is centred on it. `masks` (one tensor, or a dict by name;
        broadcastable to its tensor, values in [0, 1]) says which entries may move: where a mask is 0 the
        entry keeps its start value exactly. Randomness comes from `generator`, else from a CPU generator
        seeded with ``config.seed``.
        """
        cfg = self.config
        started = time.perf_counter()
        single = isinstance(init, torch.Tensor)
        named = self._check_init(init)
        masks = self._check_masks(masks, named, single)
        for name in cfg.budgets:
            if name not in named:
                raise InvalidArgumentError(f"`budgets` names {name!r}, which is not a tensor of `init` ({', '.join(named)}).")
        budgets = {name: cfg.budget_for(name) for name in named}
        for name, value in named.items():
            budget = budgets[name]
            if budget is not None and budget.bounds is not None:
                low, high = budget.bounds
                if value.min() < low - 1e-6 or value.max() > high + 1e-6:
                    raise InvalidArgumentError(
                        f"`init` tensor {name!r} must lie in its bounds [{low}, {high}], but spans "
                        f"[{float(value.min()):.4g}, {float(value.max()):.4g}]."
                    )
        if generator is None:
            generator = seeded_generator(cfg.seed)
        state = _State(objective, named, masks, budgets, single, generator)
        if cfg.step_rule == "lbfgs":
            result = self._run_lbfgs(state)
        else:
            result = self._run_direction(state)
        result.seconds = time.perf_counter() - started
        return result

    # ------------------------------------------------------------------ loops
    def _run_direction(self, state: _State) -> InvertResult:
        """Sign / normalised / Adam / signed-Adam steps: ``delta <- project(delta + alpha * rule(±grad))``."""
        cfg = self.config
        sign = -1.0 if cfg.minimize else 1.0
        rules = {
            name: StepRule(cfg.step_rule, _rule_norm(state.budgets[name]), betas=cfg.adam_betas) for name in state.start
        }
        guard = NonFiniteGuard(cfg.nonfinite, state.objective)
        delta = {name: torch.zeros_like(value) for name, value in state.start.items()}
        tracker = _Tracker(cfg, Progress(self.progress, "invert"))
        for step in range(cfg.steps):
            grads, loss = mean_gradients(
                lambda leaves, step=step: state.evaluate(leaves, check=step == 0),
                delta,
                cfg.samples_per_step,
                guard,
                step + 1,
            )
            if tracker.before_step(step, float(loss.mean()), delta):
                break
            alpha = step_size_at(step, cfg.steps, cfg.step_size, cfg.schedule, cfg.final_step_ratio, cfg.milestones, cfg.gamma)
            for name in delta:
                update = rules[name](sign * grads[name])
                if name in state.masks:
                    update = update * state.masks[name]  # a soft mask scales the step entry by entry
                delta[name] = state.confine(name, delta[name] + alpha * update)
            if tracker.after_step(step, alpha, delta, state):
                break
        return tracker.finish(delta, state, guard.skipped)

    def _run_lbfgs(self, state: _State) -> InvertResult:
        """``torch.optim.LBFGS`` on the offsets from the start; budgets, boxes and masks are re-imposed by
        projection after every outer step (projected L-BFGS is a heuristic, as in DLG's clamping)."""
        cfg = self.config
        sign = 1.0 if cfg.minimize else -1.0  # L-BFGS minimises
        guard = NonFiniteGuard("raise", state.objective)
        delta = {name: torch.zeros_like(value).requires_grad_(True) for name, value in state.start.items()}
        optimizer = torch.optim.LBFGS(
            list(delta.values()),
            lr=cfg.step_size,
            max_iter=cfg.lbfgs_max_iter,
            history_size=cfg.lbfgs_history,
            line_search_fn=cfg.line_search,
        )
        tracker = _Tracker(cfg, Progress(self.progress, "invert"))
        for step in range(cfg.steps):
            alpha = step_size_at(step, cfg.steps, cfg.step_size, cfg.schedule, cfg.final_step_ratio, cfg.milestones, cfg.gamma)
            for group in optimizer.param_groups:
                group["lr"] = alpha
            first: list[float] = []
            before = {name: value.detach().clone() for name, value in delta.items()}

            def closure(step=step, first=first):
                values = {name: value.detach() for name, value in delta.items()}
                grads, loss = mean_gradients(
                    lambda leaves: state.evaluate(leaves, check=step == 0 and not first),
                    values,
                    cfg.samples_per_step,
                    guard,
                    step + 1,
                )
                for name, value in delta.items():
                    grad = sign * grads[name]
                    value.grad = grad if state.masks.get(name) is None else grad * state.masks[name]
                if not first:
                    first.append(float(loss.mean()))
                return sign * loss.sum()

            optimizer.step(closure)
            if tracker.before_step(step, first[0], before):
                _assign(delta, before)
                break
            with torch.no_grad():
                for name, value in delta.items():
                    value.copy_(state.confine(name, value))
            if tracker.after_step(step, alpha, delta, state):
                break
        return tracker.finish({name: value.detach() for name, value in delta.items()}, state, guard.skipped)

    # ------------------------------------------------------------------ checks
    @staticmethod
    def _check_init(init) -> dict[str, torch.Tensor]:
        if isinstance(init, torch.Tensor):
            items = {SINGLE: init}
        elif isinstance(init, Mapping) and init:
            items = dict(init)
        else:
            raise InvalidArgumentError(f"`init` must be a torch.Tensor or a non-empty dict of them, but is {type(init).__name__}.")
        named = {}
        for name, value in items.items():
            if not isinstance(name, str):
                raise InvalidArgumentError(f"`init` names must be strings, but {name!r} is not.")
            if not isinstance(value, torch.Tensor):
                raise InvalidArgumentError(f"`init` tensor {name!r} must be a torch.Tensor, but is {type(value).__name__}.")
            if not value.is_floating_point():
                raise InvalidArgumentError(f"`init` tensor {name!r} must be floating-point, but has dtype {value.dtype}.")
            if not bool(torch.isfinite(value).all()):
                raise InvalidArgumentError(f"`init` tensor {name!r} contains NaN or infinite values.")
            value = value.detach()
            if value.dtype in (torch.float16, torch.bfloat16):
                value = value.float()  # optimiser state in fp32
            named[name] = value.clone()
        return named

    @staticmethod
    def _check_masks(masks, named: dict[str, torch.Tensor], single: bool) -> dict[str, torch.Tensor | None]:
        if masks is None:
            return {}
        if isinstance(masks, torch.Tensor):
            if not single:
                raise MaskError("`masks` must be a dict by tensor name when `init` is a dict.")
            masks = {SINGLE: masks}
        if not isinstance(masks, Mapping):
            raise MaskError(f"`masks` must be a torch.Tensor or a dict of them, but is {type(masks).__name__}.")
        checked = {}
        for name, mask in masks.items():
            if name not in named:
                raise MaskError(f"`masks` names {name!r}, which is not a tensor of `init` ({', '.join(named)}).")
            if mask is None:
                continue
            value = named[name]
            if not isinstance(mask, torch.Tensor):
                raise MaskError(f"mask of {name!r} must be a torch.Tensor, but is {type(mask).__name__}.")
            try:
                fits = torch.broadcast_shapes(mask.shape, value.shape) == value.shape
            except RuntimeError:
                fits = False
            if not fits:
                raise MaskError(f"mask of {name!r} of shape {tuple(mask.shape)} does not fit its tensor of shape {tuple(value.shape)}.")
            if mask.min() < 0 or mask.max() > 1:
                raise MaskError(f"mask of {name!r} values must lie in [0, 1].")
            if not bool((mask > 0).any()):
                raise MaskError(f"mask of {name!r} is empty: it leaves no entry free to move.")
            checked[name] = mask.to(device=value.device, dtype=value.dtype).expand(value.shape).contiguous()
        return checked


def _rule_norm(budget: Budget | None) -> str:
    """The norm a ``normalized`` step is measured in: the ball's, else L2."""
    return budget.norm if budget is not None and budget.eps is not None else "l2"


def _assign(target: dict[str, torch.Tensor], source: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, value in target.items():
            value.copy_(source[name])


class _State:
    """One run's fixed parts: the start, masks, budgets, and how to call the objective on an offset."""

    def __init__(self, objective, start, masks, budgets, single, generator):
        self.objective, self.start, self.masks, self.budgets = objective, start, masks, budgets
        self.single, self.generator = single, generator
        # Entries a mask pins (mask == 0) are held at the start exactly, whatever a step or soft mask did.
        self.movable = {name: (mask > 0).to(mask.dtype) for name, mask in masks.items()}

    def values(self, delta: Mapping[str, torch.Tensor]):
        """The iterate in the form `init` had: a tensor or a dict."""
        values = {name: self.start[name] + delta[name] for name in self.start}
        return values[SINGLE] if self.single else values

    def evaluate(self, leaves: Mapping[str, torch.Tensor], check: bool) -> torch.Tensor:
        loss = self.objective(self.values(leaves), self.generator)
        if check:
            check_objective_output(loss, None, self.objective)
        elif not isinstance(loss, torch.Tensor) or not bool(torch.isfinite(loss).all()):
            raise ObjectiveError(
                f"objective {objective_name(self.objective)} returned non-finite values mid-run "
                f"({loss.detach().tolist() if isinstance(loss, torch.Tensor) else loss!r})."
            )
        return loss

    def confine(self, name: str, delta: torch.Tensor) -> torch.Tensor:
        """Mask, ball around the start, box — the tensor's whole constraint."""
        mask = self.masks.get(name)
        if mask is not None:
            delta = delta * self.movable[name]
        budget = self.budgets[name]
        if budget is not None:
            start = self.start[name]
            delta = budget.project(_batched(start), _batched(delta)).reshape(start.shape)
        return delta


def _batched(tensor: torch.Tensor) -> torch.Tensor:
    """Budgets work per sample along dimension 0; a scalar or 1-D tensor is one sample."""
    return tensor.reshape(1, -1) if tensor.dim() < 2 else tensor


class _Tracker:
    """Losses, best iterate, early stops and progress for one run, shared by both loops."""

    def __init__(self, cfg: InvertConfig, progress: Progress):
        self.cfg, self.progress = cfg, progress
        self.ascent = 1.0 if not cfg.minimize else -1.0
        self.losses: list[float] = []
        self.plateau = Plateau(cfg.early_stop_patience)
        self.best_value, self.best_delta, self.best_step = -math.inf, None, None
        self.steps_run, self.stop_reason = 0, None
        self.progress.start(cfg.steps)

    def before_step(self, step: int, loss: float, delta: Mapping[str, torch.Tensor]) -> bool:
        """Record the loss at the iterate `delta` a step starts from; True when the target is reached."""
        self.losses.append(loss)
        if self.cfg.keep_best and self.ascent * loss > self.best_value:
            self.best_value, self.best_step = self.ascent * loss, step
            self.best_delta = {name: value.detach().clone() for name, value in delta.items()}
        target = self.cfg.early_stop_target
        if target is not None and self.ascent * loss >= self.ascent * target:
            self.stop_reason = "target"
            return True
        return False

    def after_step(self, step: int, alpha: float, delta, state: _State) -> bool:
        self.steps_run = step + 1
        iterate = None
        if self.progress.wants_iterate:
            with torch.no_grad():
                iterate = state.values({name: value.detach() for name, value in delta.items()})
        info = StepInfo(step + 1, self.cfg.steps, self.losses[-1], alpha, iterate=iterate)
        if self.progress.report(info):
            self.stop_reason = "callback"
            return True
        if self.plateau.update(self.ascent * self.losses[-1]):
            self.stop_reason = "patience"
            return True
        return False

    def finish(self, delta, state: _State, skipped: int) -> InvertResult:
        self.progress.close()
        best_step = None
        if self.cfg.keep_best and self.best_delta is not None:
            delta, best_step = self.best_delta, self.best_step
        delta = {name: value.detach() for name, value in delta.items()}
        leaves = {name: value.clone().requires_grad_(True) for name, value in delta.items()}
        with torch.enable_grad():  # objectives such as gradient matching differentiate inside
            final = state.objective(state.values(leaves), state.generator)
        final_loss = float(final.detach().float().mean()) if isinstance(final, torch.Tensor) else math.nan
        with torch.no_grad():
            values = state.values(delta)
        values = values.detach() if state.single else {name: value.detach() for name, value in values.items()}
        return InvertResult(
            values=values,
            losses=self.losses,
            final_loss=final_loss,
            steps_run=self.steps_run,
            stopped_early=self.stop_reason is not None,
            stop_reason=self.stop_reason,
            best_step=best_step,
            skipped_draws=skipped,
        )


# ---------------------------------------------------------------------------------------------- priors
def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation per sample, shape (B,): mean |horizontal| plus mean |vertical|
    neighbour difference over the last two dimensions (the TV prior of Inverting Gradients and breaching).
    Smoothness is what separates a natural image from the many noise patterns with the same gradient."""
    if images.dim() < 3:
        raise InvalidArgumentError(f"`images` must be (..., H, W) with a batch dimension, but has shape {tuple(images.shape)}.")
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().flatten(1).mean(dim=1)
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().flatten(1).mean(dim=1)
    return dx + dy


def gradient_distance(
    candidate: Sequence[torch.Tensor], target: Sequence[torch.Tensor], metric: str = "l2"
) -> torch.Tensor:
    """How far one list of parameter gradients is from another, a scalar.

    ``"l2"``: the summed squared difference (DLG, Zhu et al., 2019). ``"cosine"``: one minus the cosine
    similarity of the two gradients flattened and concatenated (Inverting Gradients, Geiping et al., 2020),
    which ignores the gradient's scale and so the batch size and learning rate behind it.
    """
    candidate, target = list(candidate), list(target)
    if len(candidate) != len(target) or not candidate:
        raise InvalidArgumentError(f"gradient lists must be non-empty and of equal length, but have {len(candidate)} and {len(target)}.")
    if metric == "l2":
        return sum(((a - b) ** 2).sum() for a, b in zip(candidate, target, strict=True))
    if metric == "cosine":
        dot = sum((a * b).sum() for a, b in zip(candidate, target, strict=True))
        norm_a = sum(a.pow(2).sum() for a in candidate).sqrt()
        norm_b = sum(b.pow(2).sum() for b in target).sqrt()
        return 1 - dot / (norm_a * norm_b).clamp_min(1e-12)
    raise InvalidArgumentError(f"`metric` must be 'l2' or 'cosine', but is {metric!r}.")
