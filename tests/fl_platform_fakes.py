"""Small stand-ins for fl_bridge's tasks / partition / training / registries, for the platform's tests.

The platform (messages, grid, strategy, clients, federation) is tested on its own: these fakes follow the
agreed API (fl.md) with a tiny 3-class Gaussian-blob task and a linear model, a plain mean rule and two
recording attacks. ``install(monkeypatch)`` puts this module in place of the real ones for one test.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch.func import functional_call

from artshield.fl_bridge.attacks.base import ModelPoisoning, TrainingAttack
from artshield.fl_bridge.defenses.base import Aggregate, AggregationRule

FEATURES, CLASSES = 6, 3


# ------------------------------------------------------------------------------------------------------ tasks
@dataclass
class Dataset:
    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices) -> Dataset:
        indices = torch.as_tensor(indices, dtype=torch.long)
        return Dataset(self.images[indices], self.labels[indices])


class BlobTask:
    name = "blobs"
    num_classes = CLASSES

    def __init__(self, n_train: int = 300, n_test: int = 150):
        g = torch.Generator().manual_seed(1234)
        centres = torch.randn(CLASSES, FEATURES, generator=g) * 2.0

        def draw(n):
            labels = torch.arange(n) % CLASSES
            return Dataset(centres[labels] + torch.randn(n, FEATURES, generator=g), labels)

        self._train, self._test = draw(n_train), draw(n_test)

    def build_model(self, seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return torch.nn.Linear(FEATURES, CLASSES)

    def train_set(self) -> Dataset:
        return self._train

    def test_set(self) -> Dataset:
        return self._test


TASKS = ("blobs",)


def load_task(name: str, root: str | None = None, **params) -> BlobTask:
    assert name == "blobs", name
    return BlobTask(**params)


# -------------------------------------------------------------------------------------------------- partition
def partition(labels, num_clients, scheme="iid", *, alpha=0.5, shards_per_client=2, seed=0):
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    return [order[i::num_clients] for i in range(num_clients)]


# --------------------------------------------------------------------------------------------------- training
@dataclass
class LocalTraining:
    epochs: int = 1
    lr: float = 0.5
    batch_size: int = 32
    momentum: float = 0.0
    weight_decay: float = 0.0


def _forward(model, layout, vector, images):
    return functional_call(model, layout.unflatten(vector), (images,))


def train_locally(model, layout, global_vector, data, config, generator, attack=None, client_index=0):
    vector = global_vector.clone()
    for _ in range(config.epochs):
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(data), config.batch_size):
            batch = order[start:start + config.batch_size]
            images, labels = data.images[batch], data.labels[batch]
            if attack is not None:
                images, labels = attack.poison_batch(images, labels, generator, client_index)
            vector = vector.detach().requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(_forward(model, layout, vector, images), labels)
            (grad,) = torch.autograd.grad(loss, vector)
            vector = (vector - config.lr * grad).detach()
            if attack is not None:
                vector = attack.constrain(vector, global_vector)
    return vector - global_vector


@torch.no_grad()
def evaluate_model(model, layout, vector, data, batch_size=512):
    logits = _forward(model, layout, vector, data.images)
    return {"accuracy": float((logits.argmax(1) == data.labels).float().mean()),
            "loss": float(torch.nn.functional.cross_entropy(logits, data.labels))}


@torch.no_grad()
def attack_success_rate(model, layout, vector, data, attack):
    pair = attack.backdoor(data.images, data.labels)
    if pair is None:
        return None
    images, targets = pair
    return float((_forward(model, layout, vector, images).argmax(1) == targets).float().mean())


def loss_at(model, layout, data):
    return lambda vector: torch.nn.functional.cross_entropy(_forward(model, layout, vector, data.images), data.labels)


class RootData:
    def __init__(self, model, layout, data, config, generator):
        self.model, self.layout, self.data, self.config, self.generator = model, layout, data, config, generator

    def update(self, global_vector):
        return train_locally(self.model, self.layout, global_vector, self.data, self.config, self.generator)

    def loss(self, vector):
        return loss_at(self.model, self.layout, self.data)(vector)


# ------------------------------------------------------------------------------------------------- registries
class MeanRule(AggregationRule):
    """Plain unweighted mean of the deltas; records what it saw."""

    name = "mean"

    def __init__(self):
        self.seen = []

    def aggregate(self, updates):
        self.seen.append(updates)
        return Aggregate(updates.deltas.mean(0))


class DropLargestRule(AggregationRule):
    """Selects: rejects the `k` deltas with the largest norm, averages the rest."""

    name = "droplargest"
    selects = True

    def __init__(self, k: int = 1):
        self.k = k

    def aggregate(self, updates):
        norms = updates.deltas.norm(dim=1)
        accepted = torch.ones(updates.num_clients, dtype=torch.bool)
        accepted[norms.argsort(descending=True)[:self.k]] = False
        return Aggregate(updates.deltas[accepted].mean(0), accepted)


RULES = {"fedavg": MeanRule, "mean": MeanRule, "droplargest": DropLargestRule}


def make_defense(name, *, root=None, num_malicious=0, **params):
    return RULES[name](**params)


class Recorder(ModelPoisoning):
    """Omniscient; sends the negated mean of the benign deltas (scaled), and records every context."""

    name = "recorder"
    needs_benign = True

    def __init__(self, scale: float = 5.0):
        self.scale = scale
        self.contexts = []

    def craft(self, context):
        self.contexts.append(context)
        return (-self.scale * context.reference.mean(0)).expand_as(context.own).clone()


class NaNAttack(ModelPoisoning):
    name = "nan"

    def craft(self, context):
        return torch.full_like(context.own, float("nan"))


class Backdoor(TrainingAttack):
    """Label flip to class 0 on every batch; targeted (ASR = share of test inputs predicted 0)."""

    name = "backdoor"
    targeted = True

    def __init__(self):
        self.finalized = 0

    def poison_batch(self, images, labels, generator, client_index=0):
        return images, torch.zeros_like(labels)

    def finalize(self, delta, context=None):
        self.finalized += 1
        assert context is not None and context.own.shape == (1, delta.numel())
        return delta * 2.0

    def backdoor(self, images, labels):
        keep = labels != 0
        return images[keep], torch.zeros_like(labels[keep])


ATTACKS = {"recorder": Recorder, "nan": NaNAttack, "backdoor": Backdoor}


def make_attack(name, **params):
    return ATTACKS[name](**params)


# ---------------------------------------------------------------------------------------------------- install
_NAMES = ("tasks", "partition", "training")


def install(monkeypatch) -> None:
    """Use this module as fl_bridge.tasks / partition / training and as both registries."""
    import artshield.fl_bridge as package
    import artshield.fl_bridge.attacks as attacks
    import artshield.fl_bridge.defenses as defenses

    me = sys.modules[__name__]
    for name in _NAMES:
        monkeypatch.setitem(sys.modules, f"artshield.fl_bridge.{name}", me)
        monkeypatch.setattr(package, name, me, raising=False)
    monkeypatch.setitem(sys.modules, "artshield.fl_bridge.attacks.registry", me)
    monkeypatch.setattr(attacks, "registry", me, raising=False)
    monkeypatch.setitem(sys.modules, "artshield.fl_bridge.defenses.registry", me)
    monkeypatch.setattr(defenses, "registry", me, raising=False)
