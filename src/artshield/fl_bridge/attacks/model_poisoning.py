"""Model-poisoning attacks: the malicious clients' deltas crafted from this round's updates.

Every attack works on stacked delta matrices (``own`` (f, d), ``benign`` (m, d)) with a handful of torch calls,
so a round at a million parameters costs a few matrix products. The formulas follow the papers (and
``vio1etus/FLPoison/attackers/*.py``, see ``shared/research/fl_bridge.md`` §3), written on *deltas*: the
round's global model is the origin, so Fang's ``w_Re − λ·s`` becomes ``−λ·s``.

Knowledge. The omniscient attacks (LIE, IPM, min-max, min-sum, Fang) estimate benign behaviour from the
benign deltas the experiment delivers (``knowledge="omniscient"``, the default, ``needs_benign`` True); with
``knowledge="own"`` they use the malicious clients' own honest deltas instead (the partial-knowledge variant
each paper describes, ``needs_benign`` False). When an omniscient attack meets a round without benign deltas
(every sampled client malicious) it falls back to its own ones (:attr:`AttackContext.reference`).

Every attacker sends the same crafted delta (Fang-Trim: independent draws), as the papers do.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from statistics import NormalDist
from typing import Any

import torch

from ...errors import InvalidArgumentError
from ..geometry import krum_scores, pairwise_sq_distances
from .base import AttackContext, ModelPoisoning

logger = logging.getLogger(__name__)

KNOWLEDGE = ("omniscient", "own")
DIRECTIONS = ("std", "unit", "sign")

# LIE's z_max comes from Φ⁻¹ of a ratio that reaches 0 or 1 at the edges (n = 2, or a malicious majority);
# it is clamped to this interval so that z stays finite (|z| <= 3.72).
LIE_CDF_CLAMP = (1e-4, 1 - 1e-4)


# ---------------------------------------------------------------------------------------------- checks
def check_number(attack: str, name: str, value: Any, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, integer: bool = False, allow_none: bool = False) -> Any:
    """`value` itself when it is a finite number in range, else a one-line :class:`InvalidArgumentError`."""
    if value is None and allow_none:
        return None
    kind = "an integer" if integer else "a number"
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    ok = ok and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if low_open else '>='} {low:g}")
        if high is not None:
            bounds.append(f"<= {high:g}")
        expected = kind + (" " + " and ".join(bounds) if bounds else "") + (" or None" if allow_none else "")
        raise InvalidArgumentError(f"attack `{attack}`: `{name}` must be {expected}, but is {value!r}.")
    return value


def check_choice(attack: str, name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise InvalidArgumentError(
            f"attack `{attack}`: `{name}` must be one of {', '.join(choices)}, but is {value!r}.")
    return value


# ---------------------------------------------------------------------------------------------- helpers
def mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-coordinate mean and population standard deviation (ddof 0, as FLPoison's ``np.std``) of the rows
    of `x` (faster than ``torch.std`` along dimension 0 on wide matrices)."""
    mean = x.mean(dim=0)
    return mean, (x - mean).square().mean(dim=0).sqrt()


def krum_select(sq_distances: torch.Tensor, num_byzantine: int) -> int:
    """Index Krum (Blanchard et al., 2017) selects from an (n, n) matrix of squared distances: the lowest
    Krum score, the first one on ties."""
    return int(torch.argmin(krum_scores(sq_distances, num_byzantine)))


def largest_feasible(feasible: Callable[[float], bool], gamma_init: float, tolerance: float) -> float:
    """Shejwalkar & Houmansadr's binary search for the largest γ with ``feasible(γ)`` (γ = 0 is assumed
    feasible): start at `gamma_init`, step `gamma_init`/2, move up after a success and down after a
    failure, halve the step, stop when the last success and the current γ differ by at most `tolerance`.
    The search reaches at most 2·`gamma_init`."""
    gamma, step, success = gamma_init, gamma_init / 2, 0.0
    while abs(success - gamma) > tolerance:
        if feasible(gamma):
            success = gamma
            gamma += step
        else:
            gamma -= step
        step /= 2
    return success


class _Estimating(ModelPoisoning):
    """Shared by the attacks that estimate benign behaviour: the `knowledge` option and the reference."""

    def __init__(self, knowledge: str = "omniscient"):
        self.knowledge = check_choice(self.name, "knowledge", knowledge, KNOWLEDGE)
        # An instance attribute shadows the class default: the partial-knowledge variant needs no benign deltas.
        self.needs_benign = knowledge == "omniscient"

    def reference(self, context: AttackContext) -> torch.Tensor:
        if self.knowledge == "own":
            return context.own
        if context.benign is None or not len(context.benign):
            logger.debug("%s: no benign deltas this round; estimating from the malicious clients' own.", self.name)
        return context.reference


def _repeat(vector: torch.Tensor, context: AttackContext) -> torch.Tensor:
    """The crafted (d,) delta, once per malicious client: (f, d) in the dtype and device of `own`."""
    return vector.to(context.own).unsqueeze(0).expand(context.num_malicious, -1).clone()


# ---------------------------------------------------------------------------------------------- LIE / ALIE
LIE_RULES = ("flpoison", "paper")


def lie_z(num_clients: int, num_malicious: int, rule: str = "flpoison") -> float:
    """Baruch et al.'s z_max: s = ⌊n/2 + 1⌋ − f supporters are needed, and z = Φ⁻¹(ratio) with
    ratio = (n − f − s)/(n − f) (``rule="flpoison"``: FLPoison's and Blades' form, the research note's, the
    default) or (n − s)/n (``rule="paper"``: the paper's Algorithm 1, a larger z: 0.385 against 0.157 at
    n = 20, f = 4).

    The ratio is clamped to :data:`LIE_CDF_CLAMP` so that z stays finite at the edges (n ≤ 2, or f ≥ n/2 + 1
    where the attackers need no benign supporter)."""
    n, f = int(num_clients), int(num_malicious)
    if n - f <= 0:
        return NormalDist().inv_cdf(LIE_CDF_CLAMP[1])
    s = math.floor(n / 2 + 1) - f
    ratio = (n - s) / n if rule == "paper" else (n - f - s) / (n - f)
    return NormalDist().inv_cdf(min(max(ratio, LIE_CDF_CLAMP[0]), LIE_CDF_CLAMP[1]))


class LIE(_Estimating):
    """A Little Is Enough (Baruch et al., NeurIPS 2019): every attacker sends μ + z·σ, with μ and σ the
    per-coordinate mean and (population) standard deviation of the reference deltas and z = z_max from n and
    f (:func:`lie_z`; `z_rule` picks FLPoison's or the paper's form) unless `z` is given."""

    name = "lie"
    needs_benign = True

    def __init__(self, z: float | None = None, knowledge: str = "omniscient", z_rule: str = "flpoison"):
        super().__init__(knowledge)
        self.z = check_number(self.name, "z", z, allow_none=True)
        self.z_rule = check_choice(self.name, "z_rule", z_rule, LIE_RULES)
        self.last_z: float | None = None

    def craft(self, context: AttackContext) -> torch.Tensor:
        ref = self.reference(context)
        z = self.z if self.z is not None else lie_z(context.num_clients, context.num_malicious, self.z_rule)
        self.last_z = float(z)
        mean, std = mean_std(ref)
        return _repeat(mean + z * std, context)


# ---------------------------------------------------------------------------------------------- IPM
class IPM(_Estimating):
    """Inner-product manipulation (Xie et al., UAI 2020): every attacker sends −ε·μ, μ the mean reference
    delta. ε = 0.5 keeps the aggregate's inner product with μ positive but small; ε = 100 flips it."""

    name = "ipm"
    needs_benign = True

    def __init__(self, epsilon: float = 0.5, knowledge: str = "omniscient"):
        super().__init__(knowledge)
        self.epsilon = check_number(self.name, "epsilon", epsilon, low=0, low_open=True)

    def craft(self, context: AttackContext) -> torch.Tensor:
        return _repeat(-self.epsilon * self.reference(context).mean(dim=0), context)


# ---------------------------------------------------------------------------------------------- min-max / min-sum
class _MinBase(_Estimating):
    """Shejwalkar & Houmansadr (NDSS 2021), AGR-agnostic: the crafted delta is μ − γ·p with p the
    perturbation direction (``"std"``: σ, the default; ``"unit"``: μ/‖μ‖; ``"sign"``: sign(μ)) and γ the
    largest value the binary search finds (:func:`largest_feasible`, from `gamma_init`, to `tolerance`)
    that keeps the crafted delta as close to the reference deltas as they are to each other."""

    needs_benign = True

    def __init__(self, direction: str = "std", gamma_init: float = 10.0, tolerance: float = 1e-5,
                 knowledge: str = "omniscient"):
        super().__init__(knowledge)
        self.direction = check_choice(self.name, "direction", direction, DIRECTIONS)
        self.gamma_init = check_number(self.name, "gamma_init", gamma_init, low=0, low_open=True)
        self.tolerance = check_number(self.name, "tolerance", tolerance, low=0, low_open=True)
        self.last_gamma: float | None = None

    def perturbation(self, centred: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        if self.direction == "std":
            return centred.square().mean(dim=0).sqrt()  # the population standard deviation
        if self.direction == "sign":
            return mean.sign()
        return mean / mean.norm().clamp_min(1e-12)

    def feasibility(self, sq_to_ref: Callable[[float], torch.Tensor], ref_sq: torch.Tensor) -> Callable[[float], bool]:
        raise NotImplementedError

    def craft(self, context: AttackContext) -> torch.Tensor:
        ref = self.reference(context)
        mean = ref.mean(dim=0)
        centred = ref - mean
        p = self.perturbation(centred, mean)
        # ‖μ − γp − b_i‖² = ‖a_i‖² + 2γ a_i·p + γ²‖p‖² with a_i = b_i − μ: every trial γ costs O(m), not O(md).
        a_sq = (centred * centred).sum(dim=1).double()
        a_p = (centred @ p).double()
        p_sq = float((p * p).sum())

        def sq_to_ref(gamma: float) -> torch.Tensor:
            return a_sq + 2 * gamma * a_p + gamma * gamma * p_sq

        feasible = self.feasibility(sq_to_ref, pairwise_sq_distances(centred))
        gamma = largest_feasible(feasible, self.gamma_init, self.tolerance)
        self.last_gamma = gamma
        return _repeat(mean - gamma * p, context)


class MinMax(_MinBase):
    """Min-max: the crafted delta's largest distance to a reference delta stays within the largest distance
    between two reference deltas."""

    name = "minmax"

    def feasibility(self, sq_to_ref, ref_sq):
        bound = float(ref_sq.max())
        return lambda gamma: float(sq_to_ref(gamma).max()) <= bound


class MinSum(_MinBase):
    """Min-sum: the crafted delta's sum of squared distances to the reference deltas stays within the
    largest such sum of one reference delta to the others."""

    name = "minsum"

    def feasibility(self, sq_to_ref, ref_sq):
        bound = float(ref_sq.sum(dim=1).max())
        return lambda gamma: float(sq_to_ref(gamma).sum()) <= bound


# ---------------------------------------------------------------------------------------------- Fang
class FangKrum(_Estimating):
    """Fang et al. (USENIX Security 2020), the attack on Krum: the crafted delta is −λ·s, s = sign of the
    mean reference delta (the direction the global model moves without attack); λ starts at the paper's
    upper bound (or `lambda_init`) and is halved until a local Krum over the reference deltas plus the
    crafted copies selects a crafted copy, or λ falls below `threshold`.

    Omniscient, the simulated round is exactly the server's (m benign + f crafted copies, Krum told f);
    with ``knowledge="own"`` the attackers' honest deltas stand in for the benign ones and one crafted copy
    is simulated (Krum told 1), as FLPoison does. Every attacker sends the same crafted delta."""

    name = "fang-krum"
    needs_benign = True

    def __init__(self, lambda_init: float | None = None, threshold: float = 1e-5, knowledge: str = "omniscient"):
        super().__init__(knowledge)
        self.lambda_init = check_number(self.name, "lambda_init", lambda_init, low=0, low_open=True, allow_none=True)
        self.threshold = check_number(self.name, "threshold", threshold, low=0, low_open=True)
        self.last_lambda: float | None = None
        self.last_selected: bool | None = None

    @staticmethod
    def lambda_bound(ref_sq: torch.Tensor, ref_norms: torch.Tensor, num_clients: int, num_malicious: int,
                     dims: int) -> float:
        """Fang et al.'s upper bound on λ, on deltas (the global model is the origin):
        1/((m − 2c − 1)√d) · min_i Σ_{l ∈ Γ(i, m − c − 2)} ‖b_l − b_i‖ + 1/√d · max_i ‖b_i‖ over the benign i.
        """
        r = ref_sq.shape[0]
        root_d = math.sqrt(max(dims, 1))
        first = 0.0
        k = min(max(num_clients - num_malicious - 2, 1), r - 1)
        if k >= 1:
            dist = ref_sq.sqrt().clone()
            dist.fill_diagonal_(math.inf)
            sums = dist.topk(k, dim=1, largest=False).values.sum(dim=1)
            first = float(sums.min()) / (max(num_clients - 2 * num_malicious - 1, 1) * root_d)
        return first + float(ref_norms.max()) / root_d

    def craft(self, context: AttackContext) -> torch.Tensor:
        ref = self.reference(context)
        r, dims = ref.shape
        s = ref.mean(dim=0).sign()
        copies = context.num_malicious if self.knowledge == "omniscient" else 1
        ref_sq = pairwise_sq_distances(ref)
        ref_norm_sq = (ref * ref).sum(dim=1).double()
        s_ref = (ref @ s).double()
        s_sq = float((s * s).sum())
        lam = self.lambda_init
        if lam is None:
            lam = self.lambda_bound(ref_sq, ref_norm_sq.sqrt(), context.num_clients, context.num_malicious, dims)
        pool = torch.zeros(r + copies, r + copies, dtype=torch.float64)
        pool[:r, :r] = ref_sq
        selected = False
        while lam > 0:
            # ‖−λs − b_i‖² = λ²‖s‖² + 2λ s·b_i + ‖b_i‖²; the copies are at distance 0 from each other.
            cross = lam * lam * s_sq + 2 * lam * s_ref + ref_norm_sq
            pool[:r, r:] = cross.clamp_min(0)[:, None]
            pool[r:, :r] = cross.clamp_min(0)[None, :]
            selected = krum_select(pool, copies) >= r
            if selected or lam < self.threshold:
                break
            lam /= 2
        self.last_lambda, self.last_selected = float(lam), selected
        return _repeat(-lam * s, context)


class FangTrim(_Estimating):
    """Fang et al.'s attack on trimmed mean and median, per coordinate j, with s_j the sign of the mean
    reference delta.

    Full knowledge (``knowledge="omniscient"``, the paper's rule): with max_j / min_j the largest / smallest
    benign value, each attacker draws uniformly from [min_j/b, min_j] (min_j > 0) or [b·min_j, min_j] when
    s_j > 0, and from [max_j, b·max_j] (max_j > 0) or [max_j, max_j/b] otherwise; b = 2.
    Partial knowledge (``knowledge="own"``): μ_j, σ_j of the attackers' own deltas; draws from
    [μ_j − 4σ_j, μ_j − 3σ_j] when s_j > 0 and [μ_j + 3σ_j, μ_j + 4σ_j] otherwise."""

    name = "fang-trim"
    needs_benign = True

    def __init__(self, b: float = 2.0, knowledge: str = "omniscient"):
        super().__init__(knowledge)
        self.b = check_number(self.name, "b", b, low=1, low_open=True)

    def craft(self, context: AttackContext) -> torch.Tensor:
        ref = self.reference(context)
        mean, std = mean_std(ref) if self.knowledge == "own" else (ref.mean(dim=0), None)
        up = mean > 0  # s_j = 1: the coordinate would increase, so push it down
        if std is not None:
            low = torch.where(up, mean - 4 * std, mean + 3 * std)
            high = torch.where(up, mean - 3 * std, mean + 4 * std)
        else:
            b = self.b
            top, bottom = ref.amax(dim=0), ref.amin(dim=0)
            low = torch.where(up, torch.where(bottom > 0, bottom / b, bottom * b), top)
            high = torch.where(up, bottom, torch.where(top > 0, top * b, top / b))
        gen = context.generator
        u = torch.rand((context.num_malicious, ref.shape[1]), generator=gen, device=gen.device)
        u = u.to(device=ref.device, dtype=ref.dtype)
        return (low + u * (high - low)).to(context.own)


# ---------------------------------------------------------------------------------------------- sign-flip, Gaussian
class SignFlip(ModelPoisoning):
    """Each attacker sends −`scale` × its own honest delta."""

    name = "signflip"
    needs_benign = False

    def __init__(self, scale: float = 1.0):
        self.scale = check_number(self.name, "scale", scale, low=0, low_open=True)

    def craft(self, context: AttackContext) -> torch.Tensor:
        return -self.scale * context.own


class Gaussian(ModelPoisoning):
    """Each attacker sends N(0, σ²) noise (Blanchard et al., NeurIPS 2017; FLPoison's default σ = 1), drawn
    from the round's generator."""

    name = "gaussian"
    needs_benign = False

    def __init__(self, sigma: float = 1.0):
        self.sigma = check_number(self.name, "sigma", sigma, low=0, low_open=True)

    def craft(self, context: AttackContext) -> torch.Tensor:
        gen = context.generator
        noise = torch.randn(tuple(context.own.shape), generator=gen, device=gen.device)
        return (self.sigma * noise).to(context.own)


MODEL_POISONING: dict[str, type[ModelPoisoning]] = {
    cls.name: cls for cls in (LIE, IPM, MinMax, MinSum, FangKrum, FangTrim, SignFlip, Gaussian)
}
