"""Model-poisoning attacks on small hand-built update matrices, and the attack registry."""

from __future__ import annotations

import math
import sys
import types
from statistics import NormalDist

import pytest
import torch

from artshield.errors import InvalidArgumentError
from artshield.fl_bridge.attacks.base import AttackContext, ModelPoisoning, TrainingAttack
from artshield.fl_bridge.attacks.model_poisoning import (
    IPM,
    LIE,
    FangKrum,
    FangTrim,
    Gaussian,
    MinMax,
    MinSum,
    SignFlip,
    krum_select,
    largest_feasible,
    lie_z,
    pairwise_sq_distances,
)
from artshield.fl_bridge.attacks.registry import ATTACKS, describe, make_attack, settings
from artshield.fl_bridge.updates import ParameterLayout


def context(own: torch.Tensor, benign: torch.Tensor | None, seed: int = 0, num_clients: int | None = None):
    d = own.shape[1]
    m = 0 if benign is None else benign.shape[0]
    return AttackContext(
        own=own, benign=benign, global_vector=torch.zeros(d), num_clients=num_clients or own.shape[0] + m,
        server_round=1, generator=torch.Generator().manual_seed(seed), layout=ParameterLayout({"w": (d,)}))


def updates(rows: int, d: int, seed: int, mean: float = 0.3, spread: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return mean + spread * torch.randn(rows, d, generator=g)


# ---------------------------------------------------------------------------------------------- LIE
def test_lie_z_matches_baruch():
    # n = 20, f = 4: s = ⌊11⌋ − 4 = 7 supporters, z = Φ⁻¹((20 − 4 − 7)/(20 − 4)) = Φ⁻¹(0.5625)
    assert lie_z(20, 4) == pytest.approx(NormalDist().inv_cdf(9 / 16))
    assert lie_z(20, 4) == pytest.approx(0.157311, abs=1e-6)
    # the paper's Algorithm 1: Φ⁻¹((n − s)/n), s = 7 supporters at n = 20, f = 4
    assert lie_z(20, 4, "paper") == pytest.approx(NormalDist().inv_cdf(13 / 20))
    # n = 50, f = 10: s = 16, Φ⁻¹(24/40)
    assert lie_z(50, 10) == pytest.approx(NormalDist().inv_cdf(0.6))
    # the edges stay finite: a malicious majority, and n = 2
    assert math.isfinite(lie_z(10, 7)) and lie_z(10, 7) > 3
    assert math.isfinite(lie_z(2, 1))


def test_lie_is_mean_plus_z_std_of_the_benign():
    benign, own = updates(16, 40, 1), updates(4, 40, 2)
    out = LIE().craft(context(own, benign))
    z = NormalDist().inv_cdf(9 / 16)
    expected = benign.mean(0) + z * benign.std(0, correction=0)
    assert out.shape == (4, 40)
    torch.testing.assert_close(out, expected.expand(4, -1))
    assert LIE.needs_benign and LIE().needs_benign


def test_lie_own_knowledge_and_given_z():
    benign, own = updates(16, 10, 1), updates(4, 10, 2)
    attack = LIE(z=1.5, knowledge="own")
    assert attack.needs_benign is False
    out = attack.craft(context(own, benign))
    torch.testing.assert_close(out[0], own.mean(0) + 1.5 * own.std(0, correction=0))


def test_omniscient_falls_back_to_own_without_benign():
    own = updates(3, 10, 2)
    out = LIE(z=1.0).craft(context(own, None, num_clients=3))
    torch.testing.assert_close(out[0], own.mean(0) + own.std(0, correction=0))


# ---------------------------------------------------------------------------------------------- IPM, sign-flip, Gaussian
@pytest.mark.parametrize("eps", [0.5, 100.0])
def test_ipm_is_minus_eps_mean(eps):
    benign, own = updates(8, 12, 1), updates(2, 12, 2)
    out = IPM(epsilon=eps).craft(context(own, benign))
    torch.testing.assert_close(out, (-eps * benign.mean(0)).expand(2, -1))
    assert IPM().epsilon == 0.5


def test_signflip_and_gaussian():
    own = updates(3, 1000, 2)
    torch.testing.assert_close(SignFlip().craft(context(own, None)), -own)
    torch.testing.assert_close(SignFlip(scale=4).craft(context(own, None)), -4 * own)
    assert not SignFlip.needs_benign and not Gaussian.needs_benign
    noise = Gaussian(sigma=0.5).craft(context(own, None, seed=3))
    assert noise.shape == own.shape
    assert noise.std().item() == pytest.approx(0.5, rel=0.05) and abs(noise.mean().item()) < 0.02
    torch.testing.assert_close(noise, Gaussian(sigma=0.5).craft(context(own, None, seed=3)))


# ---------------------------------------------------------------------------------------------- min-max / min-sum
def closed_form_gamma(ref: torch.Tensor, p: torch.Tensor, kind: str) -> float:
    """The largest γ with the min-max / min-sum condition, from the quadratic in γ (float64)."""
    ref, p = ref.double(), p.double()
    mu = ref.mean(0)
    a = ref - mu
    pair = torch.cdist(ref, ref) ** 2
    pp = float(p @ p)
    if kind == "minmax":
        bound = float(pair.max())
        # ‖a_i‖² + 2γ a_i·p + γ²‖p‖² ≤ bound for every i: the smallest of the larger roots
        b = 2 * (a @ p)
        c = (a * a).sum(1) - bound
        roots = (-b + torch.sqrt(b * b - 4 * pp * c)) / (2 * pp)
        return float(roots.min())
    bound = float(pair.sum(1).max())
    b = float(2 * (a @ p).sum())
    c = float((a * a).sum()) - bound
    A = pp * ref.shape[0]
    return (-b + math.sqrt(b * b - 4 * A * c)) / (2 * A)


@pytest.mark.parametrize("cls, kind", [(MinMax, "minmax"), (MinSum, "minsum")])
@pytest.mark.parametrize("direction", ["std", "unit", "sign"])
def test_min_attacks_stay_within_benign_spread_with_maximal_gamma(cls, kind, direction):
    benign, own = updates(10, 30, 5, mean=0.5, spread=0.2), updates(3, 30, 6)
    attack = cls(direction=direction, gamma_init=10.0, tolerance=1e-6)
    out = attack.craft(context(own, benign))
    assert out.shape == (3, 30) and torch.equal(out[0], out[2])
    mal = out[0].double()
    dist_sq = ((benign.double() - mal) ** 2).sum(1)
    pair = torch.cdist(benign.double(), benign.double()) ** 2
    if kind == "minmax":
        assert dist_sq.max() <= pair.max() * (1 + 1e-5)
    else:
        assert dist_sq.sum() <= pair.sum(1).max() * (1 + 1e-5)
    mean = benign.mean(0)
    p = {"std": benign.std(0, correction=0), "unit": mean / mean.norm(), "sign": mean.sign()}[direction]
    torch.testing.assert_close(out[0], mean - attack.last_gamma * p)
    best = closed_form_gamma(benign, p, kind)
    assert best > 0
    assert attack.last_gamma == pytest.approx(min(best, 20.0), abs=1e-4)


def test_min_search_is_capped_at_twice_gamma_init():
    benign, own = updates(10, 30, 5, mean=0.5, spread=0.2), updates(3, 30, 6)
    attack = MinMax(direction="unit", gamma_init=0.01)
    attack.craft(context(own, benign))
    assert attack.last_gamma <= 0.02 and attack.last_gamma == pytest.approx(0.02, abs=1e-4)


def test_largest_feasible_binary_search():
    assert largest_feasible(lambda g: g <= 3.7, 10.0, 1e-6) == pytest.approx(3.7, abs=1e-5)
    assert largest_feasible(lambda g: g <= 0, 10.0, 1e-6) == 0.0


# ---------------------------------------------------------------------------------------------- Fang
def reference_krum(x: torch.Tensor, f: int) -> int:
    d = torch.cdist(x.double(), x.double()) ** 2
    n = x.shape[0]
    scores = []
    for i in range(n):
        others = torch.cat([d[i, :i], d[i, i + 1:]])
        scores.append(float(others.sort().values[: n - f - 2].sum()))
    return int(torch.tensor(scores).argmin())


def test_pairwise_and_krum_helpers_agree_with_direct_computation():
    x = updates(9, 20, 3)
    # float32 products, accumulated in float64 (the shared geometry helper's precision)
    torch.testing.assert_close(pairwise_sq_distances(x), torch.cdist(x.double(), x.double()) ** 2, rtol=1e-5, atol=1e-5)
    assert krum_select(pairwise_sq_distances(x), 2) == reference_krum(x, 2)


def test_fang_krum_crafted_copy_is_selected_by_krum():
    m, f, d = 12, 3, 30
    benign, own = updates(m, d, 7, mean=0.1), updates(f, d, 8, mean=0.1)
    attack = FangKrum()
    out = attack.craft(context(own, benign))
    assert attack.last_selected is True
    s = benign.mean(0).sign()
    torch.testing.assert_close(out, (-attack.last_lambda * s).expand(f, -1))
    # an independent Krum over what the server receives picks a crafted copy
    assert reference_krum(torch.cat([benign, out]), f) >= m
    # λ was reached by halving the paper's upper bound
    bound = FangKrum.lambda_bound(pairwise_sq_distances(benign), benign.norm(dim=1).double(), m + f, f, d)
    ratio = math.log2(bound / attack.last_lambda)
    assert ratio == pytest.approx(round(ratio), abs=1e-6) and ratio >= 0


def test_fang_krum_own_knowledge_and_threshold():
    benign, own = updates(12, 30, 7), updates(4, 30, 8)
    attack = FangKrum(knowledge="own", lambda_init=1.0)
    assert attack.needs_benign is False
    out = attack.craft(context(own, benign))
    torch.testing.assert_close(out[0], -attack.last_lambda * own.mean(0).sign())
    # the halving stops once λ falls below the threshold
    far = updates(12, 30, 9, mean=5.0, spread=0.01)
    stuck = FangKrum(lambda_init=1.0, threshold=1e-3)
    stuck.craft(context(own, far))
    assert stuck.last_selected is False and 5e-4 <= stuck.last_lambda < 1e-3


def test_fang_trim_full_knowledge_rule():
    benign = torch.tensor([[1.0, -1.0, -1.0, 1.0, 0.0],
                           [3.0, -3.0, 3.0, -3.0, 0.0]])
    # column:  mean 2 (up, min 1 > 0)  mean −2 (down, max −1 ≤ 0)  mean 1 (up, min −1 ≤ 0)  mean −1 (down, max 1 > 0)  mean 0
    low = torch.tensor([0.5, -1.0, -2.0, 1.0, 0.0])
    high = torch.tensor([1.0, -0.5, -1.0, 2.0, 0.0])
    own = torch.zeros(50, 5)
    out = FangTrim().craft(context(own, benign))
    assert out.shape == (50, 5)
    assert bool(((out >= low - 1e-6) & (out <= high + 1e-6)).all())
    assert out[:, :4].std(0).min() > 0.05  # independent draws per attacker
    torch.testing.assert_close(out, FangTrim().craft(context(own, benign)))  # seeded by the round generator


def test_fang_trim_partial_knowledge_rule():
    own = updates(6, 40, 3, mean=0.0)
    out = FangTrim(knowledge="own").craft(context(own, None))
    mu, sigma = own.mean(0), own.std(0, correction=0)
    up = mu > 0
    low = torch.where(up, mu - 4 * sigma, mu + 3 * sigma)
    high = torch.where(up, mu - 3 * sigma, mu + 4 * sigma)
    assert bool(((out >= low - 1e-5) & (out <= high + 1e-5)).all())


def test_needs_benign_flags():
    for name in ("lie", "ipm", "minmax", "minsum", "fang-krum", "fang-trim"):
        assert make_attack(name).needs_benign is True
        assert make_attack(name, knowledge="own").needs_benign is False
    assert make_attack("signflip").needs_benign is False and make_attack("gaussian").needs_benign is False


def test_vectorised_on_a_large_vector():
    benign, own = updates(20, 200_000, 1), updates(5, 200_000, 2)
    for name in ("lie", "minmax", "minsum", "fang-krum", "fang-trim"):
        out = make_attack(name).craft(context(own, benign))
        assert out.shape == own.shape and bool(torch.isfinite(out).all())


# ---------------------------------------------------------------------------------------------- registry
def test_registry_names_and_kinds():
    assert set(ATTACKS) == {"lie", "ipm", "minmax", "minsum", "fang-krum", "fang-trim", "signflip", "gaussian",
                            "labelflip", "scaling", "edge-pgd", "dba", "neurotoxin", "pill"}
    for name in ATTACKS:
        if name == "pill":
            continue
        attack = make_attack(name)
        assert attack.name == name
        assert isinstance(attack, ModelPoisoning | TrainingAttack)
        info = describe(name)
        assert info["name"] == name and info["summary"] and isinstance(info["params"], dict)
    assert describe("minmax")["params"] == {"direction": "std", "gamma_init": 10.0, "tolerance": 1e-5,
                                            "knowledge": "omniscient"}
    assert describe("ipm")["params"]["epsilon"] == 0.5
    assert describe("dba")["kind"] == "training" and describe("dba")["targeted"] is True
    assert settings(make_attack("ipm", epsilon=100)) == {"epsilon": 100, "knowledge": "omniscient"}


@pytest.mark.parametrize("call, words", [
    (lambda: make_attack("nope"), ["nope"]),
    (lambda: make_attack("lie", zz=1), ["lie", "zz"]),
    (lambda: make_attack("ipm", epsilon=-1), ["ipm", "epsilon"]),
    (lambda: make_attack("ipm", epsilon=float("nan")), ["ipm", "epsilon"]),
    (lambda: make_attack("lie", z=True), ["lie", "z"]),
    (lambda: make_attack("minmax", direction="up"), ["minmax", "direction"]),
    (lambda: make_attack("minsum", gamma_init=0), ["minsum", "gamma_init"]),
    (lambda: make_attack("lie", knowledge="partial"), ["lie", "knowledge"]),
    (lambda: make_attack("fang-trim", b=1), ["fang-trim", "b"]),
    (lambda: make_attack("gaussian", sigma="big"), ["gaussian", "sigma"]),
    (lambda: make_attack("edge-pgd", eps=0), ["edge-pgd", "eps"]),
    (lambda: make_attack("edge-pgd", norm="l1"), ["edge-pgd", "norm"]),
    (lambda: make_attack("neurotoxin", ratio=1.5), ["neurotoxin", "ratio"]),
    (lambda: make_attack("dba", parts=0), ["dba", "parts"]),
    (lambda: make_attack("labelflip", source=None, target=None), ["labelflip", "num_classes"]),
    (lambda: make_attack("labelflip", source=2, target=2), ["labelflip", "source"]),
    (lambda: make_attack("labelflip", target=-1), ["labelflip", "target"]),
    (lambda: make_attack("scaling", scale=0), ["scaling", "scale"]),
])
def test_registry_errors_are_one_line_naming_attack_and_parameter(call, words):
    with pytest.raises(InvalidArgumentError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message


class FakePill(ModelPoisoning):
    name = "pill"

    def __init__(self, base, strength: float = 1.0):
        self.base, self.strength = base, strength

    def craft(self, context):
        return self.base.craft(context)


@pytest.fixture
def fake_pill(monkeypatch):
    module = types.ModuleType("artshield.fl_bridge.attacks.pill")
    module.Pill = FakePill
    monkeypatch.setitem(sys.modules, "artshield.fl_bridge.attacks.pill", module)


def test_pill_wraps_a_configured_base(fake_pill):
    pill = make_attack("pill", base="ipm", base_params={"epsilon": 100}, strength=2.0)
    assert isinstance(pill, FakePill) and pill.strength == 2.0
    assert isinstance(pill.base, IPM) and pill.base.epsilon == 100
    assert isinstance(make_attack("pill").base, LIE)
    assert describe("pill")["params"] == {"base": "lie", "base_params": {}, "strength": 1.0}
    for call, words in [
        (lambda: make_attack("pill", base="ipm", power=1), ["pill", "power"]),
        (lambda: make_attack("pill", base="ipm", base_params={"eps": 1}), ["ipm", "eps"]),
        (lambda: make_attack("pill", base="pill"), ["pill", "base"]),
        (lambda: make_attack("pill", base="nope"), ["nope"]),
        (lambda: make_attack("pill", base_params=[1]), ["pill", "base_params"]),
    ]:
        with pytest.raises(InvalidArgumentError) as caught:
            call()
        assert all(word in str(caught.value) for word in words)
