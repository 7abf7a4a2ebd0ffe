"""Local training of a client, evaluation of a global model, and the server's root data, on parameter vectors.

Everything here takes the model's parameters as one flat vector (a :class:`~artshield.fl_bridge.updates.
ParameterLayout` says where each array lives) and returns deltas, the currency of every attack and defense.

Speed matters: an FL experiment trains thousands of tiny local models. :func:`train_locally` therefore does
not copy a vector into a model's parameters every step; it keeps, per model (and thread), a private copy of
the model whose parameters *and* gradients are views into two flat buffers. Loading the global model is one
``copy_``, a plain SGD step is one ``add_`` on the whole vector, and the local model is the buffer itself.
On one CPU core this trains about twice as many clients per second as ``torch.func.functional_call`` on the
vector (see the module's tests and the tasks helper's report for figures). The caller's model is never
modified; :func:`loss_at` and :meth:`RootData.loss` use ``functional_call`` because they must be
differentiable in the vector.

Randomness (the order of each epoch's samples, and whatever an attack draws) comes only from the
``torch.Generator`` passed in, so a run is reproducible from its seeds.
"""

from __future__ import annotations

import copy
import math
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..errors import InvalidArgumentError
from .tasks.base import Dataset
from .updates import ParameterLayout


@dataclass
class LocalTraining:
    """How a client trains: plain mini-batch SGD (optionally with momentum and L2 weight decay).

    Two options of Cheng et al. (CVPR 2022) for user-level DP, both off by default:

    - ``blur`` (λ > 0): Bounded Local Update Regularization, the penalty ``λ/2 · max(0, ‖Δ‖ − B)²`` on the
      local update ``Δ = w − w_global`` added to every step's loss, so ``‖Δ‖`` is pulled back inside the bound
      ``B = blur_bound`` (``None``: the round's DP clip norm the server sends, see
      :data:`artshield.fl_bridge.privacy.CLIP_KEY`) before the server clips it;
    - ``lus`` (p in [0, 1)): Local Update Sparsification, the fraction ``p`` of the trainable coordinates of
      ``Δ`` with the smallest magnitude set to zero after training (before the server clips it).

    They live here rather than in a separate dataclass because they change how a client trains and must
    travel wherever ``LocalTraining`` does (the client app, Ray actors, the experiment file's fields).
    """

    epochs: int = 1
    lr: float = 0.05
    batch_size: int = 32
    momentum: float = 0.0
    weight_decay: float = 0.0
    blur: float | None = None
    blur_bound: float | None = None
    lus: float | None = None

    def __post_init__(self) -> None:
        for name in ("blur", "blur_bound"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                      or not math.isfinite(value) or value <= 0):
                raise InvalidArgumentError(f"`{name}` must be a positive finite number or None, but is {value!r}.")
        if self.lus is not None and (isinstance(self.lus, bool) or not isinstance(self.lus, int | float)
                                     or not 0 <= self.lus < 1):
            raise InvalidArgumentError(f"`lus` must be a fraction in [0, 1) or None, but is {self.lus!r}.")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"`{name}` must be a positive integer, but is {value!r}.")
        for name, low, high in (("lr", 0.0, math.inf), ("momentum", 0.0, 1.0), ("weight_decay", 0.0, math.inf)):
            value = getattr(self, name)
            ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
            ok = ok and (value > 0 if name == "lr" else low <= value < high)
            if not ok:
                rule = "a positive finite number" if name == "lr" else (
                    "a number in [0, 1)" if name == "momentum" else "a non-negative finite number")
                raise InvalidArgumentError(f"`{name}` must be {rule}, but is {value!r}.")


# ------------------------------------------------------------------------------------------- workspace
class _Workspace:
    """A private copy of a model whose layout arrays are views into one flat vector, gradients into another."""

    def __init__(self, model: nn.Module, layout: ParameterLayout):
        self.layout = layout
        self.model = copy.deepcopy(model)
        state = self.model.state_dict(keep_vars=True)
        device = next((t.device for t in state.values()), torch.device("cpu"))
        self.vector = torch.zeros(layout.size, dtype=torch.float32, device=device)
        self.grad = torch.zeros_like(self.vector)
        self.trainable = torch.zeros(layout.size, dtype=torch.bool, device=device)
        for entry in layout:
            if entry.name not in state:
                raise InvalidArgumentError(f"the model has no array named {entry.name!r} (the layout's)")
            if tuple(state[entry.name].shape) != entry.shape:
                raise InvalidArgumentError(f"the model's {entry.name!r} has shape {tuple(state[entry.name].shape)}, "
                                           f"the layout's is {entry.shape}")
            owner_name, _, attr = entry.name.rpartition(".")
            owner = self.model.get_submodule(owner_name)
            value = self.vector[entry.span].view(entry.shape)
            if attr in owner._parameters:
                requires_grad = state[entry.name].requires_grad
                parameter = nn.Parameter(value, requires_grad=requires_grad)
                if requires_grad:
                    parameter.grad = self.grad[entry.span].view(entry.shape)
                    self.trainable[entry.span] = True
                owner._parameters[attr] = parameter
            else:
                owner._buffers[attr] = value
        self.train_all = bool(self.trainable.all())

    def load(self, vector: torch.Tensor) -> None:
        with torch.no_grad():
            self.vector.copy_(vector)


_WORKSPACES: weakref.WeakKeyDictionary[nn.Module, dict[int, _Workspace]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _workspace(model: nn.Module, layout: ParameterLayout) -> _Workspace:
    thread = threading.get_ident()
    with _LOCK:
        per_thread = _WORKSPACES.setdefault(model, {})
        space = per_thread.get(thread)
    if space is None or space.layout is not layout and space.layout.names != layout.names:
        space = _Workspace(model, layout)
        with _LOCK:
            per_thread[thread] = space
    return space


def _check_vector(layout: ParameterLayout, vector: torch.Tensor, what: str) -> None:
    if not isinstance(vector, torch.Tensor) or vector.dim() != 1 or vector.numel() != layout.size:
        shape = tuple(vector.shape) if isinstance(vector, torch.Tensor) else type(vector).__name__
        raise InvalidArgumentError(f"`{what}` must be a vector of shape ({layout.size},), got {shape}")


# ------------------------------------------------------------------------------------------- training
def train_locally(model: nn.Module, layout: ParameterLayout, global_vector: torch.Tensor, data: Dataset,
                  config: LocalTraining, generator: torch.Generator, attack: Any = None,
                  client_index: int = 0) -> torch.Tensor:
    """The delta (local model minus `global_vector`, shape (d,)) after `config.epochs` of SGD on `data`.

    Each epoch visits the samples in an order drawn from `generator`, in batches of `config.batch_size` (the
    last one may be smaller). With an `attack` (a :class:`~artshield.fl_bridge.attacks.base.TrainingAttack`),
    every batch goes through ``attack.poison_batch(images, labels, generator, client_index)`` before the step
    and the local model through ``attack.constrain(vector, global_vector)`` after it; ``attack.finalize`` is
    the caller's (the client handler's) business. `model` is only read: training happens on a private copy.
    ``config.blur`` adds BLUR's penalty to every step, ``config.lus`` sparsifies the returned delta
    (see :class:`LocalTraining`).
    """
    _check_vector(layout, global_vector, "global_vector")
    if len(data) == 0:
        raise InvalidArgumentError("a client's dataset is empty; every client needs at least one sample")
    space = _workspace(model, layout)
    space.load(global_vector)
    device = space.vector.device
    start_vector = global_vector.detach().to(device=device, dtype=torch.float32)
    poison = getattr(attack, "poison_batch", None) if attack is not None else None
    constrain = getattr(attack, "constrain", None) if attack is not None else None
    lr, momentum, decay = float(config.lr), float(config.momentum), float(config.weight_decay)
    buffer: torch.Tensor | None = None
    blur = float(config.blur) if config.blur else 0.0
    if blur and config.blur_bound is None:
        raise InvalidArgumentError("`blur` needs `blur_bound` (or a DP round, whose clip norm is the default bound)")
    n = len(data)
    batch = min(int(config.batch_size), n)
    for _epoch in range(int(config.epochs)):
        order = torch.randperm(n, generator=generator, device=generator.device).to(data.labels.device)
        for begin in range(0, n, batch):
            index = order[begin:begin + batch]
            images, labels = data.images[index], data.labels[index]
            if poison is not None:
                images, labels = poison(images, labels, generator, client_index)
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            space.grad.zero_()
            loss = F.cross_entropy(space.model(images), labels)
            loss.backward()
            with torch.no_grad():
                if blur:
                    _add_blur_gradient(space, start_vector, blur, float(config.blur_bound))
                step = space.grad
                if decay:
                    step = step + decay * space.vector * space.trainable
                if momentum:
                    buffer = step.clone() if buffer is None else buffer.mul_(momentum).add_(step)
                    step = buffer
                space.vector.add_(step, alpha=-lr)
                if constrain is not None:
                    constrained = constrain(space.vector.clone(), start_vector)
                    _check_vector(layout, constrained, "attack.constrain(...)")
                    space.vector.copy_(constrained)
    with torch.no_grad():
        delta = space.vector - start_vector
        if config.lus:
            delta = sparsify_update(delta, float(config.lus), space.trainable)
        return delta


def _add_blur_gradient(space: _Workspace, start: torch.Tensor, strength: float, bound: float) -> None:
    """Adds the gradient of ``strength/2 · max(0, ‖Δ‖ − bound)²`` (Δ = local − start) to the workspace's."""
    diff = (space.vector - start) * space.trainable
    norm = float(torch.linalg.vector_norm(diff))
    if norm > bound:
        space.grad.add_(diff, alpha=strength * (norm - bound) / norm)


def sparsify_update(delta: torch.Tensor, fraction: float, trainable: torch.Tensor | None = None) -> torch.Tensor:
    """LUS: `delta` with ``floor(fraction · d)`` of its (trainable) coordinates of smallest magnitude set to 0."""
    mask = torch.ones_like(delta, dtype=torch.bool) if trainable is None else trainable.to(torch.bool)
    count = int(math.floor(fraction * int(mask.sum())))
    if count <= 0:
        return delta
    magnitude = delta.abs().masked_fill(~mask, math.inf)
    drop = torch.topk(magnitude, count, largest=False).indices
    out = delta.clone()
    out[drop] = 0.0
    return out


# ------------------------------------------------------------------------------------------- evaluation
def _logits(space: _Workspace, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    device = space.vector.device
    outputs = [space.model(images[i:i + batch_size].to(device)) for i in range(0, len(images), batch_size)]
    return torch.cat(outputs) if outputs else torch.zeros(0, 0)


def evaluate_model(model: nn.Module, layout: ParameterLayout, vector: torch.Tensor, data: Dataset,
                   batch_size: int = 512) -> dict[str, float]:
    """Test ``accuracy`` (fraction) and mean cross-entropy ``loss`` of the model with parameters `vector`."""
    _check_vector(layout, vector, "vector")
    if len(data) == 0:
        raise InvalidArgumentError("cannot evaluate on an empty dataset")
    space = _workspace(model, layout)
    with torch.no_grad():
        space.load(vector)
        logits = _logits(space, data.images, int(batch_size))
        labels = data.labels.to(logits.device)
        loss = F.cross_entropy(logits, labels).item()
        accuracy = (logits.argmax(dim=1) == labels).float().mean().item()
    return {"accuracy": float(accuracy), "loss": float(loss)}


def attack_success_rate(model: nn.Module, layout: ParameterLayout, vector: torch.Tensor, data: Dataset,
                        attack: Any, batch_size: int = 512) -> float | None:
    """The fraction of triggered test samples the model classifies as the attacker's target; None when the
    attack is not targeted.

    ``attack.backdoor(images, labels)`` gives the triggered inputs and target labels. Samples whose true label
    already is the target are left out (they would count as successes for free). When the attack returns a
    different number of samples than it was given (an edge-case attack's own test set), all of them count.
    """
    if attack is None or not getattr(attack, "targeted", False):
        return None
    _check_vector(layout, vector, "vector")
    result = attack.backdoor(data.images, data.labels)
    if result is None:
        return None
    images, targets = result
    targets = torch.as_tensor(targets, dtype=torch.int64)
    keep = targets != data.labels if len(targets) == len(data) else torch.ones(len(targets), dtype=torch.bool)
    if not bool(keep.any()):
        return None
    space = _workspace(model, layout)
    with torch.no_grad():
        space.load(vector)
        predictions = _logits(space, images[keep], int(batch_size)).argmax(dim=1).cpu()
    return float((predictions == targets[keep]).float().mean())


def loss_at(model: nn.Module, layout: ParameterLayout, data: Dataset) -> Callable[[torch.Tensor], torch.Tensor]:
    """``f(vector)``: the mean cross-entropy on `data` of the model with parameters `vector`, differentiable in
    `vector` (what :attr:`AttackContext.local_loss <artshield.fl_bridge.attacks.base.AttackContext>` expects)."""
    if len(data) == 0:
        raise InvalidArgumentError("cannot compute a loss on an empty dataset")

    def loss(vector: torch.Tensor) -> torch.Tensor:
        _check_vector(layout, vector, "vector")
        images, labels = data.images.to(vector.device), data.labels.to(vector.device)
        return F.cross_entropy(functional_call(model, layout.unflatten(vector), (images,)), labels)

    return loss


class RootData:
    """The server's small clean dataset (FLTrust, SkyMask): implements
    :class:`~artshield.fl_bridge.defenses.base.RootAccess`."""

    def __init__(self, model: nn.Module, layout: ParameterLayout, data: Dataset, config: LocalTraining,
                 generator: torch.Generator) -> None:
        if len(data) == 0:
            raise InvalidArgumentError("the server's root dataset is empty")
        self.model = model
        self.layout = layout
        self.data = data
        self.config = config
        self.generator = generator
        self._loss = loss_at(model, layout, data)

    def __len__(self) -> int:
        return len(self.data)

    def update(self, global_vector: torch.Tensor) -> torch.Tensor:
        """The delta the server gets by training the global model on the root data, as a client would."""
        return train_locally(self.model, self.layout, global_vector, self.data, self.config, self.generator)

    def loss(self, vector: torch.Tensor) -> torch.Tensor:
        """Differentiable mean cross-entropy on the root data of the model with parameters `vector`."""
        return self._loss(vector)


__all__ = ["LocalTraining", "RootData", "attack_success_rate", "evaluate_model", "loss_at", "sparsify_update",
           "train_locally"]
