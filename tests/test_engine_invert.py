"""The inversion engine on problems whose answer is known: DLG gradient matching on a tiny MLP, quadratics,
a CGI-DM-shaped masked latent under an L2 ball; plus the shared parts it added to the perturbation engine
(signed Adam, milestones, unconstrained mode, a callback that sees and stops, no silent nan_to_num)."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
import torch.nn.functional as F

from artshield.engine import (
    Budget,
    InvertConfig,
    Inverter,
    StepRule,
    gradient_distance,
    step_size_at,
    total_variation,
)
from artshield.errors import InvalidArgumentError, MaskError, ObjectiveError
from artshield.metrics import psnr

BOX = Budget(None, bounds=(0.0, 1.0))


# ---------------------------------------------------------------------------------------------- DLG
def dlg_problem(label: int = 0):
    """A sigmoid MLP (twice differentiable, as in DLG), one private image and label, and the shared gradient."""
    generator = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 32), torch.nn.Sigmoid(), torch.nn.Linear(32, 4))
    for parameter in model.parameters():
        parameter.data = torch.randn(parameter.shape, generator=generator) * 0.5
    params = list(model.parameters())
    image = torch.rand(1, 3, 4, 4, generator=generator)
    shared = [g.detach() for g in torch.autograd.grad(F.cross_entropy(model(image), torch.tensor([label])), params)]

    def objective(values, generator):
        soft_label = F.softmax(values["label"], dim=-1)
        loss = torch.sum(-soft_label * F.log_softmax(model(values["image"]), dim=-1), dim=-1).mean()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        return gradient_distance(grads, shared, "l2")

    init = {
        "image": torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(5)),
        "label": torch.randn(1, 4, generator=torch.Generator().manual_seed(6)),
    }
    assert int(init["label"].argmax()) != label  # the label must really be recovered
    return objective, init, image, label


@pytest.mark.parametrize(
    "settings",
    [
        # Plain L-BFGS is DLG's fragile default: at lr 1 it diverges on this problem; the line search does not.
        {"step_rule": "lbfgs", "step_size": 0.2, "steps": 10},
        {"step_rule": "lbfgs", "step_size": 1.0, "steps": 30, "line_search": "strong_wolfe"},
        {"step_rule": "adam", "step_size": 0.05, "steps": 500},
        {"step_rule": "signed-adam", "step_size": 0.05, "steps": 500, "schedule": "multistep", "milestones": (3 / 8, 5 / 8, 7 / 8)},
    ],
    ids=["lbfgs", "lbfgs-strong-wolfe", "adam", "signed-adam-milestones"],
)
def test_dlg_recovers_image_and_label_jointly(settings):
    objective, init, image, label = dlg_problem()
    before = {name: value.clone() for name, value in init.items()}
    result = Inverter(budgets={"image": BOX, "label": None}, **settings).run(objective, init)
    assert float(psnr(result.values["image"], image)) > 30
    assert int(result.values["label"].argmax()) == label
    assert result.final_loss < 0.01 * result.losses[0]
    assert result.values["image"].min() >= 0 and result.values["image"].max() <= 1
    assert all(torch.equal(init[name], before[name]) for name in init)  # the start is never modified


def test_callback_sees_the_iterate_and_stops_on_psnr():
    """The FL room logs PSNR to the ground truth and stops once it is good enough."""
    objective, init, image, label = dlg_problem()
    seen = []

    def on_step(info):
        current = info.iterate["image"]
        seen.append((info.step, float(psnr(current, image)), current))
        current.add_(100.0)  # the callback gets copies: scribbling on them must not touch the run
        return seen[-1][1] > 25

    result = Inverter(step_rule="adam", step_size=0.05, steps=500, budgets={"image": BOX}, progress=on_step).run(objective, init)
    assert result.stop_reason == "callback" and result.stopped_early
    assert result.steps_run == seen[-1][0] < 500
    assert [step for step, _, _ in seen] == list(range(1, result.steps_run + 1))
    assert float(psnr(result.values["image"], image)) == pytest.approx(seen[-1][1], abs=1e-3)
    assert seen[-2][1] <= 25 < seen[-1][1]


# ---------------------------------------------------------------------------------------------- quadratics
@pytest.mark.parametrize("rule", ["adam", "signed-adam", "normalized", "lbfgs"])
def test_unconstrained_mode_reaches_values_outside_the_unit_box(rule):
    target = torch.randn(2, 5, generator=torch.Generator().manual_seed(1)) * 4  # far outside [0, 1]

    def distance(x, generator):
        return (x - target).pow(2).sum(dim=1)

    steps, step_size = {"adam": (600, 0.1), "signed-adam": (600, 0.1), "normalized": (400, 0.05), "lbfgs": (5, 1.0)}[rule]
    schedule = "linear" if rule != "lbfgs" else "constant"
    result = Inverter(step_rule=rule, steps=steps, step_size=step_size, schedule=schedule).run(distance, torch.zeros(2, 5))
    assert isinstance(result.values, torch.Tensor)  # a lone tensor in, a lone tensor out
    assert torch.allclose(result.values, target, atol=0.05)
    assert result.values.abs().max() > 2


def test_a_box_is_respected_and_clips_the_optimum():
    target = torch.tensor([[-1.0, 0.3, 2.0, 0.9]])
    result = Inverter(step_rule="adam", steps=300, step_size=0.05, budget=BOX).run(
        lambda x, g: (x - target).pow(2).sum(), torch.full((1, 4), 0.5)
    )
    assert torch.allclose(result.values, target.clamp(0, 1), atol=0.02)
    assert result.values.min() >= 0 and result.values.max() <= 1


# ---------------------------------------------------------------------------------------------- CGI-DM shape
def checkerboard(shape):
    """Revelio's latent mask: keep 2x2 cells in a checkerboard (0 = kept and pinned, 1 = free to move)."""
    rows = torch.arange(shape[-2]).view(-1, 1) // 2
    cols = torch.arange(shape[-1]).view(1, -1) // 2
    return ((rows + cols) % 2).float().expand(shape[0], 1, shape[-2], shape[-1])


@pytest.mark.parametrize("rule", ["normalized", "adam", "lbfgs"])
def test_masked_latent_under_an_l2_ball_without_a_box(rule):
    """CGI-DM: maximise, the kept half pinned exactly, the change bounded in L2, no [0, 1] clipping."""
    generator = torch.Generator().manual_seed(2)
    latent = torch.randn(2, 4, 8, 8, generator=generator) * 3
    weights = torch.randn(2, 4, 8, 8, generator=generator)
    mask = checkerboard(latent.shape)
    eps = 3.0

    def contrast(x, generator):  # stands in for L_pre - L_ft, one value per sample
        return (x * weights).flatten(1).sum(dim=1)

    steps = 60 if rule != "lbfgs" else 3
    result = Inverter(step_rule=rule, steps=steps, step_size=0.5, minimize=False, budget=Budget(eps, norm="l2", bounds=None)).run(
        contrast, latent, masks=mask
    )
    delta = result.values - latent
    kept = (mask == 0).expand_as(latent)
    assert torch.equal(result.values[kept], latent[kept])  # bit for bit
    norms = delta.flatten(1).norm(dim=1)
    assert torch.all(norms <= eps + 1e-4) and torch.all(norms > eps - 1e-2)  # on the sphere: the optimum
    if rule == "normalized":  # normalised steps find the L2 optimum; Adam's sign-like steps need not
        optimum = weights * mask
        optimum = eps * optimum / optimum.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        assert torch.allclose(delta, optimum, atol=0.05)
    assert result.losses[-1] > result.losses[0]
    assert result.values.min() < 0 and result.values.max() > 1  # never clipped to a box


def test_lbfgs_respects_masks_and_per_tensor_budgets():
    target = {"a": torch.full((1, 6), 3.0), "b": torch.full((1, 3), -2.0)}
    start = {"a": torch.zeros(1, 6), "b": torch.zeros(1, 3)}
    mask_a = torch.tensor([[1.0, 0, 1, 0, 1, 0]])

    def distance(values, generator):
        return sum((values[k] - target[k]).pow(2).sum() for k in values)

    engine = Inverter(step_rule="lbfgs", steps=5, step_size=1.0, budgets={"b": Budget(0.5, norm="linf", bounds=None)})
    result = engine.run(distance, start, masks={"a": mask_a})
    assert torch.allclose(result.values["a"], 3.0 * mask_a, atol=1e-4)
    assert torch.equal(result.values["a"][mask_a == 0], torch.zeros(3))
    assert torch.allclose(result.values["b"], torch.full((1, 3), -0.5), atol=1e-6)  # L-inf ball of 0.5


# ---------------------------------------------------------------------------------------------- schedules
def test_multistep_milestones_change_the_step_size_at_the_right_steps():
    """Sign steps on a linear objective move exactly the step size, so the movement shows the schedule."""
    seen = []
    engine = Inverter(step_rule="sign", steps=8, step_size=1.0, schedule="multistep", milestones=(0.25, 6), gamma=0.5,
                      progress=lambda info: seen.append((info.step_size, info.iterate.clone())))
    result = engine.run(lambda x, g: x.sum(), torch.zeros(1, 1))
    expected = [1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25]
    assert [size for size, _ in seen] == expected
    moved = [float(-iterate) for _, iterate in seen]  # minimising x: it goes down by the step size
    assert moved == pytest.approx(list(itertools.accumulate(expected)))
    assert float(result.values) == pytest.approx(-sum(expected))
    assert [step_size_at(s, 8, 1.0, "multistep", milestones=(3 / 8,), gamma=0.1) for s in (2, 3)] == [1.0, pytest.approx(0.1)]


def test_lbfgs_follows_the_schedule():
    sizes = []
    Inverter(step_rule="lbfgs", steps=4, step_size=1.0, schedule="multistep", milestones=(2,), gamma=0.1,
             progress=lambda info: sizes.append(info.step_size)).run(lambda x, g: (x - 1).pow(2).sum(), torch.zeros(1, 2))
    assert sizes == [1.0, 1.0, pytest.approx(0.1), pytest.approx(0.1)]


# ---------------------------------------------------------------------------------------------- early stops, best, samples
def test_early_stop_target_returns_the_iterate_that_reached_it():
    result = Inverter(step_rule="sign", steps=100, step_size=0.1, early_stop_target=0.25).run(
        lambda x, g: x.pow(2).sum(), torch.full((1, 1), 2.0)
    )
    assert result.stop_reason == "target" and result.steps_run < 100
    assert float(result.values) ** 2 <= 0.25 + 1e-6 and result.final_loss <= 0.25 + 1e-6


def test_patience_and_keep_best():
    """Big sign steps overshoot a minimum and oscillate: patience stops it, keep_best returns the best point."""
    result = Inverter(step_rule="sign", steps=100, step_size=0.3, early_stop_patience=3, keep_best=True).run(
        lambda x, g: (x - 0.1).pow(2).sum(), torch.zeros(1, 1)
    )
    assert result.stop_reason == "patience" and result.steps_run < 10
    assert result.final_loss == pytest.approx(min(result.losses))
    assert result.losses[result.best_step] == pytest.approx(min(result.losses))


def test_samples_per_step_average_draws_and_seed_is_deterministic():
    calls = []
    weights = torch.randn(1, 64, generator=torch.Generator().manual_seed(3))

    def noisy(x, generator):
        calls.append(1)
        return (x * (weights + 3 * torch.randn(x.shape, generator=generator))).sum()

    agreement = {}
    for samples in (1, 32):
        calls.clear()
        result = Inverter(step_rule="sign", steps=1, step_size=1.0, minimize=False, samples_per_step=samples, seed=0).run(
            noisy, torch.zeros(1, 64)
        )
        assert len(calls) == samples + 1  # the draws, then one evaluation of the returned values
        agreement[samples] = float((result.values.sign() == weights.sign()).float().mean())
    assert agreement[32] > max(agreement[1], 0.8)

    def run(seed):
        return Inverter(step_rule="adam", steps=5, step_size=0.1, seed=seed).run(noisy, torch.zeros(1, 64)).values

    assert torch.equal(run(7), run(7)) and not torch.equal(run(7), run(8))


# ---------------------------------------------------------------------------------------------- non-finite gradients
@pytest.mark.parametrize("rule", ["adam", "lbfgs"])
def test_a_non_finite_gradient_names_the_tensor(rule):
    def broken(values, generator):  # sqrt at zero: finite loss, infinite gradient on "label" only
        return values["image"].pow(2).sum() + values["label"].sqrt().sum()

    start = {"image": torch.ones(1, 3), "label": torch.zeros(1, 2)}
    with pytest.raises(ObjectiveError, match="'label'"):
        Inverter(step_rule=rule, steps=3, step_size=0.1).run(broken, start)


# ---------------------------------------------------------------------------------------------- step rules
def test_signed_adam_ignores_the_gradient_scale():
    small, large = StepRule("signed-adam"), StepRule("signed-adam")
    grads = [torch.randn(2, 5, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    for grad in grads:
        a, b = small(grad * 1e-6), large(grad * 1e6)
    assert torch.allclose(a, b)


# ---------------------------------------------------------------------------------------------- helpers and errors
def test_gradient_distance_and_total_variation():
    grads = [torch.randn(3, 4, generator=torch.Generator().manual_seed(9)), torch.randn(4)]
    assert float(gradient_distance(grads, [5 * g for g in grads], "cosine")) == pytest.approx(0.0, abs=1e-6)
    assert float(gradient_distance(grads, [-g for g in grads], "cosine")) == pytest.approx(2.0)
    assert float(gradient_distance(grads, [g + 1 for g in grads], "l2")) == pytest.approx(16.0)
    flat, noisy = torch.full((2, 3, 5, 5), 0.5), torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(total_variation(flat), torch.zeros(2))
    assert bool((total_variation(noisy) > 0.1).all())


def test_one_dimensional_tensors_and_the_config_round_trip():
    result = Inverter(step_rule="normalized", steps=50, step_size=0.1, budget=Budget(1.0, norm="l2", bounds=None)).run(
        lambda x, g: (x - 10).pow(2).sum(), torch.zeros(4)
    )
    assert result.values.shape == (4,)
    assert float(result.values.norm()) == pytest.approx(1.0, abs=1e-5)  # a 1-D tensor is one sample
    engine = Inverter(budgets={"image": BOX, "label": None}, schedule="multistep", milestones=(0.5,))
    saved = json.loads(json.dumps(engine.config_dict))
    saved = {k: v for k, v in saved.items() if not k.startswith("_")}
    assert InvertConfig(**saved) == engine.config


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"step_rule": "sgd"}, "step_rule"),
        ({"schedule": "multistep"}, "milestones"),
        ({"milestones": (1.5,)}, "milestones"),
        ({"gamma": 0.0}, "gamma"),
        ({"line_search": "strong_wolfe"}, "line_search"),
        ({"step_rule": "lbfgs", "nonfinite": "skip"}, "nonfinite"),
        ({"budgets": {"x": 3}}, "budgets"),
        ({"step_size": 0}, "step_size"),
    ],
)
def test_bad_settings_are_named(kwargs, name):
    with pytest.raises(InvalidArgumentError, match=name):
        InvertConfig(**kwargs)


def test_bad_inputs_are_named():
    engine = Inverter(steps=1, budgets={"image": BOX})
    objective = lambda v, g: v["image"].sum()  # noqa: E731
    with pytest.raises(InvalidArgumentError, match="'image'.*bounds"):
        engine.run(objective, {"image": torch.full((1, 2), 2.0)})
    with pytest.raises(InvalidArgumentError, match="'latent'"):
        Inverter(steps=1, budgets={"latent": BOX}).run(objective, {"image": torch.rand(1, 2)})
    with pytest.raises(MaskError, match="'image'.*does not fit"):
        engine.run(objective, {"image": torch.rand(1, 2)}, masks={"image": torch.ones(1, 3)})
    with pytest.raises(MaskError, match="empty"):
        engine.run(objective, {"image": torch.rand(1, 2)}, masks={"image": torch.zeros(1, 2)})
    with pytest.raises(ObjectiveError, match="autograd"):
        engine.run(lambda v, g: v["image"].detach().sum(), {"image": torch.rand(1, 2)})
    with pytest.raises(ObjectiveError, match="scalar or a 1-D"):
        engine.run(lambda v, g: v["image"] * 2, {"image": torch.rand(1, 2)})
