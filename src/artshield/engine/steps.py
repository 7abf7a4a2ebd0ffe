"""The parts of an optimisation loop that :mod:`.perturb` and :mod:`.invert` share.

- :class:`StepRule`: how a gradient becomes an update direction (sign / normalised / Adam / signed Adam).
- :func:`step_size_at`: the step-size schedule (constant, linear, cosine, multistep milestones).
- :func:`mean_gradients` and :class:`NonFiniteGuard`: Monte-Carlo gradient averaging that never hides a
  broken graph behind ``nan_to_num``.
- :class:`Plateau`: the "no improvement for N steps" early-stop rule.
- :class:`StepInfo` and :class:`Progress`: what a progress callback sees (including the current iterate)
  and how it can stop a run.
- :func:`seeded_generator`: the CPU generator every run draws from.

Parameter-space attacks reuse the same rules on flattened parameter vectors. Every rule works per
sample: dimension 0 is the batch and the other dimensions form one vector (1-D tensors are one vector).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InvalidArgumentError, ObjectiveError

logger = logging.getLogger(__name__)

STEP_RULES = ("sign", "normalized", "adam", "signed-adam")
SCHEDULES = ("constant", "linear", "cosine", "multistep")
NONFINITE_POLICIES = ("raise", "skip")


def _per_sample_view(tensor: torch.Tensor) -> torch.Tensor:
    """(B, ...) for tensors with a batch dimension, (1, N) for scalars and 1-D tensors."""
    return tensor.reshape(1, -1) if tensor.dim() < 2 else tensor


class StepRule:
    """Turns an ascent gradient into an update direction; stateful (Adam keeps moments) for one run.

    - ``"sign"``: the sign of the gradient (FGSM/PGD under L-inf; the default for L-inf budgets).
    - ``"normalized"``: the gradient divided by its per-sample norm in the budget's norm (L2 for L2
      budgets, the default there; L-inf for L-inf budgets), so a step moves exactly `step_size`.
    - ``"adam"``: Adam's bias-corrected first moment over the square root of the second (Kingma & Ba, 2015),
      betas (0.9, 0.999); useful for smooth objectives such as gradient matching. Identical to
      ``torch.optim.Adam`` with ``lr=step_size``.
    - ``"signed-adam"``: Adam fed with the *sign* of the gradient, as Geiping et al.'s "Inverting
      Gradients" does (breaching's ``signed`` Adam): robust to the badly scaled gradients of a cosine
      gradient-matching loss.
    """

    def __init__(self, rule: str, norm: str = "linf", betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if rule not in STEP_RULES:
            raise InvalidArgumentError(f"`step_rule` must be one of {', '.join(STEP_RULES)}, but is {rule!r}.")
        self.rule, self.norm, self.betas, self.eps = rule, norm, betas, eps
        self._m: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._t = 0

    def reset(self) -> None:
        self._m = self._v = None
        self._t = 0

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        if self.rule == "sign":
            return grad.sign()
        if self.rule == "normalized":
            flat = _per_sample_view(grad).flatten(1)
            scale = flat.abs().amax(dim=1) if self.norm == "linf" else flat.norm(dim=1)
            if grad.dim() < 2:
                return grad / scale.clamp_min(1e-12)
            return grad / scale.clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1)))
        if self.rule == "signed-adam":
            grad = grad.sign()
        beta1, beta2 = self.betas
        if self._m is None:
            self._m, self._v = torch.zeros_like(grad), torch.zeros_like(grad)
        self._t += 1
        self._m.mul_(beta1).add_(grad, alpha=1 - beta1)
        self._v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        m_hat = self._m / (1 - beta1**self._t)
        v_hat = self._v / (1 - beta2**self._t)
        return m_hat / (v_hat.sqrt() + self.eps)


def check_milestones(milestones: Sequence[float], gamma: float) -> tuple[float, ...]:
    """Validate multistep milestones and return them as a sorted tuple.

    A milestone in (0, 1) is a fraction of the run (Geiping et al. decay at 3/8, 5/8 and 7/8); a whole
    number >= 1 is a 0-based step index. `gamma` must be in (0, 1]."""
    if isinstance(milestones, str | bytes) or not isinstance(milestones, Sequence):
        raise InvalidArgumentError(f"`milestones` must be a sequence of numbers, but is {milestones!r}.")
    clean = []
    for value in milestones:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (0 < value < 1 or (value >= 1 and float(value).is_integer()))
        if not ok:
            raise InvalidArgumentError(
                "`milestones` must hold fractions in (0, 1) or whole step indices >= 1, "
                f"but holds {value!r}."
            )
        clean.append(int(value) if value >= 1 else float(value))
    if not (isinstance(gamma, int | float) and math.isfinite(gamma) and 0 < gamma <= 1):
        raise InvalidArgumentError(f"`gamma` must be a number in (0, 1], but is {gamma!r}.")
    return tuple(sorted(clean))


def milestone_steps(milestones: Sequence[float], steps: int) -> list[int]:
    """0-based step indices from which each milestone's decay applies (fractions floor like Geiping's
    ``int(max_iterations * 3 / 8)``)."""
    return sorted(int(m) if m >= 1 else int(m * steps) for m in milestones)


def step_size_at(
    step: int,
    steps: int,
    step_size: float,
    schedule: str = "constant",
    final_ratio: float = 0.01,
    milestones: Sequence[float] = (),
    gamma: float = 0.1,
) -> float:
    """Step size at `step` (0-based) of `steps`.

    ``"linear"`` decays from `step_size` to `step_size * final_ratio` (PhotoGuard decays α to α/100);
    ``"cosine"`` follows half a cosine between the same two values; ``"multistep"`` multiplies by `gamma`
    at every milestone reached (``torch.optim.lr_scheduler.MultiStepLR`` stepped once per step), see
    :func:`check_milestones` for how milestones are written.
    """
    if schedule not in SCHEDULES:
        raise InvalidArgumentError(f"`schedule` must be one of {', '.join(SCHEDULES)}, but is {schedule!r}.")
    if schedule == "multistep":
        passed = sum(1 for index in milestone_steps(milestones, steps) if step >= index)
        return step_size * gamma**passed
    if schedule == "constant" or steps <= 1:
        return step_size
    progress = step / (steps - 1)
    final = step_size * final_ratio
    if schedule == "linear":
        return step_size + (final - step_size) * progress
    return final + (step_size - final) * 0.5 * (1 + math.cos(math.pi * progress))


def seeded_generator(seed: int | None) -> torch.Generator:
    """A CPU generator seeded with `seed` (fresh entropy when None). CPU so a seed gives the same draws on
    every device."""
    generator = torch.Generator(device="cpu")
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    return generator


# ---------------------------------------------------------------------------------------------- gradients
class NonFiniteGuard:
    """What to do with a gradient that holds NaN or infinity.

    ``"raise"`` (the inversion engine's default): raise :class:`ObjectiveError` naming the tensor at once.
    A non-finite gradient almost always means a broken graph (``sqrt``/``log`` at zero, a division by
    zero), and zeroing it would let the run go on optimising nothing.

    ``"skip"`` (the perturbation engine's default, for fp16 models whose backward pass can overflow in a
    rare draw): drop the whole draw from the Monte-Carlo average, log a warning, count it; a step with no
    finite draw takes no step. `patience` consecutive steps without a finite draw (the signature of a
    broken graph rather than an unlucky draw) raise :class:`ObjectiveError` as well.
    """

    def __init__(self, policy: str = "raise", objective: Any = None, patience: int = 3):
        if policy not in NONFINITE_POLICIES:
            raise InvalidArgumentError(f"`nonfinite` must be one of {', '.join(NONFINITE_POLICIES)}, but is {policy!r}.")
        self.policy, self.objective, self.patience = policy, objective, patience
        self.skipped = 0
        self._empty_steps = 0

    def accept(self, grads: Mapping[str, torch.Tensor], step: int) -> bool:
        """True when every gradient is finite; otherwise raise or (``"skip"``) return False."""
        for name, grad in grads.items():
            finite = torch.isfinite(grad)
            if bool(finite.all()):
                continue
            bad = int((~finite).sum())
            message = (
                f"objective {objective_name(self.objective)} produced a non-finite gradient for {name!r} at step "
                f"{step} ({bad} of {grad.numel()} entries NaN or infinite): the graph is broken (sqrt/log at "
                "zero, a division by zero, an fp16 overflow); the engine does not zero it silently."
            )
            if self.policy == "raise":
                raise ObjectiveError(message)
            self.skipped += 1
            logger.warning("%s Draw skipped (%d so far).", message, self.skipped)
            return False
        return True

    def end_step(self, kept: int, step: int) -> None:
        """Count steps without any finite draw; raise after `patience` of them in a row."""
        if kept:
            self._empty_steps = 0
            return
        self._empty_steps += 1
        if self._empty_steps >= self.patience:
            raise ObjectiveError(
                f"objective {objective_name(self.objective)} produced non-finite gradients in every draw of "
                f"{self._empty_steps} steps in a row (up to step {step}): the graph is broken, not unlucky "
                "(with half-precision weights try dtype fp32)."
            )


def mean_gradients(
    evaluate: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    values: Mapping[str, torch.Tensor],
    samples: int,
    guard: NonFiniteGuard,
    step: int,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Average gradients of ``evaluate(leaves).sum()`` over `samples` draws, one backward pass per draw to
    bound memory, and the average loss (detached, float32, the shape `evaluate` returns).

    `evaluate` receives fresh leaves (detached copies of `values` requiring grad) and returns a checked
    loss tensor. Draws whose gradients `guard` rejects are left out of the gradient average (the loss
    average keeps them: the loss itself was finite). All-zero gradients come back when no draw was kept.
    """
    totals = {name: torch.zeros_like(value) for name, value in values.items()}
    loss_total: torch.Tensor | None = None
    kept = 0
    for _ in range(samples):
        leaves = {name: value.detach().requires_grad_(True) for name, value in values.items()}
        with torch.enable_grad():
            loss = evaluate(leaves)
            grads = torch.autograd.grad(loss.sum(), list(leaves.values()), allow_unused=True)
        grads = {
            name: torch.zeros_like(leaf) if grad is None else grad for (name, leaf), grad in zip(leaves.items(), grads, strict=True)
        }
        detached = loss.detach().float()
        loss_total = detached if loss_total is None else loss_total + detached
        if guard.accept(grads, step):
            kept += 1
            for name, grad in grads.items():
                totals[name] += grad
    guard.end_step(kept, step)
    return {name: total / max(kept, 1) for name, total in totals.items()}, loss_total / samples


# ---------------------------------------------------------------------------------------------- early stops
class Plateau:
    """Stop when a value to maximise has not improved (by more than `tolerance`) for `patience` calls."""

    def __init__(self, patience: int | None, tolerance: float = 1e-12):
        self.patience, self.tolerance = patience, tolerance
        self.best, self.stale = -math.inf, 0

    def update(self, value: float) -> bool:
        if self.patience is None:
            return False
        if value > self.best + self.tolerance:
            self.best, self.stale = value, 0
            return False
        self.stale += 1
        return self.stale >= self.patience


# ---------------------------------------------------------------------------------------------- progress
@dataclass(frozen=True)
class StepInfo:
    """What a progress callback receives after every step.

    `iterate` is the current iterate *after* the step, detached and not shared with the engine's state
    (the perturbed images for :class:`~artshield.engine.Perturber`; the tensor or dict of named tensors
    for :class:`~artshield.engine.Inverter`), so a caller can log PSNR to a ground truth and stop on it.
    """

    step: int  # 1-based
    steps: int
    loss: float  # mean objective at the iterate the step started from
    step_size: float
    chunk: int = 0  # which batch chunk (0-based) when the input is split by `batch_size`
    chunks: int = 1
    iterate: Any = None


class Progress:
    """A tqdm bar (``progress=True``), a callback (a callable receiving :class:`StepInfo`), or nothing.

    A callback stops the run by returning ``True`` exactly (``is True``); any other return value, None
    included, lets it go on (so ``seen.append`` is a fine callback; ``lambda info: bar.update()`` is not,
    since tqdm's ``update`` returns True whenever it redraws). Build a callback's iterate only when :attr:`wants_iterate` says one listens.
    """

    def __init__(self, progress: bool | Callable[[StepInfo], Any], label: str):
        self.progress, self.label = progress, label
        self.bar = None

    @property
    def wants_iterate(self) -> bool:
        return callable(self.progress)

    def start(self, steps: int, chunk: int = 0, chunks: int = 1) -> None:
        if self.progress is not True:
            return
        from tqdm.auto import tqdm

        label = self.label if chunks == 1 else f"{self.label} {chunk + 1}/{chunks}"
        self.bar = tqdm(total=steps, desc=label, leave=False, dynamic_ncols=True)

    def report(self, info: StepInfo) -> bool:
        """Show or hand over one step; True when the callback asked to stop."""
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{info.loss:.4g}", refresh=False)
            return False
        if callable(self.progress):
            return self.progress(info) is True
        return False

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def objective_name(objective: Any) -> str:
    """A readable name for an objective (bound method, function, or callable object) in error messages."""
    owner = getattr(objective, "__self__", None)
    if owner is not None:
        return f"{type(owner).__name__}.{getattr(objective, '__name__', 'objective')}"
    return getattr(objective, "__qualname__", None) or type(objective).__name__
