"""fl_bridge.training: local SGD on parameter vectors, its attack hooks, evaluation, ASR and the root data."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from artshield.errors import InvalidArgumentError
from artshield.fl_bridge.tasks import Dataset, load_task
from artshield.fl_bridge.training import (
    LocalTraining,
    RootData,
    attack_success_rate,
    evaluate_model,
    loss_at,
    train_locally,
)
from artshield.fl_bridge.updates import ParameterLayout


@pytest.fixture(scope="module")
def digits():
    task = load_task("digits")
    model = task.build_model(0)
    layout = ParameterLayout.from_arrays(model.state_dict())
    return task, model, layout, layout.flatten(model.state_dict())


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _reference_sgd(model, layout, vector, data, config, generator):
    """The same training written the obvious way: torch.optim.SGD on a copy of the model."""
    ref = copy.deepcopy(model)
    ref.load_state_dict(layout.unflatten(vector), strict=False)
    optimizer = torch.optim.SGD(ref.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    n = len(data)
    batch = min(config.batch_size, n)
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=generator)
        for begin in range(0, n, batch):
            index = order[begin:begin + batch]
            optimizer.zero_grad()
            F.cross_entropy(ref(data.images[index]), data.labels[index]).backward()
            optimizer.step()
    return layout.flatten(ref.state_dict()) - vector


@pytest.mark.parametrize("config", [LocalTraining(epochs=2, lr=0.1, batch_size=16),
                                    LocalTraining(epochs=1, lr=0.05, batch_size=10, momentum=0.9,
                                                  weight_decay=0.01)])
def test_train_locally_matches_plain_sgd_and_leaves_the_model_alone(digits, config):
    task, model, layout, vector = digits
    data = task.train_set().subset(torch.arange(45))
    before = copy.deepcopy(model.state_dict())
    delta = train_locally(model, layout, vector, data, config, _gen(3))
    expected = _reference_sgd(model, layout, vector, data, config, _gen(3))
    assert delta.shape == (layout.size,) and delta.dtype == torch.float32
    torch.testing.assert_close(delta, expected, rtol=1e-4, atol=1e-6)
    assert float(delta.norm()) > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_same_generator_seed_same_delta_other_seed_other_delta(digits):
    task, model, layout, vector = digits
    data = task.train_set().subset(torch.arange(64))
    config = LocalTraining(batch_size=32)
    a = train_locally(model, layout, vector, data, config, _gen(0))
    b = train_locally(model, layout, vector, data, config, _gen(0))
    c = train_locally(model, layout, vector, data, config, _gen(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # A second layout object of the same model, and a fresh global vector, give the same answer.
    layout2 = ParameterLayout.from_arrays(model.state_dict())
    assert torch.equal(train_locally(model, layout2, vector.clone(), data, config, _gen(0)), a)


def test_a_few_epochs_on_digits_beat_chance_and_lower_the_loss(digits):
    task, model, layout, vector = digits
    test = task.test_set()
    start = evaluate_model(model, layout, vector, test)
    assert set(start) == {"accuracy", "loss"}
    config = LocalTraining(epochs=1, lr=0.1, batch_size=32)
    generator = _gen(0)
    for _ in range(3):
        vector = vector + train_locally(model, layout, vector, task.train_set(), config, generator)
    end = evaluate_model(model, layout, vector, test)
    assert end["loss"] < start["loss"] - 0.5
    assert end["accuracy"] > 0.6 > start["accuracy"]


class RecordingAttack:
    """A training attack that flips every label to 0, records its calls and keeps the model in an L2 ball."""

    targeted = True

    def __init__(self, radius: float):
        self.radius = radius
        self.batches: list[tuple[int, int]] = []
        self.constrained = 0

    def poison_batch(self, images, labels, generator, client_index=0):
        assert isinstance(generator, torch.Generator)
        self.batches.append((len(labels), client_index))
        return images, torch.zeros_like(labels)

    def constrain(self, vector, global_vector):
        self.constrained += 1
        offset = vector - global_vector
        norm = float(offset.norm())
        return global_vector + offset * min(1.0, self.radius / norm) if norm > 0 else vector

    def backdoor(self, images, labels):
        return images, torch.zeros_like(labels)


def test_attack_hooks_are_called_on_every_batch_and_step(digits):
    task, model, layout, vector = digits
    data = task.train_set().subset(torch.arange(70))
    attack = RecordingAttack(radius=0.05)
    config = LocalTraining(epochs=2, lr=0.5, batch_size=32)
    delta = train_locally(model, layout, vector, data, config, _gen(0), attack=attack, client_index=7)
    assert attack.batches == [(32, 7), (32, 7), (6, 7)] * 2
    assert attack.constrained == 6
    assert float(delta.norm()) <= 0.05 + 1e-5
    honest = train_locally(model, layout, vector, data, config, _gen(0))
    assert float(honest.norm()) > 0.1  # the constraint, not the data, bounded the attacked update


def test_attack_success_rate_counts_non_target_samples_classified_as_target(digits):
    task, model, layout, vector = digits
    test = task.test_set()
    assert attack_success_rate(model, layout, vector, test, None) is None

    class Untargeted:
        targeted = False

    assert attack_success_rate(model, layout, vector, test, Untargeted()) is None
    attack = RecordingAttack(radius=1.0)
    poisoned = vector
    config = LocalTraining(epochs=1, lr=0.2)
    for _ in range(2):
        poisoned = poisoned + train_locally(model, layout, poisoned, task.train_set(), config, _gen(0), attack=attack)
    asr = attack_success_rate(model, layout, poisoned, test, attack)
    with torch.no_grad():
        predictions = functional_call(model, layout.unflatten(poisoned), (test.images,)).argmax(1)
    keep = test.labels != 0
    assert asr == pytest.approx(float((predictions[keep] == 0).float().mean()))
    assert asr > 0.9  # a model trained on all-zero labels answers 0
    clean_asr = attack_success_rate(model, layout, vector, test, attack)
    assert clean_asr < asr


def test_root_data_update_and_differentiable_loss(digits):
    task, model, layout, vector = digits
    root_set = task.test_set().subset(torch.arange(50))
    config = LocalTraining(lr=0.1, batch_size=16)
    root = RootData(model, layout, root_set, config, _gen(5))
    update = root.update(vector)
    assert update.shape == (layout.size,) and float(update.norm()) > 0
    assert torch.equal(update, train_locally(model, layout, vector, root_set, config, _gen(5)))
    point = vector.clone().requires_grad_(True)
    loss = root.loss(point)
    assert loss.dim() == 0
    (gradient,) = torch.autograd.grad(loss, point)
    assert gradient.shape == (layout.size,) and float(gradient.norm()) > 0
    assert float(loss.detach()) == pytest.approx(evaluate_model(model, layout, vector, root_set)["loss"], rel=1e-5)
    # Training on the root data lowers the root loss: the update points downhill.
    assert float(root.loss(vector + update)) < float(loss.detach())
    assert float(loss_at(model, layout, root_set)(vector)) == pytest.approx(float(loss.detach()))


def test_styles_cnn_trains_through_the_same_path(tmp_path, monkeypatch):
    monkeypatch.setenv("ARTSHIELD_CACHE", str(tmp_path))
    task = load_task("styles", num_samples=32, num_test=16, image_size=16)
    model = task.build_model(0)
    layout = ParameterLayout.from_arrays(model.state_dict())
    vector = layout.flatten(model.state_dict())
    delta = train_locally(model, layout, vector, task.train_set(), LocalTraining(), _gen(0))
    expected = _reference_sgd(model, layout, vector, task.train_set(), LocalTraining(), _gen(0))
    torch.testing.assert_close(delta, expected, rtol=1e-4, atol=1e-6)


def test_bad_settings_and_inputs_are_refused(digits):
    task, model, layout, vector = digits
    for field, value in (("epochs", 0), ("lr", 0.0), ("batch_size", 1.5), ("momentum", 1.0),
                         ("weight_decay", -1.0), ("lr", float("inf"))):
        with pytest.raises(InvalidArgumentError, match=f"`{field}`"):
            LocalTraining(**{field: value})
    data = task.train_set()
    with pytest.raises(InvalidArgumentError, match="global_vector"):
        train_locally(model, layout, vector[:-1], data, LocalTraining(), _gen())
    empty = Dataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.int64))
    with pytest.raises(InvalidArgumentError, match="empty"):
        train_locally(model, layout, vector, empty, LocalTraining(), _gen())
