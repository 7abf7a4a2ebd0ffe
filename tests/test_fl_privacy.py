"""User-level DP: clipping, noise, Poisson sampling, the RDP accountant, calibration, BLUR/LUS, [privacy], a run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from artshield.errors import InvalidArgumentError
from artshield.fl_bridge import messages as M
from artshield.fl_bridge import privacy as P
from artshield.fl_bridge.defenses.registry import make_defense
from artshield.fl_bridge.grid import LocalGrid
from artshield.fl_bridge.strategy import RobustStrategy
from artshield.fl_bridge.training import LocalTraining, sparsify_update, train_locally
from artshield.fl_bridge.updates import ParameterLayout

D = 20_000  # one big float array: the noise's sample std is within ~1 % of the truth


def global_arrays() -> ArrayRecord:
    return ArrayRecord({"w": Array(np.linspace(-1, 1, D, dtype=np.float32))})


LAYOUT = ParameterLayout.from_arrays({k: a.numpy() for k, a in global_arrays().items()})
G = M.arrays_to_vector(global_arrays(), LAYOUT)


def reply_to(message: Message, delta: torch.Tensor, num_examples: int = 10) -> Message:
    local = {"w": Array((G + delta).numpy().astype(np.float32))}
    content = RecordDict({"arrays": ArrayRecord(local), "metrics": MetricRecord({"num-examples": num_examples})})
    return Message(content, reply_to=message)


def dp_strategy(*, clip=1.0, z=1.0, q=0.5, clients=20, seed=0, rule="fedavg", adaptive=False):
    dp = P.DPConfig(clip=clip, noise_multiplier=z, delta=1e-5, adaptive=adaptive).resolve(clients, 10, q)
    inner = RobustStrategy(make_defense(rule), LAYOUT, seed=seed, fraction_train=1.0, fraction_evaluate=0.0,
                           min_available_nodes=clients, min_train_nodes=1)
    return P.UserLevelDP(inner, dp, seed=seed), LocalGrid(lambda m, c: None, clients, seed=0)


def one_round(strategy, grid, deltas_for, server_round=1):
    messages = list(strategy.configure_train(server_round, global_arrays(), ConfigRecord(), grid))
    replies = [reply_to(m, deltas_for(i)) for i, m in enumerate(messages)]
    arrays, metrics = strategy.aggregate_train(server_round, replies)
    return messages, M.arrays_to_vector(arrays, LAYOUT) - G, metrics


# ------------------------------------------------------------------------------------------------ mechanism
def test_clipping_bounds_every_delta_and_keeps_short_ones():
    rows = torch.randn(50, 30, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.01, 3, 50)[:, None]
    clipped, norms = P.clip_deltas(rows, 1.0)
    after = torch.linalg.vector_norm(clipped, dim=1)
    assert bool((after <= 1.0 + 1e-5).all())
    short = norms <= 1.0
    assert short.any() and (~short).any()
    assert torch.equal(clipped[short], rows[short])
    assert torch.allclose(after[~short], torch.ones(int((~short).sum())), atol=1e-5)


def test_noise_std_is_z_clip_over_the_expected_cohort():
    strategy, grid = dp_strategy(clip=2.0, z=1.5, q=0.5, clients=20)
    messages, change, metrics = one_round(strategy, grid, lambda i: torch.zeros(D))
    expected = 1.5 * 2.0 / (0.5 * 20)
    assert metrics["dp-noise-std"] == pytest.approx(expected)
    assert float(change.std()) == pytest.approx(expected, rel=0.03)
    assert abs(float(change.mean())) < 4 * expected / math.sqrt(D)
    assert metrics["sampled"] == len(messages) and metrics["epsilon"] > 0


def test_the_mean_of_clipped_deltas_uses_the_fixed_denominator_and_is_seeded():
    big = torch.zeros(D)
    big[0] = 10.0  # norm 10, clipped to 1
    strategy, grid = dp_strategy(clip=1.0, z=1e-6, q=0.5, clients=20)
    messages, change, metrics = one_round(strategy, grid, lambda i: big)
    assert metrics["dp-clipped"] == len(messages) > 0
    assert float(change[0]) == pytest.approx(len(messages) / (0.5 * 20), rel=1e-4)
    again, _ = dp_strategy(clip=1.0, z=1e-6, q=0.5, clients=20)
    _, change_again, _ = one_round(again, grid, lambda i: big)
    assert torch.equal(change, change_again)
    other, _ = dp_strategy(clip=1.0, z=1e-6, q=0.5, clients=20, seed=1)
    _, change_other, _ = one_round(other, grid, lambda i: big)
    assert not torch.equal(change, change_other)


def test_poisson_sampling_rate_and_independence_of_node_order():
    counts = [len(P.poisson_sample(list(range(100)), 0.2, torch.Generator().manual_seed(s))) for s in range(300)]
    assert np.mean(counts) == pytest.approx(20, rel=0.05)
    assert P.poisson_sample([5, 3, 9, 1], 0.5, torch.Generator().manual_seed(3)) == \
        P.poisson_sample([1, 9, 3, 5], 0.5, torch.Generator().manual_seed(3))


def test_adaptive_clip_grows_when_every_update_is_clipped_and_shrinks_when_none_is():
    strategy, grid = dp_strategy(clip=1.0, z=0.5, q=0.5, clients=20, adaptive=True)
    large = torch.full((D,), 1.0)  # norm ~141
    *_, metrics = one_round(strategy, grid, lambda i: large)
    assert metrics["dp-next-clip"] > 1.0
    strategy, grid = dp_strategy(clip=1.0, z=0.5, q=0.5, clients=20, adaptive=True)
    *_, metrics = one_round(strategy, grid, lambda i: torch.zeros(D))
    assert metrics["dp-next-clip"] < 1.0
    with pytest.raises(InvalidArgumentError, match="clipped_count_stddev"):
        P.DPConfig(clip=1.0, noise_multiplier=5.0, adaptive=True).resolve(20, 10, 0.5)  # σ_b = 0.5


def test_a_rule_other_than_the_mean_is_noised_but_claims_no_epsilon():
    strategy, grid = dp_strategy(rule="median")
    *_, metrics = one_round(strategy, grid, lambda i: torch.zeros(D))
    assert "epsilon" not in metrics and metrics["dp-covered"] == 0 and metrics["dp-noise-std"] > 0
    assert strategy.privacy_report()["epsilon"] is None


# ------------------------------------------------------------------------------------------------ accounting
def test_epsilon_grows_with_rounds_and_falls_with_noise():
    by_rounds = [P.epsilon_spent(1.0, 0.1, t, 1e-5) for t in (1, 5, 20, 100)]
    assert all(a < b for a, b in zip(by_rounds, by_rounds[1:], strict=False))
    by_noise = [P.epsilon_spent(z, 0.1, 50, 1e-5) for z in (0.6, 1.0, 2.0, 5.0)]
    assert all(a > b for a, b in zip(by_noise, by_noise[1:], strict=False))
    assert P.epsilon_spent(1.0, 0.1, 50, 1e-5) < P.epsilon_spent(1.0, 1.0, 50, 1e-5)  # amplification
    accountant = P.PrivacyAccountant(1.0, 0.1, 1e-5)
    for _ in range(5):
        accountant.step()
    assert accountant.epsilon == pytest.approx(P.epsilon_spent(1.0, 0.1, 5, 1e-5))


def test_epsilon_matches_flowers_rdp_accountant():
    from flwr.serverapp import RdpAccountant
    from flwr.supercore.privacy_accounting import (
        GaussianPrivacyEvent,
        NeighboringRelation,
        PrivacyConfig,
        SamplingMethod,
    )

    flower = RdpAccountant(PrivacyConfig(target_delta=1e-4, population_size=100,
                                         neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                                         sampling_method=SamplingMethod.POISSON), orders=P.RDP_ORDERS)
    flower.compose(GaussianPrivacyEvent(noise_multiplier=1.1, sample_size=20, population_size=100), count=30)
    assert P.epsilon_spent(1.1, 0.2, 30, 1e-4) == pytest.approx(flower.get_epsilon(1e-4), rel=1e-9)


@pytest.mark.parametrize("target", [2.0, 4.0, 8.0])
def test_calibrate_noise_hits_its_target(target):
    z = P.calibrate_noise(target, 1e-4, 40, 0.1)
    eps = P.epsilon_spent(z, 0.1, 40, 1e-4)
    assert eps <= target and eps == pytest.approx(target, rel=1e-2)


def test_calibrate_noise_refuses_what_cannot_be_met():
    with pytest.raises(InvalidArgumentError, match="epsilon 0.001 cannot be met.*noise multiplier up to 100"):
        P.calibrate_noise(0.001, 1e-5, 1000, 1.0)
    with pytest.raises(InvalidArgumentError, match="^rounds"):
        P.calibrate_noise(2.0, 1e-5, 0, 0.1)
    with pytest.raises(InvalidArgumentError, match="^delta"):
        P.calibrate_noise(2.0, 1.0, 10, 0.1)
    with pytest.raises(InvalidArgumentError, match="^epsilon"):
        P.calibrate_noise(0.0, 1e-5, 10, 0.1)
    with pytest.raises(InvalidArgumentError, match="exactly one"):
        P.DPConfig(clip=1.0).validate()


# ------------------------------------------------------------------------------------------------ BLUR / LUS
def _digits_setup():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    layout = ParameterLayout.from_arrays(model.state_dict())
    images = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    labels = (images.flatten(1)[:, :3].argmax(1)).long()
    from artshield.fl_bridge.tasks import Dataset

    return model, layout, layout.flatten(model.state_dict()), Dataset(images, labels)


def test_blur_keeps_the_local_update_norm_lower_than_plain_training():
    model, layout, g, data = _digits_setup()
    plain_cfg = LocalTraining(epochs=10, lr=0.2, batch_size=16)
    plain = train_locally(model, layout, g, data, plain_cfg, torch.Generator().manual_seed(0))
    bound = 0.3 * float(plain.norm())
    blurred = train_locally(model, layout, g, data, LocalTraining(epochs=10, lr=0.2, batch_size=16, blur=5.0,
                                                                  blur_bound=bound), torch.Generator().manual_seed(0))
    assert float(blurred.norm()) < 0.6 * float(plain.norm())
    with pytest.raises(InvalidArgumentError, match="blur_bound"):
        train_locally(model, layout, g, data, LocalTraining(blur=1.0), torch.Generator().manual_seed(0))


def test_lus_zeroes_the_fraction_of_smallest_coordinates():
    delta = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    out = sparsify_update(delta, 0.3)
    zeroed = out == 0
    assert int(zeroed.sum()) == 300
    assert float(delta[zeroed].abs().max()) <= float(delta[~zeroed].abs().min())
    assert torch.equal(out[~zeroed], delta[~zeroed])
    model, layout, g, data = _digits_setup()
    trained = train_locally(model, layout, g, data, LocalTraining(epochs=2, lus=0.5), torch.Generator().manual_seed(0))
    assert int((trained == 0).sum()) >= layout.size // 2


@pytest.mark.parametrize("kwargs, name", [({"blur": -1.0}, "blur"), ({"blur_bound": 0}, "blur_bound"),
                                          ({"lus": 1.0}, "lus"), ({"lus": True}, "lus")])
def test_local_training_refuses_bad_blur_and_lus(kwargs, name):
    with pytest.raises(InvalidArgumentError, match=f"`{name}`"):
        LocalTraining(**kwargs)


# ------------------------------------------------------------------------------------------------ [privacy]
BASE = """
[task]
name = "digits"
[federation]
clients = 20
fraction = 0.25
rounds = 3
"""


def parse(privacy: str, defense: str = ""):
    from artshield.fl_bridge.experiment import parse_experiment

    return parse_experiment(BASE + defense + "[privacy]\n" + privacy, source="dp.toml", check_names=False)


@pytest.mark.parametrize("text, message", [
    ("epsilon = 4.0", "dp.toml: [privacy] clip is missing"),
    ("clip = 1.0", "dp.toml: [privacy] needs epsilon"),
    ("clip = 1.0\nepsilon = 4.0\nnoise_multiplier = 1.0", "dp.toml: [privacy] epsilon and noise_multiplier"),
    ("clip = 0\nepsilon = 4.0", "dp.toml: [privacy] clip must be > 0"),
    ("clip = 1.0\nepsilon = 1e-4", "dp.toml: [privacy] epsilon 0.0001 cannot be met in 3 rounds"),
    ("clip = 1.0\nepsilon = 4.0\ndelta = 1.0", "dp.toml: [privacy] delta must be in (0, 1)"),
    ("clip = 1.0\nepsilon = 4.0\nlus = 1.5", "dp.toml: [privacy] lus must be in [0, 1)"),
    ("clip = 1.0\nepsilon = 4.0\nadaptive = 1", "dp.toml: [privacy] adaptive must be true or false"),
    ("clip = 1.0\nepsilon = 4.0\nblurr = 1", "dp.toml: [privacy] blurr is not a known key; did you mean 'blur'?"),
])
def test_privacy_section_errors_name_the_file_section_and_field(text, message):
    with pytest.raises(InvalidArgumentError) as error:
        parse(text)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_privacy_section_refuses_flowers_own_strategies_and_builds_the_config():
    with pytest.raises(InvalidArgumentError, match=r"\[privacy\] cannot wrap Flower's own strategy"):
        parse("clip = 1.0\nepsilon = 4.0", '[defense]\nname = "flower-krum"\n')
    experiment = parse("clip = 0.5\nepsilon = 4.0\nblur = 2.0\nlus = 0.25")
    config = experiment.federation_config()
    assert config.privacy.clip == 0.5 and config.privacy.target_epsilon == 4.0 and config.privacy.delta is None
    assert config.training.blur == 2.0 and config.training.blur_bound is None and config.training.lus == 0.25
    assert "privacy" in experiment.to_dict() and "privacy" not in parse("clip = 1.0\nepsilon = 4.0").to_dict()[
        "training"]


# ------------------------------------------------------------------------------------------------ a run
def test_a_short_dp_federation_reports_epsilon_per_round_and_repeats():
    from artshield.fl_bridge.federation import FederationConfig, run_federation

    config = FederationConfig(task="digits", task_params={"hidden": 0}, num_clients=20, fraction=0.25, rounds=3,
                              seed=0, training=LocalTraining(epochs=1, lr=0.1, blur=1.0, lus=0.5),
                              privacy=P.DPConfig(clip=1.0, target_epsilon=4.0))
    result = run_federation(config)
    epsilons = [r["epsilon"] for r in result.rounds]
    assert all(a < b for a, b in zip(epsilons, epsilons[1:], strict=False))
    assert epsilons[-1] <= 4.0 and epsilons[-1] == pytest.approx(4.0, rel=0.02)
    assert result.epsilon == epsilons[-1] and result.privacy["delta"] == pytest.approx(1 / 400)
    assert "privacy" in result.to_dict() and result.to_dict()["config"]["privacy"]["clip"] == 1.0
    again = run_federation(config)
    assert torch.equal(result.final_vector, again.final_vector)
