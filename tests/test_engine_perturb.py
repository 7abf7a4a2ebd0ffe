"""The perturbation engine on toy objectives whose optimum is known, plus its contracts."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from artshield.engine import Budget, PerturbConfig, Perturber, evaluate_objective, norm_of
from artshield.errors import InvalidArgumentError, MaskError, ObjectiveError


def linear_objective(weights: torch.Tensor):
    """f(x) = <w, x> per sample: under L-inf the optimum is eps*sign(w); under L2 it is eps*w/|w|."""

    def objective(images, generator):
        return (images * weights).flatten(1).sum(dim=1)

    return objective


def test_linf_sign_steps_reach_the_linear_optimum():
    torch.manual_seed(0)
    weights = torch.randn(2, 3, 8, 8)
    origin = torch.full((2, 3, 8, 8), 0.5)
    eps = 8 / 255
    result = Perturber(eps=eps, steps=10, step_size=eps / 4).run(linear_objective(weights), origin)
    assert torch.allclose(result.delta, eps * weights.sign(), atol=1e-6)
    assert result.losses[-1] > result.losses[0]


def test_l2_normalized_steps_reach_the_linear_optimum():
    torch.manual_seed(1)
    weights = torch.randn(2, 3, 8, 8)
    origin = torch.full((2, 3, 8, 8), 0.5)
    eps = 0.5
    result = Perturber(eps=eps, norm="l2", steps=20, step_size=0.1).run(linear_objective(weights), origin)
    expected = eps * weights / weights.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    assert torch.allclose(result.delta, expected, atol=1e-4)


@pytest.mark.parametrize("rule", ["sign", "normalized", "adam"])
def test_minimize_reaches_a_target_inside_the_ball(rule):
    torch.manual_seed(2)
    origin = torch.rand(1, 3, 6, 6) * 0.8 + 0.1
    target = (origin + (torch.rand_like(origin) * 2 - 1) * 0.03).clamp(0, 1)

    def distance(images, generator):
        return (images - target).pow(2).flatten(1).sum(dim=1)

    steps, step_size = (400, 0.002) if rule != "normalized" else (200, 0.002)
    engine = Perturber(eps=0.05, steps=steps, step_size=step_size, step_rule=rule, schedule="linear", minimize=True)
    result = engine.run(distance, origin)
    assert float(distance(result.images, None)) < 0.02 * float(distance(origin, None))


def test_the_input_is_never_modified():
    origin = torch.rand(2, 3, 8, 8)
    before = origin.clone()
    Perturber(eps=0.1, steps=3, random_start=True, seed=0).run(linear_objective(torch.randn(2, 3, 8, 8)), origin)
    assert torch.equal(origin, before)


@settings(max_examples=40, deadline=None)
@given(
    norm=st.sampled_from(["linf", "l2"]),
    rule=st.sampled_from(["sign", "normalized", "adam"]),
    eps=st.floats(min_value=1e-3, max_value=0.5),
    steps=st.integers(min_value=1, max_value=6),
    step_size=st.floats(min_value=1e-3, max_value=1.0),
    random_start=st.booleans(),
    use_mask=st.booleans(),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_budget_mask_and_range_hold_after_every_number_of_steps(norm, rule, eps, steps, step_size, random_start, use_mask, seed):
    generator = torch.Generator().manual_seed(seed)
    # Originals at the edges of [0, 1] make range clipping matter.
    origin = torch.rand(2, 3, 5, 7, generator=generator).round() * 0.98 + 0.01 * torch.rand(2, 3, 5, 7, generator=generator)
    weights = torch.randn(2, 3, 5, 7, generator=generator)
    mask = (torch.rand(1, 1, 5, 7, generator=generator) > 0.5).float() if use_mask else None
    if mask is not None and not bool(mask.any()):
        mask[..., 0, 0] = 1
    engine = Perturber(eps=eps, norm=norm, steps=steps, step_size=step_size, step_rule=rule, random_start=random_start, seed=seed)
    result = engine.run(linear_objective(weights), origin, mask=mask)
    assert bool(Budget(eps, norm).contains(result.delta, atol=1e-5).all())
    assert result.images.min() >= 0 and result.images.max() <= 1
    assert torch.allclose(result.images, origin + result.delta, atol=1e-6)
    if mask is not None:
        assert float(result.delta[(mask == 0).expand_as(result.delta)].abs().sum()) == 0.0


def test_same_seed_same_result_and_different_seed_differs():
    def noisy(images, generator):
        noise = torch.randn(images.shape, generator=generator)
        return (images * noise).flatten(1).sum(dim=1)

    origin = torch.rand(1, 3, 8, 8)
    run = lambda seed: Perturber(eps=0.05, steps=5, step_size=0.01, seed=seed).run(noisy, origin).images  # noqa: E731
    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_samples_per_step_average_out_noise():
    """With a noisy gradient, more Monte-Carlo samples per step follow the true ascent direction better."""
    weights = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1234))

    def noisy_linear(images, generator):
        noise = torch.randn(images.shape, generator=generator) * 3
        return (images * (weights + noise)).flatten(1).sum(dim=1)

    origin = torch.full((1, 3, 8, 8), 0.5)
    agreement = {}
    for samples in (1, 32):
        result = Perturber(eps=0.05, steps=1, step_size=0.05, samples_per_step=samples, seed=0).run(noisy_linear, origin)
        agreement[samples] = float((result.delta.sign() == weights.sign()).float().mean())
    assert agreement[32] > agreement[1]
    assert agreement[32] > 0.8


def test_transform_is_applied_inside_the_objective():
    """EOT: the objective only sees transformed images; a flipping transform reverses the optimum."""
    weights = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    flip = lambda images, generator: images.flip(-1)  # noqa: E731
    origin = torch.full((1, 1, 4, 4), 0.5)
    result = Perturber(eps=0.1, steps=3, step_size=0.1, transform=flip).run(linear_objective(weights), origin)
    assert torch.allclose(result.delta, 0.1 * weights.flip(-1).sign())


def test_batch_size_chunks_match_one_big_batch():
    weights = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(1))  # shared by every sample
    origin = torch.rand(5, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    whole = Perturber(eps=0.03, steps=4, step_size=0.01).run(linear_objective(weights), origin)
    chunked = Perturber(eps=0.03, steps=4, step_size=0.01, batch_size=2).run(linear_objective(weights), origin)
    assert torch.allclose(whole.images, chunked.images)
    assert len(chunked.losses) == 4


def test_early_stop_target_freezes_samples_and_stops():
    weights = torch.ones(2, 1, 2, 2)
    origin = torch.full((2, 1, 2, 2), 0.5)
    engine = Perturber(eps=0.5, steps=100, step_size=0.01, early_stop_target=2.2)
    result = engine.run(linear_objective(weights), origin)
    assert result.stopped_early
    assert result.steps_run < 100
    assert torch.all(result.final_losses >= 2.2 - 1e-6)


def test_early_stop_patience_stops_on_a_plateau():
    flat = lambda images, generator: images.flatten(1).sum(dim=1) * 0 + images.flatten(1)[:, :1].sum(dim=1).clamp(max=0.5)  # noqa: E731
    origin = torch.full((1, 1, 2, 2), 0.5)
    result = Perturber(eps=0.1, steps=50, step_size=0.01, early_stop_patience=3).run(flat, origin)
    assert result.stopped_early and result.steps_run <= 5


def test_keep_best_returns_the_best_iterate():
    """An objective that peaks at the first step: keep_best returns the peak, not the last iterate."""

    def peaked(images, generator):
        distance = (images - 0.4).flatten(1).abs().sum(dim=1)  # 0.4 at the start, peak at 0.44
        return -((distance - 0.44) ** 2)

    origin = torch.full((1, 1, 2, 2), 0.5)
    last = Perturber(eps=0.2, steps=20, step_size=0.01).run(peaked, origin)
    best = Perturber(eps=0.2, steps=20, step_size=0.01, keep_best=True).run(peaked, origin)
    assert float(peaked(best.images, None)) >= float(peaked(last.images, None))
    assert float(peaked(best.images, None)) > -1e-4


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda images, g: images.sum(), "shape"),
        (lambda images, g: images.detach().flatten(1).sum(dim=1), "autograd"),
        (lambda images, g: images.flatten(1).sum(dim=1) * math.nan, "non-finite"),
        (lambda images, g: [0.0], "torch.Tensor"),
    ],
)
def test_objective_contract_is_checked_on_the_first_step(bad, message):
    with pytest.raises(ObjectiveError, match=message):
        Perturber(eps=0.1, steps=2).run(bad, torch.rand(2, 3, 4, 4))


@pytest.mark.parametrize(
    "kwargs",
    [{"eps": -1}, {"norm": "l1"}, {"steps": -3}, {"step_rule": "momentum"}, {"schedule": "exp"}, {"samples_per_step": 0}],
)
def test_bad_settings_are_named(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(InvalidArgumentError, match=name):
        PerturbConfig(**kwargs)


def test_bad_images_and_masks_are_named():
    engine = Perturber(eps=0.1, steps=1)
    objective = linear_objective(torch.ones(1, 3, 4, 4))
    with pytest.raises(InvalidArgumentError, match="images"):
        engine.run(objective, torch.rand(1, 3, 4, 4) * 2)
    with pytest.raises(InvalidArgumentError, match="images"):
        engine.run(objective, torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(MaskError, match="does not fit"):
        engine.run(objective, torch.rand(1, 3, 4, 4), mask=torch.ones(1, 1, 5, 4))
    with pytest.raises(MaskError, match="empty"):
        engine.run(objective, torch.rand(1, 3, 4, 4), mask=torch.zeros(1, 1, 4, 4))


def test_evaluate_objective_uses_common_random_numbers():
    def noisy(images, generator):
        return images.flatten(1).sum(dim=1) + torch.randn(images.shape[0], generator=generator)

    images = torch.rand(3, 1, 2, 2)
    assert torch.equal(evaluate_objective(noisy, images, samples=4, seed=1), evaluate_objective(noisy, images, samples=4, seed=1))


def test_parameter_vectors_without_bounds():
    """Parameter-space attacks reuse the engine on flat vectors with bounds=None."""
    vectors = torch.randn(3, 50) * 10
    result = Perturber(eps=1.0, norm="l2", steps=5, step_size=0.5, bounds=None).run(
        lambda v, g: v.sum(dim=1), vectors
    )
    assert torch.allclose(norm_of(result.delta, "l2"), torch.ones(3), atol=1e-5)


def test_progress_callback_sees_every_step():
    seen = []
    Perturber(eps=0.1, steps=4, progress=seen.append).run(linear_objective(torch.ones(1, 1, 2, 2)), torch.rand(1, 1, 2, 2))
    assert [info.step for info in seen] == [1, 2, 3, 4]


def test_init_delta_continues_a_run():
    """Two runs of 3 steps chained through init_delta equal one run of 6 (deterministic objective)."""
    weights = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    origin = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(4))
    six = Perturber(eps=0.05, steps=6, step_size=0.005).run(linear_objective(weights), origin)
    first = Perturber(eps=0.05, steps=3, step_size=0.005).run(linear_objective(weights), origin)
    second = Perturber(eps=0.05, steps=3, step_size=0.005).run(linear_objective(weights), origin, init_delta=first.delta)
    assert torch.allclose(six.delta, second.delta)
    with pytest.raises(InvalidArgumentError, match="init_delta"):
        Perturber(eps=0.05, steps=1).run(linear_objective(weights), origin, init_delta=torch.zeros(2, 3, 4, 4))


# ---------------------------------------------- the callback, unconstrained mode, non-finite gradients (shared with invert)
def test_perturber_no_longer_hides_a_broken_graph():
    def broken(images, generator):  # the gradient of sqrt at 0 is inf, in every draw
        return images.flatten(1).sum(dim=1) + (images - images.detach()).flatten(1).abs().sum(dim=1).sqrt()

    images = torch.full((1, 1, 2, 2), 0.5)
    with pytest.raises(ObjectiveError, match="'images'"):
        Perturber(eps=0.1, steps=1, nonfinite="raise").run(broken, images)
    with pytest.raises(ObjectiveError, match="every draw"):  # the default tolerates a draw, not a broken graph
        Perturber(eps=0.1, steps=10).run(broken, images)


class _InfiniteGradient(torch.autograd.Function):
    """Identity forward, infinite backward: a backward-pass overflow with a finite loss."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * math.inf


def test_perturber_skips_a_rare_bad_draw_and_counts_it():
    draws = []

    def sometimes(images, generator):
        draws.append(1)
        if len(draws) == 2:  # one overflowing draw of four, as an fp16 backward pass may have
            images = _InfiniteGradient.apply(images)
        return images.flatten(1).sum(dim=1)

    result = Perturber(eps=0.1, steps=2, step_size=0.05, samples_per_step=2).run(sometimes, torch.full((1, 1, 2, 2), 0.5))
    assert result.skipped_draws == 1
    assert torch.allclose(result.delta, torch.full((1, 1, 2, 2), 0.1))  # both steps still went up


def test_perturber_callback_sees_the_iterate_and_stops():
    seen = []

    def on_step(info):
        seen.append(info.iterate)
        return info.step == 3

    origin = torch.full((1, 1, 2, 2), 0.5)
    result = Perturber(eps=0.5, steps=10, step_size=0.01, progress=on_step).run(lambda x, g: x.flatten(1).sum(dim=1), origin)
    assert result.steps_run == 3 and result.stopped_early and len(seen) == 3
    assert torch.equal(seen[-1], result.images)
    assert torch.allclose(seen[0], origin + 0.01)


def test_perturber_unconstrained_signed_adam_and_milestones():
    target = torch.full((1, 1, 2, 2), 3.0)
    config = PerturbConfig(eps=None, bounds=None, step_size=0.2, steps=200, step_rule="signed-adam", minimize=True,
                           schedule="multistep", milestones=(0.5, 0.75))
    result = Perturber(config).run(lambda x, g: (x - target).pow(2).flatten(1).sum(dim=1), torch.zeros(1, 1, 2, 2))
    assert torch.allclose(result.images, target, atol=0.05)
    with pytest.raises(InvalidArgumentError, match="step_size"):
        PerturbConfig(eps=None)
    assert PerturbConfig(eps=math.inf, step_size=0.1).eps is None
