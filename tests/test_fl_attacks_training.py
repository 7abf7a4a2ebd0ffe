"""Training-time attacks: poisoned batches, triggers, parameter-space projections, final transforms."""

from __future__ import annotations

import pytest
import torch

from artshield.engine.budget import Budget
from artshield.errors import InvalidArgumentError
from artshield.fl_bridge.attacks.base import AttackContext
from artshield.fl_bridge.attacks.registry import make_attack
from artshield.fl_bridge.attacks.training import (
    DBA,
    EdgeCasePGD,
    LabelFlip,
    Neurotoxin,
    PixelTrigger,
    Scaling,
    image_view,
    rotate180,
)
from artshield.fl_bridge.updates import ParameterLayout


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(n: int = 40, shape=(1, 8, 8), classes: int = 4, seed: int = 0):
    g = gen(seed)
    images = torch.rand(n, *shape, generator=g) * 0.5
    labels = torch.arange(n) % classes
    return images, labels


def ctx(d: int, previous=None) -> AttackContext:
    return AttackContext(own=torch.zeros(1, d), benign=None, global_vector=torch.zeros(d), num_clients=10,
                         server_round=2, generator=gen(), layout=ParameterLayout({"w": (d,)}),
                         previous_global_delta=previous)


# ---------------------------------------------------------------------------------------------- label flip
def test_labelflip_source_to_target():
    images, labels = batch()
    attack = LabelFlip(source=2, target=3)
    assert attack.targeted
    out_images, out = attack.poison_batch(images, labels, gen())
    assert out_images is images
    assert torch.equal(out[labels == 2], torch.full_like(out[labels == 2], 3))
    assert torch.equal(out[labels != 2], labels[labels != 2])
    test_images, test_labels = attack.backdoor(images, labels)
    assert len(test_images) == int((labels == 2).sum()) and bool((test_labels == 3).all())
    assert torch.equal(test_images, images[labels == 2])


def test_labelflip_fraction_all_to_one_and_permutation():
    images, labels = batch(400)
    _, half = LabelFlip(source=1, target=0, fraction=0.5).poison_batch(images, labels, gen(1))
    flipped = int(((labels == 1) & (half == 0)).sum())
    assert 30 < flipped < 70  # about half of the 100 source samples
    _, again = LabelFlip(source=1, target=0, fraction=0.5).poison_batch(images, labels, gen(1))
    assert torch.equal(half, again)
    _, all_to_one = LabelFlip(source=None, target=3).poison_batch(images, labels, gen())
    assert bool((all_to_one == 3).all())
    perm = LabelFlip(source=None, target=None, num_classes=4)
    assert not perm.targeted and perm.backdoor(images, labels) is None
    _, out = perm.poison_batch(images, labels, gen())
    assert torch.equal(out, 3 - labels)
    with pytest.raises(InvalidArgumentError, match="target"):
        LabelFlip(source=1, target=7, num_classes=5)


# ---------------------------------------------------------------------------------------------- triggers and DBA
@pytest.mark.parametrize("shape", [(1, 8, 8), (64,), (3, 32, 32), (3 * 32 * 32,), (28, 28)])
def test_dba_parts_union_is_the_global_trigger(shape):
    zeros = torch.zeros(2, *shape)
    trigger = PixelTrigger("dba", parts=4)
    full = trigger.stamp(zeros) != 0
    parts = [trigger.stamp(zeros, part) != 0 for part in range(4)]
    union = torch.stack(parts).any(0)
    assert torch.equal(union, full)
    assert int(torch.stack(parts).sum(0).max()) == 1  # the parts do not overlap
    assert all(p.any() for p in parts)
    assert full.shape == zeros.shape


def test_dba_client_stamps_its_part_and_relabels():
    images, labels = batch(32)
    attack = DBA(parts=4, target=0, fraction=1.0)
    trigger = attack.trigger.masks(8, 8)
    for client in range(6):
        out, out_labels = attack.poison_batch(images, labels, gen(), client_index=client)
        changed = (out != images).any(0)[0]
        assert bool((changed & ~trigger[client % 4]).sum() == 0)  # only this part's pixels
        assert bool((out[:, 0][:, trigger[client % 4]] == 1.0).all())
        assert bool((out_labels == 0).all())
    partial, partial_labels = DBA(fraction=0.25).poison_batch(images, labels, gen(), client_index=1)
    assert int((partial != images).flatten(1).any(1).sum()) == 8
    test_images, test_labels = attack.backdoor(images, labels)
    assert len(test_images) == int((labels != 0).sum()) and bool((test_labels == 0).all())
    assert bool((test_images[:, 0][:, trigger.any(0)] == 1.0).all())


def test_dba_trigger_that_does_not_fit_is_refused():
    with pytest.raises(InvalidArgumentError, match="dba"):
        DBA(size=6).poison_batch(*batch(4), gen())
    with pytest.raises(InvalidArgumentError, match="dba"):
        DBA().poison_batch(torch.zeros(4, 7), torch.zeros(4, dtype=torch.long), gen())


def test_image_view_and_rotation():
    x = torch.arange(2 * 64, dtype=torch.float32).view(2, 64)
    assert image_view(x, "t").shape == (2, 1, 8, 8)
    rotated = rotate180(x, "t")
    assert torch.equal(rotated, x.flip(-1))  # a flattened one-channel image turned upside down
    assert torch.equal(rotate180(rotated, "t"), x)


# ---------------------------------------------------------------------------------------------- scaling
def test_scaling_multiplies_the_delta_and_optionally_backdoors():
    delta = torch.randn(50, generator=gen())
    attack = Scaling()
    torch.testing.assert_close(attack.finalize(delta, ctx(50)), 20 * delta)
    assert not attack.targeted and attack.backdoor(*batch()) is None
    images, labels = batch()
    assert attack.poison_batch(images, labels, gen()) == (images, labels)
    backdoored = Scaling(scale=5, target=1, fraction=0.5)
    assert backdoored.targeted
    out, out_labels = backdoored.poison_batch(images, labels, gen())
    assert int((out != images).flatten(1).any(1).sum()) == 20 and int((out_labels != labels).sum()) <= 20


# ---------------------------------------------------------------------------------------------- edge-case PGD
def test_edge_pgd_projection_keeps_the_model_in_the_ball():
    g = torch.randn(1000, generator=gen(1))
    far = g + 3 * torch.randn(1000, generator=gen(2))
    attack = EdgeCasePGD(eps=0.25)
    out = attack.constrain(far, g)
    assert float((out - g).norm()) == pytest.approx(0.25, rel=1e-5)
    # the same as the engine's L2 budget on the flattened difference
    expected = Budget(0.25, "l2", bounds=None).project(g[None], (far - g)[None])[0]
    torch.testing.assert_close(out - g, expected)
    near = g + 0.001 * torch.randn(1000, generator=gen(3))
    torch.testing.assert_close(attack.constrain(near, g), near)
    linf = EdgeCasePGD(eps=0.01, norm="linf").constrain(far, g)
    assert float((linf - g).abs().max()) <= 0.01 + 1e-7


def test_edge_pgd_local_training_stays_within_eps():
    """A few SGD steps of a softmax model on poisoned batches, with `constrain` after each step."""
    torch.manual_seed(0)
    layout = ParameterLayout({"weight": (4, 64), "bias": (4,)})
    global_vector = 0.01 * torch.randn(layout.size, generator=gen(4))
    attack = EdgeCasePGD(eps=0.1, source=0, target=1, scale=3.0)
    vector = global_vector.clone()
    for step in range(20):
        images, labels = batch(32, shape=(64,), seed=step)
        images, labels = attack.poison_batch(images, labels, gen(step))
        w = vector.clone().requires_grad_(True)
        params = layout.unflatten(w)
        loss = torch.nn.functional.cross_entropy(images @ params["weight"].T + params["bias"], labels)
        (grad,) = torch.autograd.grad(loss, w)
        vector = attack.constrain(vector - 1.0 * grad, global_vector)
        assert float((vector - global_vector).norm()) <= 0.1 + 1e-6
    sent = attack.finalize(vector - global_vector, ctx(layout.size))
    assert float(sent.norm()) <= 3 * 0.1 + 1e-5
    assert float(sent.norm()) > 0.25  # training pushed it to the border, then it was scaled


def test_edge_pgd_poisoned_batch_holds_rotated_source_images_labelled_target():
    images, labels = batch(40)
    attack = EdgeCasePGD(source=2, target=3, fraction=0.5)
    out, out_labels = attack.poison_batch(images, labels, gen())
    changed = (out_labels != labels) | (out != images).flatten(1).any(1)
    assert int((out_labels == 3).sum()) >= 20
    sources = rotate180(images[labels == 2], "t")
    for row in out[changed]:
        assert any(torch.equal(row, s) for s in sources)
    no_source = labels.clone()
    no_source[no_source == 2] = 0
    same_images, same_labels = attack.poison_batch(images, no_source, gen())
    assert same_images is images and same_labels is no_source
    test_images, test_labels = attack.backdoor(images, labels)
    torch.testing.assert_close(test_images, sources)
    assert bool((test_labels == 3).all())


# ---------------------------------------------------------------------------------------------- Neurotoxin
def test_neurotoxin_finalize_touches_no_top_k_coordinate():
    d = 1000
    previous = torch.randn(d, generator=gen(1))
    top = previous.abs().topk(100).indices
    attack = Neurotoxin(ratio=0.1, eps=0.5)
    delta = torch.randn(d, generator=gen(2))
    sent = attack.finalize(delta, ctx(d, previous))
    assert bool((sent[top] == 0).all())
    assert float(sent.norm()) <= 0.5 + 1e-6
    others = torch.ones(d, dtype=torch.bool)
    others[top] = False
    # outside the mask the delta is only scaled down (the L2 projection)
    scale = float(sent[others].norm() / delta[others].norm())
    torch.testing.assert_close(sent[others], scale * delta[others])
    unbounded = Neurotoxin(ratio=0.1, eps=None).finalize(delta, ctx(d, previous))
    torch.testing.assert_close(unbounded[others], delta[others])
    # the first round: nothing to mask
    torch.testing.assert_close(Neurotoxin(eps=None).finalize(delta, ctx(d)), delta)


def test_neurotoxin_constrain_masks_from_the_global_models_it_has_seen():
    d = 500
    g0 = torch.randn(d, generator=gen(1))
    g1 = g0 + torch.randn(d, generator=gen(2))
    top = (g1 - g0).abs().topk(50).indices
    attack = Neurotoxin(ratio=0.1, eps=None)
    step = torch.randn(d, generator=gen(3))
    first = attack.constrain(g0 + step, g0)  # round 1: no previous delta, nothing masked
    torch.testing.assert_close(first, g0 + step)
    second = attack.constrain(g1 + step, g1)
    assert bool((second[top] == g1[top]).all())
    assert int((second != g1).sum()) == d - 50
    again = attack.constrain(g1 + 2 * step, g1)  # same round, same mask
    assert bool((again[top] == g1[top]).all())
    images, labels = batch()
    out, out_labels = attack.poison_batch(images, labels, gen())
    assert int((out_labels != labels).sum()) > 0 and bool((out_labels[out_labels != labels] == 0).all())


def test_training_attacks_through_the_registry():
    assert isinstance(make_attack("edge-pgd", eps=0.083, scale=50), EdgeCasePGD)
    assert make_attack("scaling").scale == 20
    assert make_attack("neurotoxin").ratio == 0.1
    assert make_attack("labelflip", source=None, target=None, num_classes=10).targeted is False
