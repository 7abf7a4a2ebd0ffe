"""Perturbation budgets: norm balls, projection onto them, random starts, and the valid-range box.

Budgets are in the units of the tensor being perturbed. For images that is **pixel units of a [0, 1]
image** (``eps=8/255`` means eight grey levels, whatever range a model works in); parameter-space attacks
use the same code on flattened parameter vectors with ``bounds=None``, and the inversion engine uses a
:class:`Budget` per optimised tensor (a latent under an L2 ball with no box, an image in [0, 1] with no ball,
a label logit tensor with neither). Every function works per sample: dimension 0 is the batch, all other
dimensions are one vector.

``eps=None`` (or ``math.inf``) is the unconstrained mode: no ball, only the valid range and the mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import InvalidArgumentError

NORMS = ("linf", "l2")


def _per_sample(values: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or (B,) tensor to (B, 1, 1, ...) against `like`."""
    values = torch.as_tensor(values, dtype=like.dtype, device=like.device)
    if values.dim() == 0:
        return values
    return values.view(-1, *([1] * (like.dim() - 1)))


def norm_of(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample norm, shape (B,)."""
    flat = delta.flatten(1)
    if norm == "linf":
        return flat.abs().amax(dim=1)
    if norm == "l2":
        return flat.norm(p=2, dim=1)
    raise InvalidArgumentError(f"`norm` must be one of {', '.join(NORMS)}, but is {norm!r}.")


def project(delta: torch.Tensor, eps: torch.Tensor | float, norm: str) -> torch.Tensor:
    """Project each sample of `delta` onto the `norm` ball of radius `eps` (a float or a (B,) tensor)."""
    if norm == "linf":
        radius = _per_sample(eps, delta)
        return torch.maximum(torch.minimum(delta, radius), -radius)
    if norm == "l2":
        norms = norm_of(delta, "l2")
        radius = torch.as_tensor(eps, dtype=delta.dtype, device=delta.device).expand_as(norms)
        # Scale down only the samples outside the ball; the tiny floor avoids dividing by zero.
        factor = torch.clamp(radius / norms.clamp_min(1e-12), max=1.0)
        return delta * _per_sample(factor, delta)
    raise InvalidArgumentError(f"`norm` must be one of {', '.join(NORMS)}, but is {norm!r}.")


def clip_to_bounds(origin: torch.Tensor, delta: torch.Tensor, bounds: tuple[float, float] | None) -> torch.Tensor:
    """Shrink `delta` so that ``origin + delta`` stays inside `bounds` (e.g. the [0, 1] image range).

    Clipping after projecting never leaves the ball: it only moves coordinates towards the origin, which
    cannot increase an L-inf or L2 norm.
    """
    if bounds is None:
        return delta
    low, high = bounds
    return (origin + delta).clamp(low, high) - origin


def random_start(like: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None) -> torch.Tensor:
    """A point drawn uniformly from the `norm` ball of radius `eps`, one per sample."""
    device = generator.device if generator is not None else like.device
    if norm == "linf":
        noise = torch.rand(like.shape, generator=generator, device=device, dtype=torch.float32) * 2 - 1
        return (noise * eps).to(device=like.device, dtype=like.dtype)
    if norm == "l2":
        direction = torch.randn(like.shape, generator=generator, device=device, dtype=torch.float32)
        direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (like.dim() - 1)))
        dims = like[0].numel()
        # Radius ~ eps * U^(1/d) makes the draw uniform in volume, not concentrated at the centre.
        radius = eps * torch.rand(like.shape[0], generator=generator, device=device) ** (1.0 / dims)
        return (direction * radius.view(-1, *([1] * (like.dim() - 1)))).to(device=like.device, dtype=like.dtype)
    raise InvalidArgumentError(f"`norm` must be one of {', '.join(NORMS)}, but is {norm!r}.")


@dataclass(frozen=True)
class Budget:
    """A perturbation budget: `eps` in `norm` (``"linf"`` or ``"l2"``), with an optional valid range.

    ``eps=None`` (``math.inf`` is turned into None) means no ball: gradient inversion starts from noise and
    may go anywhere inside `bounds`. ``bounds=None`` means no box: latents and logits are not pixels.
    """

    eps: float | None
    norm: str = "linf"
    bounds: tuple[float, float] | None = (0.0, 1.0)

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise InvalidArgumentError(f"`norm` must be one of {', '.join(NORMS)}, but is {self.norm!r}.")
        if isinstance(self.eps, int | float) and not isinstance(self.eps, bool) and self.eps == math.inf:
            object.__setattr__(self, "eps", None)
        if self.eps is not None and not (
            isinstance(self.eps, int | float) and not isinstance(self.eps, bool) and math.isfinite(self.eps) and self.eps >= 0
        ):
            raise InvalidArgumentError(f"`eps` must be a finite number >= 0 or None (no ball), but is {self.eps!r}.")
        if self.bounds is not None:
            if len(self.bounds) != 2 or not all(isinstance(b, int | float) for b in self.bounds):
                raise InvalidArgumentError(f"`bounds` must be (low, high) or None, but is {self.bounds!r}.")
            if not self.bounds[0] < self.bounds[1]:
                raise InvalidArgumentError(f"`bounds` must be (low, high) with low < high, but is {self.bounds!r}.")
            object.__setattr__(self, "bounds", (float(self.bounds[0]), float(self.bounds[1])))

    @property
    def constrains(self) -> bool:
        """Whether projection can change anything (a ball or a box)."""
        return self.eps is not None or self.bounds is not None

    def project(self, origin: torch.Tensor, delta: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Confine `delta` to the mask, the ball and the valid range, in that order."""
        if mask is not None:
            delta = delta * mask
        if self.eps is not None:
            delta = project(delta, self.eps, self.norm)
        return clip_to_bounds(origin, delta, self.bounds)

    def random_start(self, origin: torch.Tensor, generator: torch.Generator | None, mask: torch.Tensor | None = None):
        if self.eps is None:
            raise InvalidArgumentError("a random start needs a finite `eps` (a ball to draw from).")
        return self.project(origin, random_start(origin, self.eps, self.norm, generator), mask)

    def contains(self, delta: torch.Tensor, atol: float = 1e-6) -> torch.Tensor:
        """(B,) booleans: is each sample inside the ball (up to `atol`)? Always true without a ball."""
        if self.eps is None:
            return torch.ones(delta.shape[0], dtype=torch.bool, device=delta.device)
        return norm_of(delta, self.norm) <= self.eps + atol
