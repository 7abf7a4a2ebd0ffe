"""Gradient inversion on the shared engine: observations (FedSGD, FedAvg), the four attacks' objectives, DLG's
near-perfect recovery of a digit from a softmax model, FedAvg unrolling, restarts, BatchNorm matching, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from artshield.errors import InvalidArgumentError
from artshield.fl_bridge.leakage.inversion import ATTACKS, PRESETS, MatchingObjective, reconstruct
from artshield.fl_bridge.leakage.observe import (
    Observation,
    observation_from_delta,
    observe_fedavg,
    observe_fedsgd,
)
from artshield.metrics import psnr


def tiny_model(seed: int = 0, classes: int = 4) -> nn.Module:
    """A twice-differentiable MLP on 1x6x6 images (sigmoid, as in DLG)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.Sigmoid(), nn.Linear(16, classes))


def batch(size: int, seed: int = 1, classes: int = 4):
    g = torch.Generator().manual_seed(seed)
    # Smooth images (blurred blocks) so that the TV prior is a fair prior, not an obstacle.
    coarse = torch.rand(size, 1, 3, 3, generator=g)
    images = nn.functional.interpolate(coarse, size=(6, 6), mode="bilinear", align_corners=False)
    return images, torch.arange(size) % classes


def settings(attack: str, **changes):
    return {**PRESETS[attack], **changes}


# ---------------------------------------------------------------------------------------------- observations
def test_fedavg_with_one_full_batch_step_is_the_fedsgd_gradient():
    model = tiny_model()
    images, labels = batch(3)
    sgd = observe_fedsgd(model, images, labels)
    avg = observe_fedavg(model, images, labels, lr=0.1, steps=1, batch_size=3)
    assert sgd.kind == "fedsgd" and avg.kind == "fedavg" and avg.local_steps == 1
    for name, grad in sgd.gradients.items():
        torch.testing.assert_close(avg.gradients[name], grad, rtol=1e-5, atol=1e-6)


def test_observation_from_a_train_locally_delta_equals_observe_fedavg():
    from artshield.fl_bridge.tasks import Dataset
    from artshield.fl_bridge.training import LocalTraining, train_locally
    from artshield.fl_bridge.updates import ParameterLayout

    model = tiny_model()
    images, labels = batch(4)
    layout = ParameterLayout.from_arrays(model.state_dict())
    start = layout.flatten(model.state_dict())
    config = LocalTraining(epochs=3, lr=0.2, batch_size=8)  # the whole batch every step: order is irrelevant
    delta = train_locally(model, layout, start, Dataset(images, labels), config, torch.Generator().manual_seed(0))
    seen = observation_from_delta(model, delta, layout, lr=0.2, steps=3, batch_size=4, input_shape=(1, 6, 6),
                                  num_classes=4)
    honest = observe_fedavg(model, images, labels, lr=0.2, steps=3, batch_size=4)
    assert seen.batch_size == 4 and seen.local_steps == 3
    for name, grad in honest.gradients.items():
        torch.testing.assert_close(seen.gradients[name], grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("metric", ["l2", "cosine", "cosine-layer"])
def test_fedavg_unrolled_objective_of_the_true_batch_is_zero(metric):
    model = tiny_model()
    images, labels = batch(4)
    observation = observe_fedavg(model, images, labels, lr=0.5, steps=4, batch_size=2)
    objective = MatchingObjective(model, observation, labels, settings("ig", metric=metric), steps=10)
    truth = float(objective.matching({"image": images}).detach())
    other = float(objective.matching({"image": batch(4, seed=7)[0]}).detach())
    assert abs(truth) < 1e-5
    assert other > 1e3 * max(abs(truth), 1e-9)


# ---------------------------------------------------------------------------------------------- attacks
def test_dlg_recovers_a_digit_from_a_softmax_model_near_perfectly():
    from artshield.fl_bridge.tasks import load_task

    task = load_task("digits", hidden=0)
    model = task.build_model(0)
    data = task.train_set()
    image, label = data.images[5:6], data.labels[5:6]
    observation = observe_fedsgd(model, image, label)
    result = reconstruct("dlg", model, observation, steps=10, generator=torch.Generator().manual_seed(0))
    assert result.labels.tolist() == label.tolist()  # optimised jointly
    assert float(psnr(result.images, image)) > 40
    assert result.config["labels"] == "optimised jointly" and result.loss < 1e-4


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("kind", ["fedsgd", "fedavg"])
def test_each_attack_lowers_its_objective_and_beats_noise(attack, kind):
    model = tiny_model()
    images, labels = batch(2)
    if kind == "fedsgd":
        observation = observe_fedsgd(model, images, labels)
    else:
        observation = observe_fedavg(model, images, labels, lr=0.5, steps=2, batch_size=1)
    losses = []
    steps = {"dlg": 15, "idlg": 15, "ig": 300, "gradinversion": 300}[attack]
    extra = {"scale": 1.0} if attack == "gradinversion" else {}  # 1e-4 is tuned for ImageNet-sized gradients
    result = reconstruct(attack, model, observation, labels=labels, steps=steps, generator=torch.Generator().manual_seed(0),
                         progress=lambda info: losses.append(info.loss), **extra)
    noise = torch.rand(images.shape, generator=torch.Generator().manual_seed(3))
    assert losses[-1] < losses[0]
    assert result.images.min() >= 0 and result.images.max() <= 1
    from artshield.fl_bridge.leakage.assess import assess

    scores = assess(images, labels, result)
    assert scores["psnr_mean"] > float(psnr(noise, images).mean()) + 3


def test_restarts_keep_the_lowest_matching_loss():
    model = tiny_model()
    images, labels = batch(2)
    observation = observe_fedsgd(model, images, labels)
    result = reconstruct("ig", model, observation, labels=labels, steps=20, restarts=3,
                         generator=torch.Generator().manual_seed(0))
    assert len(result.config["restart_losses"]) == 3
    assert result.loss == min(result.config["restart_losses"])


def test_gradinversion_says_it_skips_batchnorm_matching_without_batchnorm():
    model = tiny_model()
    images, labels = batch(1)
    result = reconstruct("gradinversion", model, observe_fedsgd(model, images, labels), labels=labels, steps=3,
                         generator=torch.Generator().manual_seed(0))
    assert any("BatchNorm" in note for note in result.config["notes"])


def test_gradinversion_matches_batchnorm_statistics_without_touching_the_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 4))
    model.eval()
    images, labels = batch(2)
    observation = observe_fedsgd(model, images, labels)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with_bn = MatchingObjective(model, observation, labels, settings("gradinversion", langevin=0.0), steps=5)
    without = MatchingObjective(model, observation, labels, settings("gradinversion", langevin=0.0, bn=0.0), steps=5)
    noise = {"image": torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(4))}
    generator = torch.Generator().manual_seed(0)
    assert float(with_bn(noise, generator).detach()) > float(without(noise, generator).detach())
    result = reconstruct("gradinversion", model, observation, labels=labels, steps=3, generator=generator)
    assert result.config["notes"] == []
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_langevin_noise_changes_the_gradient_not_the_loss():
    model = tiny_model()
    images, labels = batch(1)
    observation = observe_fedsgd(model, images, labels)
    noisy = MatchingObjective(model, observation, labels, settings("gradinversion"), steps=5)
    quiet = MatchingObjective(model, observation, labels, settings("gradinversion", langevin=0.0), steps=5)
    x = torch.rand(1, 1, 6, 6, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    a = noisy({"image": x}, torch.Generator().manual_seed(0))
    b = quiet({"image": x}, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)
    ga, = torch.autograd.grad(a, x)
    gb, = torch.autograd.grad(b, x)
    assert not torch.allclose(ga, gb)


# ---------------------------------------------------------------------------------------------- errors
def test_named_errors():
    model = tiny_model()
    images, labels = batch(2)
    observation = observe_fedsgd(model, images, labels)
    with pytest.raises(InvalidArgumentError, match="idlg"):
        reconstruct("idlg", model, observation, steps=1)
    with pytest.raises(InvalidArgumentError, match="attack"):
        reconstruct("rgap", model, observation, steps=1)
    with pytest.raises(InvalidArgumentError, match="tvv"):
        reconstruct("ig", model, observation, labels=labels, steps=1, tvv=0.1)
    with pytest.raises(InvalidArgumentError, match="labels"):
        reconstruct("ig", model, observation, labels=torch.tensor([0, 1, 2]), steps=1)
    with pytest.raises(InvalidArgumentError, match="labels"):
        reconstruct("ig", model, observation, labels=torch.tensor([0, 9]), steps=1)
    wrong = Observation({**observation.gradients, "1.weight": torch.zeros(3, 3)}, "fedsgd", 2, (1, 6, 6), 4)
    with pytest.raises(InvalidArgumentError, match="1.weight"):
        reconstruct("dlg", model, wrong, steps=1)
    other = tiny_model(classes=5)
    with pytest.raises(InvalidArgumentError, match="shape"):
        reconstruct("dlg", other, observation, steps=1)
    with pytest.raises(InvalidArgumentError, match="local_lr"):
        Observation(dict(observation.gradients), "fedavg", 2, (1, 6, 6), 4, local_steps=2)
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        observe_fedavg(model, images, labels, lr=0.1, steps=2, batch_size=3)
