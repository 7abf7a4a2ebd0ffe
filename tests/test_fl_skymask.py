"""SkyMask on a tiny softmax regression whose root loss is computed from the parameter vector."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from artshield.errors import InvalidArgumentError
from artshield.fl_bridge.defenses.base import RoundUpdates
from artshield.fl_bridge.defenses.skymask import SkyMask, masked_vector, pca_2d
from artshield.fl_bridge.updates import ParameterLayout

FEATURES, CLASSES = 24, 4
LAYOUT = ParameterLayout({"weight": (CLASSES, FEATURES), "bias": (CLASSES,)})
D = LAYOUT.size  # 100


def _logits(vector: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    params = LAYOUT.unflatten(vector)
    return x @ params["weight"].T + params["bias"]


def _make_data(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    teacher = torch.linspace(-1.5, 1.5, CLASSES * FEATURES).reshape(CLASSES, FEATURES).roll(3, 1)
    x = torch.randn(count, FEATURES, generator=generator)
    return x, (x @ teacher.T).argmax(1)


def _train(vector: torch.Tensor, x: torch.Tensor, y: torch.Tensor, steps: int = 5, lr: float = 0.5) -> torch.Tensor:
    v = vector.clone().requires_grad_(True)
    for _ in range(steps):
        (grad,) = torch.autograd.grad(F.cross_entropy(_logits(v, x), y), v)
        v = (v - lr * grad).detach().requires_grad_(True)
    return (v - vector).detach()


class LinearRoot:
    """A fake RootAccess: 60 clean samples, a softmax regression on the parameter vector."""

    def __init__(self, seed: int = 100):
        self.x, self.y = _make_data(60, torch.Generator().manual_seed(seed))
        self.updates = 0

    def update(self, global_vector: torch.Tensor) -> torch.Tensor:
        self.updates += 1
        return _train(global_vector, self.x, self.y)

    def loss(self, vector: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(_logits(vector, self.x), self.y)


def _round(num_clients=20, num_malicious=4, attack="signflip", seed=0):
    gen = torch.Generator().manual_seed(seed)
    global_vector = 0.1 * torch.randn(D, generator=gen)
    deltas = []
    for _ in range(num_clients):
        x, y = _make_data(30, gen)
        deltas.append(_train(global_vector, x, y))
    deltas = torch.stack(deltas)
    if attack == "signflip":
        deltas[:num_malicious] = -10 * deltas[:num_malicious]
    elif attack == "random":
        scale = deltas.norm(dim=1).mean() / D**0.5
        deltas[:num_malicious] = 10 * scale * torch.randn(num_malicious, D, generator=gen)
    else:
        assert attack == "none"
    sizes = torch.full((num_clients,), 30.0)
    sizes[num_malicious:] += torch.arange(num_clients - num_malicious, dtype=torch.float32)  # unequal weights
    return RoundUpdates(deltas, sizes, global_vector, 1, list(range(num_clients)), LAYOUT)


def _rates(accepted: torch.Tensor, num_malicious: int) -> tuple[float, float]:
    tpr = float((~accepted[:num_malicious]).float().mean())
    fpr = float((~accepted[num_malicious:]).float().mean())
    return tpr, fpr


@pytest.mark.parametrize("attack", ["signflip", "random"])
def test_rejects_the_malicious_fifth_and_averages_the_rest(attack):
    updates = _round(attack=attack)
    result = SkyMask(LinearRoot())(updates)
    tpr, fpr = _rates(result.accepted, 4)
    assert tpr == 1.0 and fpr <= 0.125  # at most 2 of 16 honest clients dropped
    kept = result.accepted
    weights = updates.num_examples[kept] / updates.num_examples[kept].sum()
    assert torch.allclose(result.delta, (weights[:, None] * updates.deltas[kept]).sum(0), atol=1e-6)
    benign_mean = updates.deltas[4:].mean(0)
    fedavg = updates.deltas.mean(0)
    assert (result.delta - benign_mean).norm() < 0.2 * benign_mean.norm()
    assert (fedavg - benign_mean).norm() > benign_mean.norm()  # the attack matters without a defense
    m = result.metrics
    assert m["cluster_benign"] == float(kept.sum()) and m["cluster_benign"] + m["cluster_malicious"] == 20
    assert m["seconds_masks"] > 0 and m["fallback"] == 0.0 and m["server_only"] == 0.0
    assert m["mask_loss_end"] < m["mask_loss_start"]  # the masks were trained to lower the root loss


def test_masked_model_is_the_references_weight_form():
    gen = torch.Generator().manual_seed(3)
    masks, deltas, g = torch.randn(5, D, generator=gen), torch.randn(5, D, generator=gen), torch.randn(D, generator=gen)
    models = g + deltas  # the client models w_i the reference's mask net mixes
    sig = torch.sigmoid(masks)
    reference = (sig * models).sum(0) / sig.sum(0)
    assert torch.allclose(masked_vector(masks, deltas, g), reference, atol=1e-5)


def test_pca_scores_match_scikit_learn_up_to_sign():
    from sklearn.decomposition import PCA

    points = (torch.rand(12, 40, generator=torch.Generator().manual_seed(4)) > 0.5).float()
    ours = pca_2d(points)
    theirs = PCA(n_components=2).fit_transform(points.numpy())
    for axis in range(2):
        sign = np.sign(ours[:, axis] @ theirs[:, axis])
        assert np.allclose(sign * ours[:, axis], theirs[:, axis], atol=1e-4)


def test_same_seed_same_answer():
    updates = _round(attack="random", seed=5)
    first, second = SkyMask(LinearRoot(), seed=7)(updates), SkyMask(LinearRoot(), seed=7)(updates)
    assert torch.equal(first.accepted, second.accepted) and torch.equal(first.delta, second.delta)


def test_reference_step_size_also_works_here():
    # lr 1e7 with an element-wise clamp at 1e-7 (the reference's CNN setting): a sign step of one logit
    result = SkyMask(LinearRoot(), mask_lr=1e7, clip=1e-7)(_round())
    assert _rates(result.accepted, 4) == (1.0, 0.0)


@pytest.mark.parametrize(("attack", "num_malicious"), [("signflip", 10), ("signflip", 16), ("random", 10)])
def test_majority_malicious_when_the_server_update_anchors(attack, num_malicious):
    # 50 % and 80 % malicious: the server's own mask decides which cluster is benign (the paper's claim)
    updates = _round(num_malicious=num_malicious, attack=attack, seed=1)
    result = SkyMask(LinearRoot())(updates)
    assert _rates(result.accepted, num_malicious) == (1.0, 0.0)
    benign_mean = updates.deltas[num_malicious:].mean(0)
    assert (result.delta - benign_mean).norm() < 0.1 * benign_mean.norm()


def test_eighty_percent_random_updates_are_mostly_but_not_always_caught():
    # What holds (10 seeds measured): random updates do not form a cluster of their own, so at 80 % the
    # mixture sometimes puts a few of them with the benign clients: mean TPR 0.93, FPR 0. Here 14 of 16.
    updates = _round(num_malicious=16, attack="random", seed=1)
    tpr, fpr = _rates(SkyMask(LinearRoot())(updates).accepted, 16)
    assert fpr == 0.0 and 0.75 <= tpr < 1.0


def test_few_clients_fall_back_to_the_closest_mask():
    updates = _round(num_clients=2, num_malicious=1)
    result = SkyMask(LinearRoot())(updates)
    assert result.metrics["fallback"] == 1.0
    assert result.accepted.tolist() == [False, True]
    assert torch.allclose(result.delta, updates.deltas[1])


def test_identical_clients_are_all_kept():
    updates = _round(attack="none")
    updates.deltas[:] = updates.deltas[0]
    # the masks carry no signal between clients; the server's own mask is compared only by Hamming distance
    rule = SkyMask(LinearRoot())
    binary = torch.ones(6, D, dtype=torch.bool)
    benign, how = rule.classify(binary)
    assert benign.all() and how["fallback"] == 1.0
    result = rule(updates)
    assert result.accepted.all()
    assert torch.allclose(result.delta, updates.deltas[0], atol=1e-6)


def test_no_client_in_the_servers_cluster_uses_the_server_update_or_nothing():
    updates = _round(attack="none")

    class Lonely(SkyMask):
        def classify(self, binary):  # as if the mixture had put the server alone
            return torch.cat([torch.zeros(binary.shape[0] - 1, dtype=torch.bool), torch.ones(1, dtype=torch.bool)]), {}

    root = LinearRoot()
    result = Lonely(root)(updates)
    assert not result.accepted.any() and result.metrics["server_only"] == 1.0
    assert torch.allclose(result.delta, root.update(updates.global_vector))
    assert torch.equal(Lonely(LinearRoot(), empty="zero")(updates).delta, torch.zeros(D))


def test_an_overflowing_update_is_dropped_not_everyone_kept():
    updates = _round(attack="none")
    updates.deltas[:2] = 3e38  # finite, but the masked mixture overflows and the root loss is not finite
    result = SkyMask(LinearRoot())(updates)
    assert result.metrics["dropped_nonfinite"] == 2.0 and not result.accepted[:2].any()
    assert torch.isfinite(result.delta).all() and result.accepted[2:].any()  # (no attack: the mixture still splits)


def test_bad_settings_are_refused_with_the_setting_named():
    root = LinearRoot()
    for kwargs, name in [({"mask_lr": 0}, "mask_lr"), ({"mask_lr": "fast"}, "mask_lr"), ({"threshold": 1.0}, "threshold"),
                         ({"epochs": 0}, "epochs"), ({"empty": "all"}, "empty"), ({"clip_quantile": 0}, "clip_quantile")]:
        with pytest.raises(InvalidArgumentError, match=name):
            SkyMask(root, **kwargs)
    with pytest.raises(InvalidArgumentError, match="root"):
        SkyMask(None)
    config = SkyMask(root).config()
    assert config["mask_lr"] == "auto" and config["epochs"] == 20 and config["threshold"] == 0.5
    assert SkyMask.name == "skymask" and SkyMask.selects
