"""Label recovery from gradients (fl_bridge.leakage.labels): formulas on hand-built gradients, exact recovery in
the easy cases, zero-shot counts with duplicate labels on the styles CNN, FedAvg updates, errors, determinism."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from artshield.errors import InvalidArgumentError
from artshield.fl_bridge.leakage.labels import (
    LABEL_METHODS,
    LabelRecovery,
    apportion,
    infer_input_shape,
    label_metrics,
    last_linear_layer,
    recover_labels,
)
from artshield.fl_bridge.tasks import load_task
from artshield.fl_bridge.training import LocalTraining, train_locally
from artshield.fl_bridge.updates import ParameterLayout


def gradients_of(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    loss = F.cross_entropy(model(images), labels)
    return dict(zip(params, (g.detach() for g in torch.autograd.grad(loss, list(params.values()))), strict=True))


def fedavg_pseudo_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int,
                           lr: float) -> dict[str, torch.Tensor]:
    """(w_before - w_after) / (lr * steps) after `steps` full-batch SGD steps."""
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    local = {n: v.clone().requires_grad_(True) for n, v in start.items()}
    for _ in range(steps):
        loss = F.cross_entropy(torch.func.functional_call(model, local, (images,)), labels)
        grads = torch.autograd.grad(loss, list(local.values()))
        local = {n: (v - lr * g).detach().requires_grad_(True) for (n, v), g in zip(local.items(), grads, strict=True)}
    return {n: (start[n] - local[n].detach()) / (lr * steps) for n in start}


def duplicate_batch(labels: torch.Tensor, num_classes: int, batch_size: int, generator: torch.Generator):
    """Indices of a batch whose labels come from batch_size // 2 random classes (duplicates forced)."""
    k = max(1, min(num_classes, batch_size // 2))
    classes = torch.randperm(num_classes, generator=generator)[:k]
    chosen = classes[torch.randint(k, (batch_size,), generator=generator)]
    return torch.tensor([int(torch.nonzero(labels == c).flatten()[
        torch.randint(int((labels == c).sum()), (1,), generator=generator)]) for c in chosen.tolist()])


def mlp(num_classes: int = 5, bias: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, num_classes, bias=bias))


@pytest.fixture(scope="module")
def digits():
    task = load_task("digits")
    return task, task.train_set()


@pytest.fixture(scope="module")
def styles():
    task = load_task("styles", num_samples=160, num_test=8, cache=False)
    return task, task.train_set()


def briefly_trained(task, data) -> nn.Module:
    model = task.build_model(0)
    layout = ParameterLayout.from_arrays(model.state_dict())
    vector = layout.flatten(model.state_dict())
    vector = vector + train_locally(model, layout, vector, data, LocalTraining(epochs=3, lr=0.05, batch_size=16),
                                    torch.Generator().manual_seed(0))
    state = layout.unflatten(vector)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(state[name])
    return model


# ------------------------------------------------------------------------------------------- formulas
def test_last_linear_layer_is_found_generically():
    layer = last_linear_layer(mlp(), 5)
    assert (layer.module, layer.weight, layer.bias, layer.num_features) == ("3", "3.weight", "3.bias", 8)
    assert last_linear_layer(mlp(bias=False), 5).bias is None
    with pytest.raises(InvalidArgumentError, match="7 outputs"):
        last_linear_layer(mlp(), 7)


def hand_gradients(model: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None = None):
    grads = {"3.weight": weight}
    if bias is not None:
        grads["3.bias"] = bias
    return grads


def test_idlg_takes_the_row_with_the_smallest_sum():
    model = mlp()
    weight = torch.full((5, 8), 0.1)
    weight[3] = -0.4
    result = recover_labels("idlg", hand_gradients(model, weight), model, batch_size=1, num_classes=5)
    assert isinstance(result, LabelRecovery) and result.method == "idlg"
    assert result.labels.tolist() == [3] and result.counts.tolist() == [0, 0, 0, 1, 0]


def test_analytic_takes_negative_bias_entries_then_the_smallest_rest():
    model = mlp()
    bias = torch.tensor([0.10, -0.30, 0.02, -0.50, 0.20])
    weight = torch.zeros(5, 8)
    two = recover_labels("analytic", hand_gradients(model, weight, bias), model, batch_size=2, num_classes=5)
    assert two.labels.tolist() == [1, 3]
    three = recover_labels("analytic", hand_gradients(model, weight, bias), model, batch_size=3, num_classes=5)
    assert three.labels.tolist() == [1, 2, 3]  # class 2 has the smallest non-negative entry


def test_yin_orders_classes_by_their_rows_minimum():
    model = mlp()
    weight = torch.full((5, 8), 0.2)
    weight[4, 0], weight[0, 5], weight[2, 7] = -0.9, -0.5, -0.1
    result = recover_labels("yin", hand_gradients(model, weight), model, batch_size=2, num_classes=5)
    assert result.labels.tolist() == [0, 4]


def constant_feature_model(num_classes: int = 4) -> nn.Module:
    """Features o = relu(0.5) for every input, last layer zero: softmax exactly uniform, Σ_j o_j exactly 4."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, num_classes))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.fill_(0.5)
        model[3].weight.zero_()
        model[3].bias.zero_()
    return model


@pytest.mark.parametrize("use_bias", [None, False])
def test_zero_shot_formula_is_exact_when_its_approximations_are(use_bias):
    # Uniform softmax and constant features: Σ p̂ and Ō are exact, so the counts must be too, duplicates included.
    model = constant_feature_model()
    counts = torch.tensor([3, 0, 5, 1])
    labels = torch.repeat_interleave(torch.arange(4), counts)
    grads = gradients_of(model, torch.rand(9, 6), labels)
    expected_bias = 1 / 4 - counts / 9.0
    assert torch.allclose(grads["3.bias"], expected_bias.float(), atol=1e-6)
    result = recover_labels("zero-shot", grads, model, batch_size=9, num_classes=4, use_bias=use_bias)
    assert result.counts.tolist() == counts.tolist()
    assert result.labels.tolist() == labels.tolist()


def test_llg_counts_duplicates_and_updates_the_class_it_takes():
    # Stage 2 must spread over classes: with breaching's stale index it would pick one class for every slot.
    model = constant_feature_model()
    labels = torch.tensor([0, 0, 0, 2, 2, 3])
    result = recover_labels("llg", gradients_of(model, torch.rand(6, 6), labels), model, batch_size=6,
                            num_classes=4)
    assert result.labels.tolist() == labels.tolist()


def test_apportion_rounds_to_the_batch_size():
    assert apportion(torch.tensor([1.6, 0.3, 2.1]), 4).tolist() == [2, 0, 2]
    assert apportion(torch.tensor([1.9, 1.9, 1.9]), 4).tolist() == [2, 1, 1]  # ties: lowest class first
    assert apportion(torch.tensor([-0.5, 3.2, 2.3]), 4).tolist() == [0, 2, 2]  # floors overshoot after clamping
    assert apportion(torch.tensor([-1.0, -2.0]), 3).sum() == 3


def test_label_metrics_score_multisets():
    metrics = label_metrics(torch.tensor([0, 0, 1, 2]), torch.tensor([2, 0, 1, 1]), 3)
    assert metrics == {"label_accuracy": 0.75, "count_accuracy": 1 / 3, "exact": 0.0}
    assert label_metrics(torch.tensor([1, 0]), torch.tensor([0, 1]), 2)["exact"] == 1.0


# ------------------------------------------------------------------------------------------- real models
def test_every_method_recovers_a_single_label_exactly(digits):
    task, data = digits
    model = task.build_model(0)
    for i in range(5):
        grads = gradients_of(model, data.images[i:i + 1], data.labels[i:i + 1])
        for method in LABEL_METHODS:
            result = recover_labels(method, grads, model, batch_size=1, num_classes=10)
            assert result.labels.tolist() == [int(data.labels[i])], method


def test_unique_label_methods_are_exact_on_unique_labels(digits):
    task, data = digits
    model = task.build_model(0)
    index = torch.stack([torch.nonzero(data.labels == c).flatten()[0] for c in (1, 4, 7, 9)])
    grads = gradients_of(model, data.images[index], data.labels[index])
    for method in ("analytic", "yin", "llg", "zero-shot"):
        assert recover_labels(method, grads, model, batch_size=4, num_classes=10).labels.tolist() == [1, 4, 7, 9]


def test_input_shape_is_read_off_the_model(digits, styles):
    assert infer_input_shape(digits[0].build_model(0)) == (64,)
    assert infer_input_shape(styles[0].build_model(0)) == (3, 32, 32)


@pytest.mark.parametrize("state", ["untrained", "trained"])
def test_zero_shot_counts_duplicates_at_batch_16_on_the_styles_cnn(styles, state):
    task, data = styles
    model = task.build_model(0) if state == "untrained" else briefly_trained(task, data)
    generator = torch.Generator().manual_seed(1)
    scores = []
    for trial in range(10):
        index = duplicate_batch(data.labels, task.num_classes, 16, generator)
        labels = data.labels[index]
        assert len(labels.unique()) < 16  # duplicates
        grads = gradients_of(model, data.images[index], labels)
        result = recover_labels("zero-shot", grads, model, batch_size=16, num_classes=task.num_classes,
                                generator=torch.Generator().manual_seed(trial))
        assert result.labels.shape == (16,) and int(result.counts.sum()) == 16
        assert torch.equal(result.labels, result.labels.sort().values)
        scores.append(label_metrics(result.labels, labels, task.num_classes))
    assert sum(s["label_accuracy"] for s in scores) / len(scores) >= 0.99
    assert sum(s["count_accuracy"] for s in scores) / len(scores) >= 0.99


def test_zero_shot_reads_fedavg_updates(digits):
    task, data = digits
    model = task.build_model(0)
    generator = torch.Generator().manual_seed(2)
    right = 0.0
    for _trial in range(5):
        index = duplicate_batch(data.labels, 10, 16, generator)
        grads = fedavg_pseudo_gradient(model, data.images[index], data.labels[index], steps=4, lr=0.05)
        result = recover_labels("zero-shot", grads, model, batch_size=16, num_classes=10, local_steps=4,
                                local_lr=0.05)
        right += label_metrics(result.labels, data.labels[index], 10)["label_accuracy"]
    assert right / 5 >= 0.99


# ------------------------------------------------------------------------------------------- errors, determinism
def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and message
    return message


@pytest.mark.parametrize("method,batch", [("idlg", 8), ("analytic", 6), ("yin", 6)])
def test_impossible_batches_are_refused_naming_the_method(method, batch):
    model = mlp()
    grads = gradients_of(model, torch.rand(batch, 6), torch.arange(batch) % 5)
    with pytest.raises(InvalidArgumentError) as exc:
        recover_labels(method, grads, model, batch_size=batch, num_classes=5)
    assert repr(method) in one_line(exc)


def test_bad_requests_are_refused_in_one_line():
    model = mlp()
    grads = gradients_of(model, torch.rand(2, 6), torch.tensor([0, 1]))
    cases = [
        (dict(method="guess"), "label method"),
        (dict(gradients={**grads, "3.weight": torch.zeros(5, 9)}), "3.weight"),
        (dict(gradients={"1.weight": grads["1.weight"]}), "3.weight"),
        (dict(gradients={**grads, "nope": torch.zeros(1)}), "nope"),
        (dict(gradients={**grads, "3.weight": torch.full((5, 8), float("nan"))}), "NaN"),
        (dict(batch_size=0), "batch_size"),
        (dict(num_classes=4), "4 outputs"),
        (dict(local_steps=0), "local_steps"),
        (dict(method="zero-shot", local_lr=-1.0), "local_lr"),
        (dict(method="analytic", gradients={"3.weight": grads["3.weight"]}), "bias"),
        (dict(method="zero-shot", gradients={"3.weight": grads["3.weight"]}, use_bias=True), "bias"),
    ]
    for change, name in cases:
        kwargs = dict(method="llg", gradients=grads, batch_size=2, num_classes=5) | change
        method, gradients = kwargs.pop("method"), kwargs.pop("gradients")
        with pytest.raises(InvalidArgumentError) as exc:
            recover_labels(method, gradients, model, **kwargs)
        assert name in one_line(exc), change


def test_recovery_is_deterministic(digits):
    task, data = digits
    model = task.build_model(0)
    index = duplicate_batch(data.labels, 10, 16, torch.Generator().manual_seed(3))
    grads = gradients_of(model, data.images[index], data.labels[index])
    for method in ("llg", "zero-shot"):
        first = recover_labels(method, grads, model, batch_size=16, num_classes=10)
        again = recover_labels(method, grads, model, batch_size=16, num_classes=10)
        seeded = [recover_labels(method, grads, model, batch_size=16, num_classes=10,
                                 generator=torch.Generator().manual_seed(5)).labels for _ in range(2)]
        assert torch.equal(first.labels, again.labels) and torch.equal(first.counts, again.counts)
        assert torch.equal(seeded[0], seeded[1])


def test_apportion_respects_proven_minimums():
    assert apportion(torch.tensor([3.6, 0.2, 0.2]), 4, torch.tensor([0, 1, 1])).tolist() == [2, 1, 1]
    with pytest.raises(InvalidArgumentError, match="at least 5"):
        apportion(torch.tensor([1.0, 1.0]), 4, torch.tensor([3, 2]))
