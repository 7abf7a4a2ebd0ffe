"""What a curious server observes of one client: its gradient (FedSGD) or its update (FedAvg).

An :class:`Observation` holds the shared tensors as *gradients* keyed like ``model.named_parameters()``,
whatever the protocol, so that label recovery and gradient inversion read one format:

- **FedSGD**: the gradient of the mean cross-entropy of the client's batch at the global weights.
- **FedAvg**: ``(w_before - w_after) / (lr * steps)``, the pseudo-gradient of Geng et al. (the average
  gradient of the local steps, exact when there is one step). The inversion objective does not treat it as a
  gradient: it unrolls the same ``steps`` SGD steps on the dummy batch and compares weight differences in the
  same units (see :mod:`.inversion`).

The local schedule of :func:`observe_fedavg` is fixed and known to the attacker, as in breaching's FedAvg user
and Geng et al.: step ``i`` trains on the images ``(i * batch_size + j) % B`` for ``j < batch_size`` (the
batch cycled in order, no shuffling). A client that shuffles (:func:`~artshield.fl_bridge.training.
train_locally` does) is attacked with the same schedule: with one step, or when every step sees the whole
batch, the order does not matter; otherwise which labels went into which step is a guess the attack makes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ...errors import InvalidArgumentError
from ..updates import ParameterLayout

KINDS = ("fedsgd", "fedavg")


@dataclass
class Observation:
    """The shared tensors of one client in one round, as gradients keyed like ``model.named_parameters()``.

    Attributes:
        gradients: FedSGD gradient, or FedAvg pseudo-gradient ``(w_before - w_after) / (lr * steps)``.
        kind: ``"fedsgd"`` or ``"fedavg"``.
        batch_size: how many images the client used (what the attack reconstructs).
        input_shape: (C, H, W) of one image.
        num_classes: the classifier's outputs.
        local_steps: SGD steps behind a FedAvg update (1 for FedSGD).
        local_lr: the local learning rate (FedAvg only).
        local_batch_size: images per local step (FedAvg only; ``batch_size`` when every step sees them all).
    """

    gradients: dict[str, torch.Tensor]
    kind: str
    batch_size: int
    input_shape: tuple[int, ...]
    num_classes: int
    local_steps: int = 1
    local_lr: float | None = None
    local_batch_size: int | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidArgumentError(f"`kind` must be one of {', '.join(KINDS)}, but is {self.kind!r}.")
        self.batch_size = _positive("batch_size", self.batch_size)
        self.num_classes = _positive("num_classes", self.num_classes)
        self.local_steps = _positive("local_steps", self.local_steps)
        self.input_shape = tuple(int(s) for s in self.input_shape)
        if not self.input_shape or any(s < 1 for s in self.input_shape):
            raise InvalidArgumentError(f"`input_shape` must be positive sizes such as (C, H, W), but is {self.input_shape!r}.")
        if not isinstance(self.gradients, Mapping) or not self.gradients:
            raise InvalidArgumentError("`gradients` must be a non-empty dict of tensors keyed like model.named_parameters().")
        for name, value in self.gradients.items():
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                raise InvalidArgumentError(f"gradient {name!r} must be a floating-point tensor.")
            if not bool(torch.isfinite(value).all()):
                raise InvalidArgumentError(f"gradient {name!r} contains NaN or infinite values.")
        self.gradients = {str(k): v.detach() for k, v in self.gradients.items()}
        if self.kind == "fedavg":
            if self.local_lr is None or not (isinstance(self.local_lr, int | float) and math.isfinite(self.local_lr)
                                             and self.local_lr > 0):
                raise InvalidArgumentError(f"a FedAvg observation needs `local_lr` > 0, but it is {self.local_lr!r}.")
            self.local_lr = float(self.local_lr)
            if self.local_batch_size is None:
                self.local_batch_size = self.batch_size
            self.local_batch_size = _positive("local_batch_size", self.local_batch_size)
            if self.local_batch_size > self.batch_size:
                raise InvalidArgumentError(
                    f"`local_batch_size` ({self.local_batch_size}) cannot exceed `batch_size` ({self.batch_size}).")
        elif self.local_steps != 1:
            raise InvalidArgumentError(f"a FedSGD observation has one step, not `local_steps`={self.local_steps}.")

    def check_model(self, model: nn.Module) -> list[str]:
        """The observed parameter names in the model's order; names a missing, extra or misshapen gradient."""
        params = dict(model.named_parameters())
        extra = sorted(set(self.gradients) - set(params))
        if extra:
            raise InvalidArgumentError(f"the observation has gradients the model does not have: {', '.join(extra)}.")
        missing = [name for name, p in params.items() if p.requires_grad and name not in self.gradients]
        if missing:
            raise InvalidArgumentError(f"the observation lacks gradients of the model's {', '.join(missing)}.")
        for name, grad in self.gradients.items():
            if tuple(grad.shape) != tuple(params[name].shape):
                raise InvalidArgumentError(
                    f"gradient {name!r} has shape {tuple(grad.shape)}, the model's parameter {tuple(params[name].shape)}.")
        return [name for name in params if name in self.gradients]

    def step_indices(self) -> list[torch.Tensor]:
        """Which images each local step trains on (FedSGD: one step on all of them)."""
        return step_indices(self.batch_size, self.local_steps, self.local_batch_size or self.batch_size)


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not float(value).is_integer() or value < 1:
        raise InvalidArgumentError(f"`{name}` must be a positive integer, but is {value!r}.")
    return int(value)


def step_indices(batch_size: int, steps: int, local_batch_size: int) -> list[torch.Tensor]:
    """Step ``i`` uses images ``(i * local_batch_size + j) % batch_size``, ``j < local_batch_size``."""
    return [(torch.arange(local_batch_size) + i * local_batch_size) % batch_size for i in range(steps)]


def trainable_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters that require grad, by name, detached."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def unrolled_difference(model: nn.Module, params: Mapping[str, torch.Tensor], images: torch.Tensor,
                        targets: torch.Tensor, *, lr: float, indices: list[torch.Tensor],
                        create_graph: bool, state: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """``(w_0 - w_K) / (lr * K)`` after K SGD steps on ``images[indices[i]]`` from `params`, differentiable in
    the images (and soft `targets`) when `create_graph` (the FedAvg matching objective).

    `targets` are int64 labels or (B, C) label probabilities (soft cross-entropy, for joint label optimisation);
    `state` adds fixed arrays (frozen parameters, buffers) to every forward.
    """
    names = list(params)
    current = dict(params)
    for index in indices:
        logits = functional_call(model, {**(state or {}), **current}, (images[index],))
        loss = cross_entropy(logits, targets[index])
        grads = torch.autograd.grad(loss, [current[n] for n in names], create_graph=create_graph)
        current = {n: current[n] - lr * g for n, g in zip(names, grads, strict=True)}
    scale = 1.0 / (lr * len(indices))
    return {n: (params[n] - current[n]) * scale for n in names}


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy with hard (int64) or soft ((B, C) probabilities) targets."""
    if targets.dtype == torch.int64:
        return F.cross_entropy(logits, targets)
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def _check_batch(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(images, torch.Tensor) or images.dim() < 2 or not images.is_floating_point():
        raise InvalidArgumentError("`images` must be a floating-point tensor (B, C, H, W).")
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.shape[0] != images.shape[0] or labels.is_floating_point():
        raise InvalidArgumentError(f"`labels` must be (B,) integers matching {images.shape[0]} images, "
                                   f"but have shape {tuple(labels.shape)}.")
    return images.detach(), labels.to(torch.int64)


def _num_classes(model: nn.Module, images: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(images[:1]).shape[-1])


def observe_fedsgd(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Observation:
    """The gradient of the mean cross-entropy of (`images`, `labels`) at the model's weights (FedSGD)."""
    images, labels = _check_batch(model, images, labels)
    params = {name: p.detach().requires_grad_(True) for name, p in trainable_parameters(model).items()}
    with torch.enable_grad():
        loss = F.cross_entropy(functional_call(model, params, (images,)), labels)
        grads = torch.autograd.grad(loss, list(params.values()))
    return Observation({n: g.detach() for n, g in zip(params, grads, strict=True)}, "fedsgd", len(labels),
                       tuple(images.shape[1:]), _num_classes(model, images))


def observe_fedavg(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, lr: float, steps: int,
                   batch_size: int) -> Observation:
    """Honest local SGD (`steps` steps of `batch_size` images at `lr`, the batch cycled in order, see the module
    docstring) from the model's weights; the weight difference as pseudo-gradients ``(w_0 - w_K) / (lr K)``."""
    images, labels = _check_batch(model, images, labels)
    steps, batch_size = _positive("steps", steps), _positive("batch_size", batch_size)
    if batch_size > len(labels):
        raise InvalidArgumentError(f"`batch_size` ({batch_size}) cannot exceed the number of images ({len(labels)}).")
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise InvalidArgumentError(f"`lr` must be a positive number, but is {lr!r}.")
    params = {name: p.requires_grad_(True) for name, p in trainable_parameters(model).items()}
    with torch.enable_grad():
        diff = unrolled_difference(model, params, images, labels, lr=float(lr),
                                   indices=step_indices(len(labels), steps, batch_size), create_graph=False)
    return Observation({n: d.detach() for n, d in diff.items()}, "fedavg", len(labels), tuple(images.shape[1:]),
                       _num_classes(model, images), local_steps=steps, local_lr=float(lr),
                       local_batch_size=batch_size)


def observation_from_delta(model: nn.Module, delta: Mapping[str, torch.Tensor] | torch.Tensor,
                           layout: ParameterLayout, *, lr: float, steps: int, batch_size: int,
                           input_shape: tuple[int, ...], num_classes: int,
                           num_images: int | None = None) -> Observation:
    """A FedAvg observation from a client's delta (``w_after - w_before``, a (d,) vector in `layout` order or a
    dict of arrays): pseudo-gradients ``-delta / (lr * steps)`` for the model's parameters (floating buffers in
    the layout are ignored).

    `batch_size` is the local mini-batch size; `num_images` the number of images the client holds (defaults
    to `batch_size`: every step on the whole batch, which is what
    :func:`~artshield.fl_bridge.training.train_locally` does when a client's data fits one batch).
    """
    if isinstance(delta, torch.Tensor):
        arrays = layout.unflatten(delta.detach().to(torch.float32))
    elif isinstance(delta, Mapping):
        arrays = dict(delta)
    else:
        raise InvalidArgumentError(f"`delta` must be a vector or a dict of arrays, but is {type(delta).__name__}.")
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise InvalidArgumentError(f"`lr` must be a positive number, but is {lr!r}.")
    steps = _positive("steps", steps)
    params = trainable_parameters(model)
    gradients = {}
    for name, param in params.items():
        if name not in arrays:
            raise InvalidArgumentError(f"the delta has no array for the model's parameter {name!r}.")
        value = torch.as_tensor(arrays[name])
        if tuple(value.shape) != tuple(param.shape):
            raise InvalidArgumentError(
                f"delta {name!r} has shape {tuple(value.shape)}, the model's parameter {tuple(param.shape)}.")
        gradients[name] = -value.to(param.dtype) / (float(lr) * steps)
    images = batch_size if num_images is None else _positive("num_images", num_images)
    return Observation(gradients, "fedavg", images, tuple(input_shape), num_classes, local_steps=steps,
                       local_lr=float(lr), local_batch_size=batch_size)


__all__ = ["KINDS", "Observation", "observation_from_delta", "observe_fedavg", "observe_fedsgd", "step_indices",
           "unrolled_difference"]
