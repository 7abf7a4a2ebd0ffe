"""Label recovery from a client's update: which labels (with their counts) were in the batch it trained on.

Every method reads the gradient of the model's last linear layer (the last 2-D weight whose first dimension
is ``num_classes``, and its bias when it has one). With mean cross-entropy over a batch of B samples, logits
``z = W o + b`` and softmax ``p``, that gradient is

    dL/db_c  = (1/B) Σ_i (p_ic − y_ic)
    dL/dW_cj = (1/B) Σ_i (p_ic − y_ic) o_ij

so a class in the batch pulls its bias entry (and, for non-negative features o such as post-ReLU activations,
its whole weight row) down, and every other class pushes its entries up. The methods:

``idlg``       Zhao et al. 2020 (iDLG), batch 1 only: with non-negative features, only the true class's weight
               row is negative, so the label is the argmin of the row sums. Asked for a larger batch it raises.
``analytic``   The classes whose bias gradient is negative (most negative first), filled up with the smallest
               remaining entries when fewer than B are negative. Assumes unique labels: B > C raises; it
               needs a bias. Duplicates make it return B distinct classes, so every repeat is a miss.
``yin``        Yin et al. 2021 (GradInversion): the B classes whose weight-gradient row has the smallest
               minimum entry. Unique labels only (B > C raises); assumes non-negative features.
``llg``        Wainakh et al. 2022, the **LLG*** variant (the adversary knows the model but has no data):
               the impact ``m`` of one occurrence and the per-class offset ``s`` (a class's row sum when it is
               absent) are estimated by forwarding random dummy inputs through the current model. Stage 1 takes
               every class with a negative row sum once (the most negative B if there are more) and adds ``−m``
               to its row sum; stage 2 subtracts ``s`` and repeatedly takes the argmin, adding ``−m`` to *the
               class just taken* (breaching's ``wainakh-whitebox`` adds it to a stale index instead, which
               keeps re-selecting the same class). LLG+ would estimate ``m`` and ``s`` from auxiliary real
               data; there is none here.
``zero-shot``  Geng et al. 2021 ("Towards General Deep Leakage in FL", ``gdlg``): the count of class c is
               ``n̂_c = Σ_i p̂_ic − (B / Ō) Σ_j dL/dW_cj`` where p̂ (softmax) and Ō (the summed mean penultimate
               activation) come from random dummy inputs forwarded through the current model, the zero-shot
               part. The formula's one approximation is Σ_j o_ij ≈ Ō for every sample; applied to the bias,
               a weight on the constant feature 1, it holds exactly: ``n̂_c = Σ_i p̂_ic − B·dL/db_c``. So when
               the last layer has a bias (and ``use_bias`` is not False) the bias gradient is the signal and
               only Σ_i p̂_ic is estimated (measured: 1.000 label accuracy at batch 16 on the styles CNN,
               untrained and trained, against 0.89-0.98 for the weight rows); otherwise the weight rows as
               in the paper. The real-valued counts become integers summing to B by largest-remainder
               apportionment (negative estimates count as 0), which handles any number of duplicates, subject
               to what the bias gradient proves: Σ_i p_ic > 0, so dL/db_c < 0 means n_c > −B·dL/db_c.
               Zero-shot statistics come from noise, not data: on a well-trained model the real batch's
               softmax is unlike the dummies' and the counts degrade (see benchmarks/fl_labels.py).

FedAvg updates (``local_steps > 1``): ``gradients`` are then the pseudo-gradient ``(w_before − w_after) /
(lr · steps)``, the mean of the per-step gradients along the client's local trajectory. Signs survive averaging,
so ``idlg``/``analytic``/``yin`` keep working while the model moves little, but their evidence fades as local
training fits the batch (p → y shrinks every row). ``llg`` uses statistics of the starting model and degrades
as the trajectory drifts. ``zero-shot`` applies Geng et al.'s FedAvg treatment when ``local_lr`` is given: the
server replays the client's ``local_steps`` SGD steps on dummy inputs labelled with a first count estimate and
uses the statistics averaged along that simulated trajectory,
``n̂_c = (Σ_t Ō_t Σ_i p̂_ic(t) − B·T·Σ_j dL/dW_cj) / Σ_t Ō_t``, re-estimating once with the refined labels;
without ``local_lr`` it uses the starting model's statistics.

Determinism: dummy inputs come only from ``generator`` (a fixed seed when it is None); the same inputs give the
same labels.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import InvalidArgumentError

LABEL_METHODS: tuple[str, ...] = ("idlg", "analytic", "yin", "llg", "zero-shot")
"""The names :func:`recover_labels` accepts."""

DEFAULT_DUMMIES = 256
"""How many random dummy inputs ``llg`` and ``zero-shot`` forward to estimate their statistics."""

_DEFAULT_SEED = 0


@dataclass(frozen=True)
class LabelRecovery:
    """Recovered labels: ``labels`` (B,) int64 sorted, ``counts`` (C,) int64 summing to B, the ``method``."""

    labels: torch.Tensor
    counts: torch.Tensor
    method: str

    def config(self) -> dict[str, Any]:
        return {"method": self.method, "labels": self.labels.tolist(), "counts": self.counts.tolist()}


@dataclass(frozen=True)
class LastLayer:
    """Where the classifier's last linear layer lives in a model."""

    module: str  # the owning module's name ("" for the model itself)
    weight: str  # parameter name of the (C, d) weight
    bias: str | None  # parameter name of the (C,) bias, if any
    num_features: int


# ------------------------------------------------------------------------------------------- helpers
def last_linear_layer(model: nn.Module, num_classes: int) -> LastLayer:
    """The last 2-D parameter of `model` whose first dimension is `num_classes`, and its bias if it has one."""
    params = dict(model.named_parameters())
    found = None
    for name, value in params.items():
        if value.dim() == 2 and value.shape[0] == num_classes:
            found = name
    if found is None:
        raise InvalidArgumentError(
            f"the model has no linear layer with {num_classes} outputs (no 2-D weight of shape ({num_classes}, d)); "
            "check num_classes")
    module, _, _attr = found.rpartition(".")
    bias = f"{module}.bias" if module else "bias"
    if bias not in params or tuple(params[bias].shape) != (num_classes,):
        bias = None
    return LastLayer(module, found, bias, int(params[found].shape[1]))


def _check_gradients(gradients: Mapping[str, torch.Tensor], model: nn.Module, layer: LastLayer,
                     method: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not isinstance(gradients, Mapping):
        raise InvalidArgumentError(f"`gradients` must be a dict of parameter name -> tensor, got "
                                   f"{type(gradients).__name__}")
    params = dict(model.named_parameters())
    for name, value in gradients.items():
        if name not in params:
            raise InvalidArgumentError(f"`gradients` has {name!r}, which is not a parameter of the model")
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(params[name].shape):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise InvalidArgumentError(f"the gradient of {name!r} has shape {shape}, the model's parameter "
                                       f"{tuple(params[name].shape)}")
    if layer.weight not in gradients:
        raise InvalidArgumentError(f"label method {method!r} needs the gradient of the last layer's weight "
                                   f"{layer.weight!r}, which `gradients` lacks")
    weight = gradients[layer.weight].detach().to(torch.float64)
    bias = None
    if layer.bias is not None and layer.bias in gradients:
        bias = gradients[layer.bias].detach().to(torch.float64)
    for name, value in ((layer.weight, weight), (layer.bias, bias)):
        if value is not None and not bool(torch.isfinite(value).all()):
            raise InvalidArgumentError(f"the gradient of {name!r} has NaN or infinite entries")
    return weight.cpu(), None if bias is None else bias.cpu()


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgumentError(f"`{name}` must be an integer >= {minimum}, but is {value!r}.")
    return int(value)


def _model_device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def infer_input_shape(model: nn.Module) -> tuple[int, ...]:
    """The shape of one input: the model's ``input_shape`` attribute if it has one, else read off its first layer
    (``(in_features,)`` for a linear layer; for a convolution, the smallest of a few usual square sizes, then of
    every side length from 4 to 256, that the model accepts)."""
    shape = getattr(model, "input_shape", None)
    if isinstance(shape, Sequence) and shape and all(isinstance(s, int) and s > 0 for s in shape):
        return tuple(int(s) for s in shape)
    first = next((m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d)), None)
    if isinstance(first, nn.Linear):
        return (int(first.in_features),)
    if first is not None:
        dims = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}[type(first)]
        device = _model_device(model)
        for side in (32, 28, 64, 224, *range(4, 257)):
            candidate = (int(first.in_channels), *([side] * dims))
            try:
                with torch.no_grad():
                    model(torch.zeros((1, *candidate), device=device))
            except (RuntimeError, ValueError):
                continue
            return candidate
    raise InvalidArgumentError("cannot tell the model's input shape from its first layer; pass input_shape=(C, H, W)")


def _dummy_generator(generator: torch.Generator | None) -> torch.Generator:
    return torch.Generator().manual_seed(_DEFAULT_SEED) if generator is None else generator


def _dummy_inputs(count: int, input_shape: tuple[int, ...], generator: torch.Generator,
                  device: torch.device) -> torch.Tensor:
    """`count` uniform [0, 1] dummy inputs (the range of every task's images), drawn from `generator`."""
    dummies = torch.rand((count, *input_shape), generator=generator, device=generator.device)
    return dummies.to(device)


def _forward_with_features(model: nn.Module, layer: LastLayer, inputs: torch.Tensor,
                           num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's logits (n, C) and the input of its last linear layer (n, d) on `inputs`."""
    captured: list[torch.Tensor] = []
    owner = model.get_submodule(layer.module) if layer.module else model

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], torch.Tensor):
            captured.append(args[0])

    handle = owner.register_forward_pre_hook(hook)
    try:
        logits = model(inputs)
    finally:
        handle.remove()
    if not captured or not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (len(inputs), num_classes):
        raise InvalidArgumentError(
            f"cannot read the penultimate features: the model's output on dummy inputs of shape "
            f"{tuple(inputs.shape[1:])} is not ({len(inputs)}, {num_classes}) logits from {layer.weight!r}; "
            "pass input_shape")
    features = captured[-1].flatten(1)
    if features.shape[1] != layer.num_features:
        raise InvalidArgumentError(f"the input of {layer.weight!r} has {features.shape[1]} features, its weight "
                                   f"expects {layer.num_features}")
    return logits, features


def _dummy_statistics(model: nn.Module, layer: LastLayer, dummies: torch.Tensor,
                      num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities (n, C) and summed penultimate activations (n,) of the dummies, float64 on the CPU."""
    with torch.no_grad():
        logits, features = _forward_with_features(model, layer, dummies, num_classes)
    probabilities = torch.softmax(logits.detach().to(torch.float64), dim=1).cpu()
    return probabilities, features.detach().to(torch.float64).sum(dim=1).cpu()


def apportion(estimates: torch.Tensor, total: int, minimum: torch.Tensor | None = None) -> torch.Tensor:
    """Integer counts summing to `total` closest to the real-valued `estimates` (negative ones count as 0) and at
    least `minimum`: the floors (raised to `minimum`), then one at a time +1 to the class furthest below its
    estimate, or −1 from the class furthest above it (never below `minimum`); ties go to the lowest class. Without
    a minimum this is largest-remainder rounding."""
    values = estimates.to(torch.float64).clamp(min=0.0)
    if not bool(torch.isfinite(values).all()):
        raise InvalidArgumentError("the label counts estimated from the gradient are not finite")
    lower = torch.zeros(len(values), dtype=torch.int64) if minimum is None else minimum.to(torch.int64).clamp(min=0)
    if int(lower.sum()) > total:
        raise InvalidArgumentError(f"the gradient implies at least {int(lower.sum())} samples, more than the batch "
                                   f"size {total}")
    counts = torch.maximum(values.floor().to(torch.int64), lower)
    missing = total - int(counts.sum())
    while missing != 0:
        deficit = values - counts
        if missing > 0:
            c = int(torch.argmax(deficit))
            counts[c] += 1
            missing -= 1
        else:
            deficit[counts <= lower] = math.inf
            c = int(torch.argmin(deficit))
            counts[c] -= 1
            missing += 1
    return counts


def _present_at_least(bias: torch.Tensor, batch_size: int) -> torch.Tensor | None:
    """Lower bounds on the counts that the bias gradient proves: B·dL/db_c = Σ_i p_ic − n_c with Σ_i p_ic > 0, so
    a negative entry means n_c > −B·dL/db_c (entries within 1e-4 of a sample of zero prove nothing). None when
    the bounds add up to more than B (a gradient that is not a plain mean cross-entropy one)."""
    scaled = -batch_size * bias
    lower = torch.where(scaled > 1e-4, torch.floor(scaled + 1e-6) + 1, torch.zeros_like(scaled)).to(torch.int64)
    return lower if int(lower.sum()) <= batch_size else None


def _from_counts(counts: torch.Tensor, method: str) -> LabelRecovery:
    counts = counts.to(torch.int64)
    labels = torch.repeat_interleave(torch.arange(len(counts)), counts)
    return LabelRecovery(labels=labels, counts=counts, method=method)


def _from_labels(labels: Sequence[int] | torch.Tensor, num_classes: int, method: str) -> LabelRecovery:
    labels = torch.as_tensor(labels, dtype=torch.int64).flatten().sort().values
    return LabelRecovery(labels=labels, counts=torch.bincount(labels, minlength=num_classes), method=method)


def _unique_only(method: str, batch_size: int, num_classes: int) -> None:
    if batch_size > num_classes:
        raise InvalidArgumentError(
            f"label method {method!r} assumes unique labels, so it cannot recover a batch of {batch_size} from "
            f"{num_classes} classes; use 'llg' or 'zero-shot' for batches with repeated labels")


# ------------------------------------------------------------------------------------------- methods
def _idlg(weight: torch.Tensor, batch_size: int) -> list[int]:
    if batch_size != 1:
        raise InvalidArgumentError(
            f"label method 'idlg' recovers the label of a single sample: batch_size must be 1, but is {batch_size}; "
            "use 'analytic', 'yin', 'llg' or 'zero-shot' for batches")
    return [int(torch.argmin(weight.sum(dim=1)))]


def _analytic(bias: torch.Tensor | None, batch_size: int, num_classes: int) -> list[int]:
    _unique_only("analytic", batch_size, num_classes)
    if bias is None:
        raise InvalidArgumentError("label method 'analytic' reads the last layer's bias gradient, but the model's "
                                   "last layer has no bias (or `gradients` lacks it); use 'yin', 'llg' or 'zero-shot'")
    # Negative entries first (most negative first), then the smallest of the rest: one ascending sort.
    return torch.sort(bias, stable=True).indices[:batch_size].tolist()


def _yin(weight: torch.Tensor, batch_size: int, num_classes: int) -> list[int]:
    _unique_only("yin", batch_size, num_classes)
    return torch.sort(weight.min(dim=1).values, stable=True).indices[:batch_size].tolist()


def _llg(weight: torch.Tensor, probabilities: torch.Tensor, activation: torch.Tensor, batch_size: int) -> list[int]:
    num_classes = weight.shape[0]
    row_sums = weight.sum(dim=1)
    # Closed form of LLG*'s dummy-batch measurements for mean cross-entropy: a batch of dummies all labelled i has
    # row sums g_j = A_j − [j = i]·Ō with A_j = mean_k p_kj·O_k and Ō = mean_k O_k. The offset s_j is g_j of a
    # batch without class j (= A_j); the impact is (1 + 1/C)·mean_i g_i / B, as in the paper.
    a = (probabilities * activation[:, None]).mean(dim=0)
    impact = float((a.mean() - activation.mean()) / batch_size * (1.0 + 1.0 / num_classes))
    offset = a
    labels: list[int] = []
    negative = torch.nonzero(row_sums < 0).flatten()
    negative = negative[torch.sort(row_sums[negative], stable=True).indices][:batch_size]
    remaining = row_sums - offset
    for c in negative.tolist():
        labels.append(c)
        remaining[c] -= impact
    while len(labels) < batch_size:
        c = int(torch.argmin(remaining))
        labels.append(c)
        remaining[c] -= impact  # the class just taken (breaching updates a stale index here)
    return labels


def _zero_shot_counts(signal: torch.Tensor, probabilities: torch.Tensor, activation: torch.Tensor | None,
                      batch_size: int) -> torch.Tensor:
    """Geng et al.'s real-valued counts ``B·mean p̂ − (B / Ō)·signal`` from the starting model's dummy statistics.

    `signal` is the weight gradient's row sums with `activation` the dummies' summed penultimate activations, or
    the bias gradient with `activation` None (the bias is a weight on a constant feature 1, so Ō = 1 exactly)."""
    mean_activation = 1.0 if activation is None else float(activation.mean())
    if not mean_activation > 0:
        raise InvalidArgumentError("the model's penultimate activations on dummy inputs sum to "
                                   f"{mean_activation:g}; 'zero-shot' needs a positive sum (e.g. ReLU features)")
    return batch_size * probabilities.mean(dim=0) - (batch_size / mean_activation) * signal


def _zero_shot_fedavg(signal: torch.Tensor, use_bias: bool, model: nn.Module, layer: LastLayer,
                      dummies: torch.Tensor, counts: torch.Tensor, batch_size: int, num_classes: int, steps: int,
                      lr: float) -> torch.Tensor:
    """Counts from the statistics along a replay of the client's `steps` SGD steps on dummies labelled by
    `counts` (mean cross-entropy, full batch, plain SGD with `lr`):
    ``(Σ_t Ō_t·B·mean p̂(t) − B·T·signal) / Σ_t Ō_t`` (Ō_t = 1 for the bias)."""
    repeats = len(dummies) // batch_size  # >= 1: there are at least batch_size dummies
    labels = torch.repeat_interleave(torch.arange(num_classes), counts).repeat(repeats).to(dummies.device)
    inputs = dummies[:len(labels)]
    local = copy.deepcopy(model)
    parameters = [p for p in local.parameters() if p.requires_grad]
    weighted = torch.zeros(num_classes, dtype=torch.float64)
    total_activation = 0.0
    for _step in range(steps):
        logits, features = _forward_with_features(local, layer, inputs, num_classes)
        with torch.no_grad():
            activation = 1.0 if use_bias else float(features.detach().to(torch.float64).sum(dim=1).mean())
            probabilities = torch.softmax(logits.detach().to(torch.float64), dim=1).mean(dim=0).cpu()
        weighted += activation * batch_size * probabilities
        total_activation += activation
        loss = F.cross_entropy(logits, labels)
        grads = torch.autograd.grad(loss, parameters)
        with torch.no_grad():
            for p, g in zip(parameters, grads, strict=True):
                p.add_(g, alpha=-lr)
    if not total_activation > 0:
        raise InvalidArgumentError("the penultimate activations along the simulated local steps do not sum to a "
                                   "positive value; 'zero-shot' needs ReLU-like features")
    return (weighted - batch_size * steps * signal) / total_activation


# ------------------------------------------------------------------------------------------- entry point
def recover_labels(method: str, gradients: Mapping[str, torch.Tensor], model: nn.Module, *, batch_size: int,
                   num_classes: int, generator: torch.Generator | None = None, local_steps: int = 1,
                   local_lr: float | None = None, input_shape: Sequence[int] | None = None,
                   num_dummies: int = DEFAULT_DUMMIES, use_bias: bool | None = None) -> LabelRecovery:
    """The labels of the `batch_size` samples behind `gradients` (see the module docstring for each method).

    `gradients` maps parameter names of `model` (as in ``model.named_parameters()``) to the observed gradient,
    or to the pseudo-gradient ``(w_before − w_after) / (lr · steps)`` of a FedAvg update, in which case pass
    `local_steps` (and `local_lr` for ``zero-shot``'s FedAvg treatment). Only the last linear layer's entries
    are needed. `model` must hold the parameters the gradient was taken at (the round's global model).
    `generator` draws the dummy inputs of ``llg`` and ``zero-shot`` (uniform in [0, 1], shaped `input_shape`,
    read off the model when not given); None means a fixed seed. `use_bias` picks ``zero-shot``'s signal: the
    bias gradient (exact in Ō; the default when the last layer has a bias) or, with False, the weight
    gradient's row sums as in Geng et al.'s paper.

    Raises :class:`~artshield.errors.InvalidArgumentError` (one line naming the method or the input) for an
    unknown method, a gradient that does not fit the model, ``idlg`` with a batch larger than 1, ``analytic``
    and ``yin`` with more samples than classes, ``analytic`` without a bias.
    """
    if method not in LABEL_METHODS:
        raise InvalidArgumentError(f"label method must be one of {', '.join(LABEL_METHODS)}, but is {method!r}")
    batch_size = _positive_int("batch_size", batch_size)
    num_classes = _positive_int("num_classes", num_classes, minimum=2)
    local_steps = _positive_int("local_steps", local_steps)
    num_dummies = _positive_int("num_dummies", num_dummies)
    if local_lr is not None and (isinstance(local_lr, bool) or not isinstance(local_lr, int | float)
                                 or not math.isfinite(local_lr) or local_lr <= 0):
        raise InvalidArgumentError(f"`local_lr` must be a positive finite number, but is {local_lr!r}.")
    layer = last_linear_layer(model, num_classes)
    weight, bias = _check_gradients(gradients, model, layer, method)

    if method == "idlg":
        return _from_labels(_idlg(weight, batch_size), num_classes, method)
    if method == "analytic":
        return _from_labels(_analytic(bias, batch_size, num_classes), num_classes, method)
    if method == "yin":
        return _from_labels(_yin(weight, batch_size, num_classes), num_classes, method)

    shape = tuple(int(s) for s in input_shape) if input_shape is not None else infer_input_shape(model)
    if not shape or any(s < 1 for s in shape):
        raise InvalidArgumentError(f"`input_shape` must be positive sizes, but is {input_shape!r}")
    dummies = _dummy_inputs(max(num_dummies, batch_size), shape, _dummy_generator(generator), _model_device(model))
    probabilities, activation = _dummy_statistics(model, layer, dummies, num_classes)
    if method == "llg":
        return _from_labels(_llg(weight, probabilities, activation, batch_size), num_classes, method)

    if use_bias is None:
        use_bias = bias is not None
    elif use_bias and bias is None:
        raise InvalidArgumentError("label method 'zero-shot' was asked to read the bias gradient, but the model's "
                                   "last layer has no bias (or `gradients` lacks it); pass use_bias=False")
    signal = bias if use_bias else weight.sum(dim=1)
    lower = _present_at_least(bias, batch_size) if use_bias else None
    counts = apportion(_zero_shot_counts(signal, probabilities, None if use_bias else activation, batch_size),
                       batch_size, lower)
    if local_steps > 1 and local_lr is not None:
        for _refinement in range(2):
            estimate = _zero_shot_fedavg(signal, bool(use_bias), model, layer, dummies, counts, batch_size,
                                         num_classes, local_steps, float(local_lr))
            counts = apportion(estimate, batch_size, lower)
    return _from_counts(counts, method)


def label_metrics(recovered: torch.Tensor, true: torch.Tensor, num_classes: int) -> dict[str, float]:
    """How well `recovered` labels match the `true` ones, order ignored: ``label_accuracy`` = |multiset
    intersection| / B, ``count_accuracy`` = the fraction of classes whose count is exact, ``exact`` = 1.0 when
    every count is."""
    recovered = torch.as_tensor(recovered, dtype=torch.int64).flatten().cpu()
    true = torch.as_tensor(true, dtype=torch.int64).flatten().cpu()
    if len(true) == 0:
        raise InvalidArgumentError("cannot score labels against an empty batch")
    have = torch.bincount(recovered, minlength=num_classes)
    want = torch.bincount(true, minlength=num_classes)
    return {"label_accuracy": float(torch.minimum(have, want).sum()) / len(true),
            "count_accuracy": int((have == want).sum()) / num_classes,
            "exact": float(bool((have == want).all()))}


__all__ = ["DEFAULT_DUMMIES", "LABEL_METHODS", "LabelRecovery", "LastLayer", "apportion", "infer_input_shape",
           "label_metrics", "last_linear_layer", "recover_labels"]
