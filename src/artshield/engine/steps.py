"""Step rules (how a gradient becomes an update direction) and step-size schedules.

Shared by :mod:`artshield.engine.perturb` and :mod:`artshield.engine.invert`, and by parameter-space
attacks that reuse them on flattened parameter vectors.
"""

from __future__ import annotations

import math

import torch

from ..errors import InvalidArgumentError

STEP_RULES = ("sign", "normalized", "adam")
SCHEDULES = ("constant", "linear", "cosine")


class StepRule:
    """Turns an ascent gradient into an update direction; stateful (Adam keeps moments) for one run.

    - ``"sign"``: the sign of the gradient (FGSM/PGD under L-inf; the default for L-inf budgets).
    - ``"normalized"``: the gradient divided by its per-sample norm in the budget's norm (L2 for L2
      budgets, the default there; L-inf for L-inf budgets), so a step moves exactly `step_size`.
    - ``"adam"``: Adam's bias-corrected first moment over the square root of the second (Kingma & Ba, 2015),
      betas (0.9, 0.999); useful for smooth objectives such as gradient matching.
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
            flat = grad.flatten(1)
            scale = flat.abs().amax(dim=1) if self.norm == "linf" else flat.norm(dim=1)
            return grad / scale.clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1)))
        # Adam
        beta1, beta2 = self.betas
        if self._m is None:
            self._m, self._v = torch.zeros_like(grad), torch.zeros_like(grad)
        self._t += 1
        self._m.mul_(beta1).add_(grad, alpha=1 - beta1)
        self._v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        m_hat = self._m / (1 - beta1**self._t)
        v_hat = self._v / (1 - beta2**self._t)
        return m_hat / (v_hat.sqrt() + self.eps)


def step_size_at(step: int, steps: int, step_size: float, schedule: str = "constant", final_ratio: float = 0.01) -> float:
    """Step size at `step` (0-based) of `steps`.

    ``"linear"`` decays from `step_size` to `step_size * final_ratio` (PhotoGuard decays α to α/100);
    ``"cosine"`` follows half a cosine between the same two values.
    """
    if schedule not in SCHEDULES:
        raise InvalidArgumentError(f"`schedule` must be one of {', '.join(SCHEDULES)}, but is {schedule!r}.")
    if schedule == "constant" or steps <= 1:
        return step_size
    progress = step / (steps - 1)
    final = step_size * final_ratio
    if schedule == "linear":
        return step_size + (final - step_size) * progress
    return final + (step_size - final) * 0.5 * (1 + math.cos(math.pi * progress))
