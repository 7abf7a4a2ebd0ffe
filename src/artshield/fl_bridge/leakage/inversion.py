"""Gradient inversion: reconstruct a client's images from what the server observed, on the shared engine.

Every attack here is an *objective* for :class:`artshield.engine.invert.Inverter` (the one optimisation loop
of the toolkit): it takes the dummy images (and, when labels are unknown, label logits), computes the gradient
the model would produce on them (FedSGD) or unrolls the client's local SGD steps on them (FedAvg), and scores
the distance to the observation plus image priors. The presets follow breaching's configurations
(``config/attack/{deepleakage,invertinggradients,seethroughgradients}.yaml``; see
``../shared/research/fl_bridge.md`` §2):

=================  ==================================================================================
``dlg``            Zhu et al. 2019: squared-L2 gradient matching, L-BFGS (lr 1, 1,200 outer steps of up to
                   20 iterations), no box, labels optimised jointly as logits (soft-label cross-entropy)
                   unless given.
``idlg``           Zhao et al. 2020: DLG with the label given (from :mod:`.labels`); labels are required.
``ig``             Geiping et al. 2020: ``1 - cos`` over all layers (``metric="cosine-layer"``: per layer)
                   + 0.2 TV, Adam on the *signed* gradient at lr 0.1, box [0, 1], step decay x0.1 at 3/8,
                   5/8, 7/8 of 24,000 steps; restarts keep the candidate with the lowest matching loss.
``gradinversion``  Yin et al. 2021: L2 matching x 1e-4, TV 1e-4, L2 1e-6, BatchNorm-statistics matching 0.1
                   (only where the model has BatchNorm: the fl_bridge task models have none, so the term is
                   skipped and the config says so), Adam lr 0.1 with cosine decay over 20,000 steps, Langevin
                   noise 0.01 x lr added to the gradient (as breaching does).
=================  ==================================================================================

Units. breaching optimises in the *normalised* input space of its datasets (CIFAR-10 std about 0.25), our
tasks feed [0, 1] pixels straight to the model. The presets keep breaching's numbers as they are in our
pixel units; in breaching's units a TV weight of 0.2 and a signed-Adam step of 0.1 correspond to about 0.8
and 0.025 in [0, 1] pixels. Both are overridable (``tv=``, ``step_size=``).

FedAvg (Geiping et al.'s FedAvg user, Geng et al.): for an observation of kind ``fedavg`` with K local steps
the objective unrolls K differentiable SGD steps of the dummy batch from the pre-round weights
(``torch.func.functional_call`` on the unflattened parameters, the step schedule of :mod:`.observe`) and
matches ``(w_0 - w_K) / (lr K)`` to the observed pseudo-gradient with the attack's metric.

Research schedules are long (minutes to hours on a CPU); ``steps=`` shortens them for tests and quick runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from ...engine.budget import Budget
from ...engine.invert import Inverter, gradient_distance, total_variation
from ...engine.steps import step_size_at
from ...errors import InvalidArgumentError
from .observe import Observation, cross_entropy, unrolled_difference

ATTACKS = ("dlg", "idlg", "ig", "gradinversion")
METRICS = ("l2", "cosine", "cosine-layer")
INITS = ("uniform", "randn")

_COMMON = dict(metric="l2", scale=1.0, tv=0.0, l2=0.0, bn=0.0, first_bn_multiplier=10.0, langevin=0.0,
               step_rule="adam", step_size=0.1, steps=100, schedule="constant", milestones=(), gamma=0.1,
               boxed=True, init="uniform", lbfgs_max_iter=20, line_search=None, label_init_scale=1.0)

PRESETS: dict[str, dict[str, Any]] = {
    "dlg": {**_COMMON, "metric": "l2", "step_rule": "lbfgs", "step_size": 1.0, "steps": 1200, "boxed": False,
            "init": "randn"},
    "idlg": {**_COMMON, "metric": "l2", "step_rule": "lbfgs", "step_size": 1.0, "steps": 1200, "boxed": False,
             "init": "randn"},
    "ig": {**_COMMON, "metric": "cosine", "tv": 0.2, "step_rule": "signed-adam", "step_size": 0.1, "steps": 24_000,
           "schedule": "multistep", "milestones": (3 / 8, 5 / 8, 7 / 8), "gamma": 0.1, "boxed": True},
    "gradinversion": {**_COMMON, "metric": "l2", "scale": 1e-4, "tv": 1e-4, "l2": 1e-6, "bn": 0.1, "langevin": 0.01,
                      "step_rule": "adam", "step_size": 0.1, "steps": 20_000, "schedule": "cosine", "boxed": True},
}
"""Each attack's settings; :func:`reconstruct` takes any of these keys as an override."""


@dataclass
class Reconstruction:
    """What :func:`reconstruct` returns.

    Attributes:
        images: (B, C, H, W) in [0, 1] (clamped: DLG runs unboxed).
        labels: (B,) int64: the given labels, or the argmax of the jointly optimised label logits.
        loss: the gradient-matching loss (no priors) of the returned images, the restarts' score.
        seconds: wall time of all restarts.
        config: the attack, its settings, the engine's, every restart's loss and notes (JSON-ready).
    """

    images: torch.Tensor
    labels: torch.Tensor
    loss: float
    seconds: float
    config: dict = field(default_factory=dict)


def _check_settings(attack: str, overrides: dict[str, Any]) -> dict[str, Any]:
    settings = dict(PRESETS[attack])
    for key, value in overrides.items():
        if key not in settings:
            raise InvalidArgumentError(f"attack {attack!r} has no setting {key!r} (settings: {', '.join(sorted(settings))}).")
        settings[key] = value
    if settings["metric"] not in METRICS:
        raise InvalidArgumentError(f"`metric` must be one of {', '.join(METRICS)}, but is {settings['metric']!r}.")
    if settings["init"] not in INITS:
        raise InvalidArgumentError(f"`init` must be one of {', '.join(INITS)}, but is {settings['init']!r}.")
    for key in ("scale", "tv", "l2", "bn", "first_bn_multiplier", "langevin", "label_init_scale"):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise InvalidArgumentError(f"`{key}` must be a finite number >= 0, but is {value!r}.")
    if not settings["scale"] > 0:
        raise InvalidArgumentError("`scale` must be > 0.")
    if not isinstance(settings["boxed"], bool):
        raise InvalidArgumentError(f"`boxed` must be true or false, but is {settings['boxed']!r}.")
    settings["milestones"] = tuple(settings["milestones"])
    return settings


def _distance(candidate: list[torch.Tensor], target: list[torch.Tensor], metric: str) -> torch.Tensor:
    if metric == "cosine-layer":  # breaching's paramwise-cosine-similarity
        sims = [torch.nn.functional.cosine_similarity(a.reshape(-1), b.reshape(-1), dim=0, eps=1e-8)
                for a, b in zip(candidate, target, strict=True)]
        return 1 - torch.stack(sims).mean()
    return gradient_distance(candidate, target, metric)


def _batchnorms(model: nn.Module) -> list[nn.Module]:
    kinds = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    return [m for m in model.modules() if isinstance(m, kinds) and m.running_mean is not None]


class MatchingObjective:
    """``(values, generator) -> loss`` for :class:`Inverter`: gradient (or unrolled-update) matching plus priors.

    `values` holds ``"image"`` (B, C, H, W) and, when labels are unknown, ``"label"`` logits (B, num_classes).
    :meth:`matching` is the matching term alone (the restarts' score).
    """

    def __init__(self, model: nn.Module, observation: Observation, labels: torch.Tensor | None,
                 settings: dict[str, Any], steps: int):
        self.model, self.observation, self.labels, self.settings, self.steps = model, observation, labels, settings, steps
        self.names = observation.check_model(model)
        device = next(model.parameters()).device
        self.params = {n: p.detach().requires_grad_(True) for n, p in model.named_parameters() if n in self.names}
        self.frozen = {n: p.detach() for n, p in model.named_parameters() if n not in self.names}
        self.buffers = {n: b.detach() for n, b in model.named_buffers()}
        self.target = [observation.gradients[n].to(device) for n in self.names]
        self.batchnorms = _batchnorms(model) if settings["bn"] > 0 else []
        self.calls = 0

    def _state(self) -> dict[str, torch.Tensor]:
        # Buffers are cloned for every forward: a BatchNorm in train mode must not update the caller's statistics.
        return {**self.frozen, **{n: b.clone() for n, b in self.buffers.items()}}

    def _targets(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.labels is not None:
            return self.labels
        return torch.softmax(values["label"], dim=1)

    def _shared(self, images: torch.Tensor, targets: torch.Tensor) -> list[torch.Tensor]:
        obs = self.observation
        if obs.kind == "fedsgd":
            logits = functional_call(self.model, {**self._state(), **self.params}, (images,))
            loss = cross_entropy(logits, targets)
            return list(torch.autograd.grad(loss, list(self.params.values()), create_graph=True))
        diff = unrolled_difference(self.model, self.params, images, targets, lr=obs.local_lr,
                                   indices=obs.step_indices(), create_graph=True, state=self._state())
        return [diff[n] for n in self.names]

    def matching(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        images = values["image"]
        return self.settings["scale"] * _distance(self._shared(images, self._targets(values)), self.target,
                                                  self.settings["metric"])

    def __call__(self, values: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        s = self.settings
        images = values["image"]
        records: list[torch.Tensor] = []
        hooks = [m.register_forward_hook(_bn_recorder(records)) for m in self.batchnorms]
        try:
            loss = s["scale"] * _distance(self._shared(images, self._targets(values)), self.target, s["metric"])
        finally:
            for hook in hooks:
                hook.remove()
        if s["tv"]:
            loss = loss + s["tv"] * total_variation(images).mean()
        if s["l2"]:
            loss = loss + s["l2"] * 0.5 * images.pow(2).mean()  # breaching's norm regulariser, p = 2
        if self.batchnorms and records:
            first = records[: len(self.batchnorms)]  # the forward at the pre-round weights
            terms = [(s["first_bn_multiplier"] if i == 0 else 1.0) * r for i, r in enumerate(first)]
            loss = loss + s["bn"] * torch.stack(terms).sum()
        if s["langevin"]:
            # Langevin noise, as breaching adds it: langevin * lr * N(0, 1) on the image gradient. A zero-valued
            # term whose gradient is exactly that noise keeps the loss honest and the engine's loop untouched.
            lr = step_size_at(min(self.calls, max(self.steps - 1, 0)), self.steps, s["step_size"], s["schedule"],
                              0.01, s["milestones"], s["gamma"])
            noise = torch.randn(images.shape, generator=generator, device=generator.device).to(images)
            term = (noise * images).sum() * (s["langevin"] * lr)
            loss = loss + (term - term.detach())
        self.calls += 1
        return loss


def _bn_recorder(records: list[torch.Tensor]) -> Callable:
    def hook(module, inputs, output):
        x = inputs[0]
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dim=dims)
        var = x.var(dim=dims, unbiased=False)
        records.append(torch.norm(module.running_mean - mean, 2) + torch.norm(module.running_var - var, 2))

    return hook


def _check_labels(labels: torch.Tensor | None, observation: Observation) -> torch.Tensor | None:
    if labels is None:
        return None
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.is_floating_point() or labels.shape[0] != observation.batch_size:
        raise InvalidArgumentError(f"`labels` must be {observation.batch_size} integers (the observed batch size), "
                                   f"but have shape {tuple(labels.shape)} and dtype {labels.dtype}.")
    labels = labels.to(torch.int64)
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= observation.num_classes):
        raise InvalidArgumentError(f"`labels` must lie in [0, {observation.num_classes}), but span "
                                   f"[{int(labels.min())}, {int(labels.max())}].")
    return labels


def reconstruct(attack: str, model: nn.Module, observation: Observation, *, labels: torch.Tensor | None = None,
                steps: int | None = None, restarts: int = 1, generator: torch.Generator | None = None,
                progress: bool | Callable | None = None, **overrides: Any) -> Reconstruction:
    """Reconstruct the observed batch with `attack` (one of :data:`ATTACKS`).

    Args:
        labels: the batch's labels (known, or recovered with :func:`.labels.recover_labels`), in any order;
            None optimises label logits jointly (every attack but ``idlg``, which needs them).
        steps: the engine's outer steps; None keeps the preset's research schedule (long).
        restarts: independent starts; the one with the lowest matching loss is returned.
        generator: draws the starts and any noise (a fresh seeded-by-entropy one when None).
        progress: handed to :class:`Inverter` (True: a bar; a callable receives every step's StepInfo).
        **overrides: any key of :data:`PRESETS` (``tv``, ``metric``, ``step_size``, ``boxed``, ...).
    """
    if attack not in ATTACKS:
        raise InvalidArgumentError(f"`attack` must be one of {', '.join(ATTACKS)}, but is {attack!r}.")
    if not isinstance(observation, Observation):
        raise InvalidArgumentError(f"`observation` must be an Observation, but is {type(observation).__name__}.")
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise InvalidArgumentError(f"`restarts` must be a positive integer, but is {restarts!r}.")
    if steps is not None:
        overrides = {**overrides, "steps": steps}
    settings = _check_settings(attack, overrides)
    if isinstance(settings["steps"], bool) or not isinstance(settings["steps"], int) or settings["steps"] < 1:
        raise InvalidArgumentError(f"`steps` must be a positive integer, but is {settings['steps']!r}.")
    labels = _check_labels(labels, observation)
    if attack == "idlg" and labels is None:
        raise InvalidArgumentError("attack 'idlg' needs `labels` (recover them with leakage.labels.recover_labels).")
    notes: list[str] = []
    if settings["bn"] > 0 and not _batchnorms(model):
        notes.append("BatchNorm-statistics matching skipped: the model has no BatchNorm with running statistics.")
    if generator is None:
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ()).item()))
    device = next(model.parameters()).device
    if labels is not None:
        labels = labels.to(device)
    shape = (observation.batch_size, *observation.input_shape)
    budgets: dict[str, Budget | None] = {"image": Budget(None, bounds=(0.0, 1.0)) if settings["boxed"] else None}
    if labels is None:
        budgets["label"] = None
    inverter = Inverter(
        steps=settings["steps"], step_size=float(settings["step_size"]), step_rule=settings["step_rule"],
        schedule=settings["schedule"], milestones=settings["milestones"], gamma=float(settings["gamma"]),
        keep_best=True, budgets=budgets, lbfgs_max_iter=int(settings["lbfgs_max_iter"]),
        line_search=settings["line_search"], progress=progress or False)
    started = time.perf_counter()
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    scores: list[float] = []
    for _ in range(restarts):
        init = {"image": _initial_images(shape, settings["init"], generator).to(device)}
        if labels is None:
            init["label"] = (settings["label_init_scale"]
                             * torch.randn((shape[0], observation.num_classes), generator=generator)).to(device)
        objective = MatchingObjective(model, observation, labels, settings, settings["steps"])
        result = inverter.run(objective, init, generator=generator)
        values = result.values
        with torch.enable_grad():
            leaves = {k: v.detach().clone().requires_grad_(k == "image") for k, v in values.items()}
            score = float(objective.matching(leaves).detach())
        scores.append(score if math.isfinite(score) else math.inf)
        if best is None or scores[-1] < best[0]:
            best = (scores[-1], values)
    assert best is not None
    score, values = best
    images = values["image"].clamp(0.0, 1.0)
    found = labels if labels is not None else values["label"].argmax(dim=1)
    config = {"attack": attack, "kind": observation.kind, "batch_size": observation.batch_size,
              "local_steps": observation.local_steps, "restarts": restarts, "labels": "given" if labels is not None
              else "optimised jointly", "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()},
              "engine": inverter.config_dict, "restart_losses": scores, "notes": notes}
    config["engine"]["budgets"] = {k: (None if v is None else {"eps": v.eps, "norm": v.norm, "bounds": list(v.bounds)
                                                                if v.bounds else None}) for k, v in budgets.items()}
    config["engine"].pop("budget", None)
    return Reconstruction(images.detach(), found.detach().to(torch.int64), score, time.perf_counter() - started, config)


def _initial_images(shape: tuple[int, ...], init: str, generator: torch.Generator) -> torch.Tensor:
    if init == "uniform":
        return torch.rand(shape, generator=generator)
    return torch.randn(shape, generator=generator)


__all__ = ["ATTACKS", "METRICS", "PRESETS", "MatchingObjective", "Reconstruction", "reconstruct"]
