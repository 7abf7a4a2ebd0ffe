"""User-level differential privacy for the federation: DP-FedAvg, its RDP accountant and noise calibration.

DP-FedAvg (McMahan et al., ICLR 2018, "Learning Differentially Private Recurrent Language Models"): every
round the server

1. samples users with Poisson sampling: each of the ``N`` clients independently with probability ``q``
   (the federation's ``fraction``), so the cohort has ``qN`` users on average;
2. clips each sampled user's delta (local model minus the round's global model) to L2 norm ≤ ``S``;
3. averages with the fixed denominator ``qN`` (McMahan's ``f̃_f`` estimator: the sum's sensitivity to one
   user is ``S``, so the average's is ``S / qN`` whatever the cohort size);
4. adds Gaussian noise ``N(0, (z S / qN)² I)`` (``z`` is the noise multiplier).

One round is one Poisson-subsampled Gaussian mechanism with noise multiplier ``z`` under add/remove-one-user
adjacency, composed over rounds with Google's ``dp-accounting`` RDP accountant (the backend Flower's own
``RdpAccountant`` wraps). :func:`epsilon_spent` gives (ε, δ) after ``T`` rounds, :func:`calibrate_noise` the
smallest ``z`` meeting a target ε by bisection.

Why not Flower's ``DifferentialPrivacyServerSideFixedClipping`` around :class:`~artshield.fl_bridge.strategy.
RobustStrategy`? It composes, but not correctly for our platform (flwr 1.42, ``dp_fixed_clipping.py``):

- it clips the raw replies *before* the inner strategy validates them; a reply with a missing or misshapen
  array makes ``compute_clip_model_update`` (``zip(..., strict=True)``/broadcasting) raise and stops the server;
- its noise comes from NumPy's global ``np.random``: a seeded federation is not reproducible;
- the noise std is ``z S / num_sampled_clients`` even when replies are dropped (the mean over fewer replies
  has a larger sensitivity: under-noised), and the inner ``fedavg`` rule weights by ``num-examples``, whose
  sensitivity to one user is not ``S / m`` either;
- its accountant accepts only ``no-amplification`` sampling and a strategy whose ``aggregate_train`` *is*
  ``FedAvg.aggregate_train``: it refuses ``RobustStrategy`` and, even for FedAvg, reports ε without the
  subsampling amplification a fraction ``q < 1`` gives;
- FedAvg samples a *fixed-size* cohort without replacement, which the RDP bound of dp-accounting
  (``SampledWithoutReplacementDpEvent``) only covers under replace-one adjacency, where the sum's
  sensitivity is ``2S``, not ``S``.

So :class:`UserLevelDP` is a Flower strategy with one job: it wraps a ``RobustStrategy`` (which keeps the
seeded message flow, the stash of the global arrays and the reply validation), samples the cohort with
seeded Poisson sampling (the sampling the accountant assumes), clips the *validated* deltas, aggregates with
the fixed denominator, adds seeded noise and reports the cumulative ``epsilon`` in every round's metrics.
With a rule other than ``fedavg`` the deltas are clipped and noised the same way, but the rule's output
can move by more than ``S / qN`` when one user changes, so no ε is claimed (``epsilon`` is left out and
``dp-covered`` is 0).

Adaptive clipping (Andrew et al., NeurIPS 2021, "Differentially Private Learning with Adaptive Clipping"):
the clip follows a private estimate of the ``target_quantile`` of the update norms,
``S ← S · exp(−η (b̄ − γ))`` with ``b̄`` the noised fraction of *unclipped* sampled updates; the noise
multiplier ``z`` is split between the update (``z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2)``) and the count (``σ_b``), so
the accounting with ``z`` stays valid.

The client-side options of Cheng et al. (CVPR 2022, BLUR and LUS) live in
:class:`~artshield.fl_bridge.training.LocalTraining` (``blur``, ``blur_bound``, ``lus``): they change how a
client trains, and the server-side mechanism above is unchanged by them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from ..errors import InvalidArgumentError
from . import messages as M
from .clients import DP_CLIP_KEY, generator_for
from .defenses.base import RoundUpdates

logger = logging.getLogger(__name__)

#: The noise multiplier :func:`calibrate_noise` refuses to go beyond (std = z·S/qN: at 100 the noise swamps
#: any update a sane cohort can average).
MAX_NOISE_MULTIPLIER = 100.0
_MIN_NOISE_MULTIPLIER = 1e-2
#: RDP orders: integers, whose subsampled-Gaussian RDP dp-accounting computes exactly and fast (its default
#: fractional orders 1.1-1.9 fail to converge for z ≈ 1 at q = 0.2, are dropped with a warning, and are slow).
RDP_ORDERS = (*range(2, 65), 80, 96, 128, 192, 256, 512)
#: The key of the round's clip norm in the ``train`` ConfigRecord (clients use it as BLUR's default bound).
CLIP_KEY = DP_CLIP_KEY
_NOISE_SALT = 0xD1FF
_SAMPLE_SALT = 0x5A3
_COUNT_SALT = 0xC0DE


# ------------------------------------------------------------------------------------------------ accounting
def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_accounting(sampling_rate, rounds, delta) -> None:
    if not _number(sampling_rate) or not 0 < sampling_rate <= 1:
        raise InvalidArgumentError(f"sampling_rate must be in (0, 1], got {sampling_rate!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise InvalidArgumentError(f"rounds must be a positive integer to spend a privacy budget, got {rounds!r}")
    if not _number(delta) or not 0 < delta < 1:
        raise InvalidArgumentError(f"delta must be in (0, 1), got {delta!r}")


def _round_event(noise_multiplier: float, sampling_rate: float):
    from dp_accounting import dp_event

    gaussian = dp_event.GaussianDpEvent(float(noise_multiplier))
    if sampling_rate >= 1:
        return gaussian
    return dp_event.PoissonSampledDpEvent(float(sampling_rate), gaussian)


def epsilon_spent(noise_multiplier: float, sampling_rate: float, rounds: int, delta: float) -> float:
    """ε after `rounds` rounds of the Poisson-subsampled Gaussian mechanism (add/remove-one-user adjacency,
    RDP accountant of ``dp-accounting``) at the given δ; ``inf`` for a zero noise multiplier."""
    _check_accounting(sampling_rate, rounds, delta)
    if not _number(noise_multiplier) or noise_multiplier < 0:
        raise InvalidArgumentError(f"noise_multiplier must be a non-negative number, got {noise_multiplier!r}")
    if noise_multiplier == 0:
        return math.inf
    from dp_accounting import dp_event
    from dp_accounting.rdp import RdpAccountant

    accountant = RdpAccountant(orders=list(RDP_ORDERS))
    accountant.compose(dp_event.SelfComposedDpEvent(_round_event(noise_multiplier, sampling_rate), int(rounds)))
    return float(accountant.get_epsilon(float(delta)))


def calibrate_noise(target_epsilon: float, delta: float, rounds: int, sampling_rate: float, *,
                    max_noise_multiplier: float = MAX_NOISE_MULTIPLIER, rtol: float = 1e-4) -> float:
    """The smallest noise multiplier (to `rtol`) whose ε after `rounds` rounds at sampling rate `sampling_rate`
    is at most `target_epsilon` at `delta`, found by bisection on :func:`epsilon_spent` (decreasing in z).

    Raises :class:`InvalidArgumentError` naming ``epsilon`` when the target is not a positive number or needs a
    noise multiplier above `max_noise_multiplier`, and naming ``delta`` / ``rounds`` / ``sampling_rate`` when
    those make any budget meaningless (δ ∉ (0, 1), no round)."""
    if not _number(target_epsilon) or target_epsilon <= 0:
        raise InvalidArgumentError(f"epsilon must be a positive number, got {target_epsilon!r}")
    _check_accounting(sampling_rate, rounds, delta)
    low, high = _MIN_NOISE_MULTIPLIER, float(max_noise_multiplier)
    if epsilon_spent(high, sampling_rate, rounds, delta) > target_epsilon:
        raise InvalidArgumentError(
            f"epsilon {target_epsilon:g} cannot be met in {rounds} rounds at sampling rate {sampling_rate:g} "
            f"(delta {delta:.3g}) with a noise multiplier up to {max_noise_multiplier:g}; raise epsilon or "
            "lower rounds / fraction")
    if epsilon_spent(low, sampling_rate, rounds, delta) <= target_epsilon:
        return low
    while high / low > 1 + rtol:
        middle = math.sqrt(low * high)
        if epsilon_spent(middle, sampling_rate, rounds, delta) <= target_epsilon:
            high = middle
        else:
            low = middle
    return high


class PrivacyAccountant:
    """Cumulative (ε, δ) of the rounds released so far (one Poisson-subsampled Gaussian event each)."""

    def __init__(self, noise_multiplier: float, sampling_rate: float, delta: float):
        _check_accounting(sampling_rate, 1, delta)
        from dp_accounting.rdp import RdpAccountant

        self.noise_multiplier = float(noise_multiplier)
        self.sampling_rate = float(sampling_rate)
        self.delta = float(delta)
        self.rounds = 0
        self._accountant = RdpAccountant(orders=list(RDP_ORDERS))

    def step(self) -> float:
        """Account one more released round; returns the cumulative ε."""
        self._accountant.compose(_round_event(self.noise_multiplier, self.sampling_rate))
        self.rounds += 1
        return self.epsilon

    @property
    def epsilon(self) -> float:
        return float(self._accountant.get_epsilon(self.delta)) if self.rounds else 0.0


# ------------------------------------------------------------------------------------------------ configuration
@dataclass
class DPConfig:
    """User-level DP-FedAvg settings.

    `clip` is the L2 bound ``S`` on each user's delta (the initial bound when `adaptive`); give exactly one of
    `noise_multiplier` (``z``) and `target_epsilon` (then ``z`` is calibrated for the run's rounds and
    fraction); `delta` defaults to ``1 / num_clients²``. `adaptive` turns on Andrew et al.'s quantile-tracking
    clip (`target_quantile` γ of unclipped updates, learning rate `clip_lr` η, count noise
    `clipped_count_stddev` σ_b, default expected cohort / 20)."""

    clip: float
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float | None = None
    adaptive: bool = False
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    clipped_count_stddev: float | None = None

    def validate(self) -> DPConfig:
        if not _number(self.clip) or self.clip <= 0:
            raise InvalidArgumentError(f"privacy clip must be a positive number, got {self.clip!r}")
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise InvalidArgumentError("privacy needs exactly one of noise_multiplier and epsilon")
        if self.noise_multiplier is not None and (not _number(self.noise_multiplier) or self.noise_multiplier <= 0):
            raise InvalidArgumentError(
                f"privacy noise_multiplier must be a positive number, got {self.noise_multiplier!r}")
        if self.target_epsilon is not None and (not _number(self.target_epsilon) or self.target_epsilon <= 0):
            raise InvalidArgumentError(f"privacy epsilon must be a positive number, got {self.target_epsilon!r}")
        if self.delta is not None and (not _number(self.delta) or not 0 < self.delta < 1):
            raise InvalidArgumentError(f"privacy delta must be in (0, 1), got {self.delta!r}")
        if not isinstance(self.adaptive, bool):
            raise InvalidArgumentError(f"privacy adaptive must be true or false, got {self.adaptive!r}")
        if not _number(self.target_quantile) or not 0 <= self.target_quantile <= 1:
            raise InvalidArgumentError(f"privacy target_quantile must be in [0, 1], got {self.target_quantile!r}")
        if not _number(self.clip_lr) or self.clip_lr <= 0:
            raise InvalidArgumentError(f"privacy clip_lr must be a positive number, got {self.clip_lr!r}")
        if self.clipped_count_stddev is not None and (
                not _number(self.clipped_count_stddev) or self.clipped_count_stddev <= 0):
            raise InvalidArgumentError(
                f"privacy clipped_count_stddev must be a positive number, got {self.clipped_count_stddev!r}")
        return self

    def resolve(self, num_clients: int, rounds: int, sampling_rate: float) -> ResolvedDP:
        """The concrete mechanism for a federation: δ (default 1/N²) and z (calibrated when ε is given)."""
        self.validate()
        delta = self.delta if self.delta is not None else 1.0 / float(num_clients) ** 2
        if delta >= 1:
            raise InvalidArgumentError(f"privacy delta 1/num_clients² = {delta:g} is not below 1: "
                                       "give delta or more clients")
        z = self.noise_multiplier
        if z is None:
            z = calibrate_noise(self.target_epsilon, delta, rounds, sampling_rate)
        expected = sampling_rate * num_clients
        count_std, z_update = None, z
        if self.adaptive:
            count_std = self.clipped_count_stddev if self.clipped_count_stddev is not None else expected / 20
            if z >= 2 * count_std:
                raise InvalidArgumentError(
                    f"privacy adaptive: noise multiplier {z:.3g} needs clipped_count_stddev above {z / 2:.3g} "
                    f"(it is {count_std:.3g}; default: expected cohort / 20)")
            z_update = (z ** -2 - (2 * count_std) ** -2) ** -0.5
        return ResolvedDP(config=self, num_clients=int(num_clients), rounds=int(rounds),
                          sampling_rate=float(sampling_rate), delta=float(delta), noise_multiplier=float(z),
                          update_noise_multiplier=float(z_update), clipped_count_stddev=count_std)


@dataclass
class ResolvedDP:
    config: DPConfig
    num_clients: int
    rounds: int
    sampling_rate: float
    delta: float
    noise_multiplier: float  # z, the one accounted
    update_noise_multiplier: float  # z_Δ: z itself with fixed clipping, less with adaptive clipping
    clipped_count_stddev: float | None

    @property
    def expected_cohort(self) -> float:
        return self.sampling_rate * self.num_clients

    @property
    def planned_epsilon(self) -> float:
        return epsilon_spent(self.noise_multiplier, self.sampling_rate, self.rounds, self.delta)

    def to_dict(self) -> dict:
        return {**asdict(self.config), "delta": self.delta, "noise_multiplier": self.noise_multiplier,
                "update_noise_multiplier": self.update_noise_multiplier, "sampling_rate": self.sampling_rate,
                "num_clients": self.num_clients, "rounds": self.rounds, "sampling": "poisson",
                "clipped_count_stddev": self.clipped_count_stddev}


# ------------------------------------------------------------------------------------------------ mechanism
def clip_deltas(deltas: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row scaled to L2 norm at most `clip` (FlatClip); returns (clipped rows, original norms)."""
    norms = torch.linalg.vector_norm(deltas, dim=1)
    scale = torch.clamp(clip / norms.clamp_min(1e-12), max=1.0)
    return deltas * scale[:, None], norms


def poisson_sample(node_ids: list[int], sampling_rate: float, generator: torch.Generator) -> list[int]:
    """Each node independently with probability `sampling_rate` (node ids sorted first: order-independent)."""
    ordered = sorted(int(n) for n in node_ids)
    keep = torch.rand(len(ordered), generator=generator, dtype=torch.float64) < sampling_rate
    return [n for n, k in zip(ordered, keep.tolist(), strict=True) if k]


class UserLevelDP(Strategy):
    """User-level DP-FedAvg around a :class:`~artshield.fl_bridge.strategy.RobustStrategy` (module docstring).

    `inner` must offer every node each round (``fraction_train=1``): this strategy Poisson-samples among them.
    `seed` seeds the sampling, the noise and the adaptive clip's count noise (per round): runs repeat exactly.
    """

    def __init__(self, inner, dp: ResolvedDP, *, seed: int = 0):
        super().__init__()
        if getattr(inner, "fraction_train", 1.0) != 1.0:
            raise InvalidArgumentError("UserLevelDP samples the cohort itself: build the inner strategy with "
                                       "fraction_train=1.0")
        self.inner = inner
        self.dp = dp
        self.seed = int(seed)
        self.clip = float(dp.config.clip)
        self.accountant = PrivacyAccountant(dp.noise_multiplier, dp.sampling_rate, dp.delta)
        self.covered = getattr(inner.rule, "name", None) == "fedavg"
        self.round_metrics: dict[int, dict] = {}
        self.kept_model: set[int] = set()
        self.sampled: dict[int, list[int]] = {}
        self._started: dict[int, float] = {}
        self._finished: dict[int, float] = {}
        if not self.covered:
            logger.warning("user-level DP with rule %r: updates are clipped and noised, but the (epsilon, delta) "
                           "accounting covers the mean (fedavg) only; no epsilon is reported", inner.rule.name)

    # -------------------------------------------------------------------------------------------- Flower API
    def summary(self) -> None:
        logger.info("UserLevelDP: clip %.4g%s, noise multiplier %.4g, Poisson q=%.4g, delta %.3g",
                    self.clip, " (adaptive)" if self.dp.config.adaptive else "", self.dp.noise_multiplier,
                    self.dp.sampling_rate, self.dp.delta)
        self.inner.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._started[server_round] = time.perf_counter()
        config = ConfigRecord(dict(config))
        config[CLIP_KEY] = float(self.clip)
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        chosen = set(poisson_sample([m.metadata.dst_node_id for m in messages], self.dp.sampling_rate,
                                    generator_for(self.seed, server_round, _SAMPLE_SALT)))
        kept = sorted((m for m in messages if m.metadata.dst_node_id in chosen), key=lambda m: m.metadata.dst_node_id)
        self.sampled[server_round] = [m.metadata.dst_node_id for m in kept]
        if hasattr(self.inner, "sampled"):
            self.inner.sampled[server_round] = list(self.sampled[server_round])
        return kept

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        inner = self.inner
        valid = inner.validator.check(replies)
        metrics: dict = valid.metrics()
        metrics["aggregated"] = len(valid.node_ids)
        global_vector = inner.validator.global_vector
        denominator = self.dp.expected_cohort
        clip = self.clip
        d = global_vector.numel()
        if valid.node_ids:
            clipped, norms = clip_deltas(valid.vectors - global_vector, clip)
            if self.covered:
                aggregate = clipped.sum(dim=0) / denominator
            else:
                updates = RoundUpdates(deltas=clipped, num_examples=torch.ones(len(valid.node_ids)),
                                       global_vector=global_vector, server_round=server_round,
                                       client_ids=list(valid.node_ids), layout=inner.layout)
                result = inner.rule(updates)
                aggregate = result.delta.detach().to(torch.float32).reshape(-1)
                metrics.update({k: v for k, v in result.metrics.items()})
                if aggregate.numel() != d or not bool(torch.isfinite(aggregate).all()):
                    metrics["aggregate-rejected"] = 1
                    aggregate = torch.zeros(d)
            metrics["dp-clipped"] = int((norms > clip).sum())
            metrics["dp-mean-norm"] = float(norms.mean())
        else:
            norms = torch.zeros(0)
            aggregate = torch.zeros(d)
        std = self.dp.update_noise_multiplier * clip / denominator
        noise = torch.randn(d, generator=generator_for(self.seed, server_round, _NOISE_SALT)) * std
        new_vector = global_vector + aggregate + noise
        epsilon = self.accountant.step()
        metrics.update({"dp-clip": clip, "dp-noise-std": std, "dp-covered": int(self.covered),
                        "delta": self.dp.delta})
        if self.covered:
            metrics["epsilon"] = epsilon
        if self.dp.config.adaptive:
            self.clip = self._adapt(server_round, norms, clip, denominator)
            metrics["dp-next-clip"] = self.clip
        arrays = M.vector_to_arrays(new_vector, inner.layout, template=inner.current_arrays)
        return self._finish(server_round, metrics, arrays)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    # -------------------------------------------------------------------------------------------- helpers
    def _adapt(self, server_round: int, norms: torch.Tensor, clip: float, denominator: float) -> float:
        """Andrew et al.: geometric update towards the target quantile of unclipped norms (noised count)."""
        cfg = self.dp.config
        unclipped = float((norms <= clip).sum())
        noise = float(torch.randn((), generator=generator_for(self.seed, server_round, _COUNT_SALT),
                                  dtype=torch.float64)) * float(self.dp.clipped_count_stddev)
        fraction = (unclipped + noise) / denominator
        return clip * math.exp(-cfg.clip_lr * (fraction - cfg.target_quantile))

    def _finish(self, server_round: int, metrics: dict, arrays: ArrayRecord) -> tuple[ArrayRecord, MetricRecord]:
        self._finished[server_round] = time.perf_counter()
        sampled = self.sampled.get(server_round, [])
        metrics["sampled"] = len(sampled)
        metrics["sampled-malicious"] = sum(n in self.inner.malicious_nodes for n in sampled)
        clean = {k: (float(v) if isinstance(v, float) else int(v)) for k, v in metrics.items()
                 if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}
        self.round_metrics[server_round] = clean
        return arrays, MetricRecord(clean)

    def round_seconds(self, server_round: int) -> float | None:
        if server_round in self._started and server_round in self._finished:
            return self._finished[server_round] - self._started[server_round]
        return None

    @property
    def epsilon(self) -> float | None:
        """Cumulative ε of the rounds so far (None when the rule is not covered by the accounting)."""
        return self.accountant.epsilon if self.covered else None

    def privacy_report(self) -> dict:
        """The mechanism and what it spent, for run results."""
        return {**self.dp.to_dict(), "rounds_released": self.accountant.rounds, "epsilon": self.epsilon,
                "covered": self.covered, "rule": getattr(self.inner.rule, "name", None), "final_clip": self.clip}


__all__ = ["CLIP_KEY", "MAX_NOISE_MULTIPLIER", "DPConfig", "PrivacyAccountant", "ResolvedDP", "UserLevelDP",
           "calibrate_noise", "clip_deltas", "epsilon_spent", "poisson_sample"]
