"""run_federation on a fake task (tests/fl_platform_fakes.py): learning, determinism, attacks through Flower."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import fl_platform_fakes as fakes
from artshield.errors import InvalidArgumentError
from artshield.fl_bridge.federation import FederationConfig, run_federation


@pytest.fixture(autouse=True)
def fake_modules(monkeypatch):
    fakes.install(monkeypatch)


def config(**overrides) -> FederationConfig:
    base = dict(task="blobs", num_clients=6, rounds=3, fraction=1.0, seed=0, training=fakes.LocalTraining())
    base.update(overrides)
    return FederationConfig(**base)


def test_a_short_federation_learns_and_reports_every_round():
    seen = []
    result = run_federation(config(), progress=seen.append)
    assert [r["round"] for r in result.rounds] == [1, 2, 3] and seen == result.rounds
    assert result.initial["accuracy"] < 0.6 < result.rounds[-1]["accuracy"]
    assert result.rounds[-1]["loss"] < result.initial["loss"]
    for record in result.rounds:
        assert record["dropped"] == 0 and record["sampled"] == 6 and record["seconds"] > 0
        assert record["asr"] is None and record["tpr"] is None
    assert result.final_vector.shape == (fakes.FEATURES * fakes.CLASSES + fakes.CLASSES,)
    assert result.to_dict()["config"]["training"]["lr"] == 0.5


def _comparable(result):
    return [{k: v for k, v in r.items() if k not in ("seconds", "metrics")} for r in result.rounds]


def test_a_seed_repeats_the_run_exactly():
    kwargs = dict(fraction=0.5, attack="recorder", malicious_fraction=0.34, rounds=3)
    first, second = run_federation(config(**kwargs)), run_federation(config(**kwargs))
    assert _comparable(first) == _comparable(second)
    assert torch.equal(first.final_vector, second.final_vector)
    other = run_federation(config(seed=1, **kwargs))
    assert not torch.equal(first.final_vector, other.final_vector)


def test_omniscient_attackers_see_exactly_the_benign_deltas(monkeypatch):
    recorder, rule = fakes.Recorder(), fakes.MeanRule()
    monkeypatch.setitem(fakes.ATTACKS, "recorder", lambda **params: recorder)
    monkeypatch.setitem(fakes.RULES, "fedavg", lambda **params: rule)
    result = run_federation(config(attack="recorder", malicious_fraction=0.34, rounds=2))
    assert result.malicious_clients == sorted(result.malicious_clients) and len(result.malicious_clients) == 2
    # one craft per round (cached for the second colluder), each with the 4 benign and 2 own deltas
    assert [c.server_round for c in recorder.contexts] == [1, 2]
    for context, updates in zip(recorder.contexts, rule.seen, strict=True):
        assert context.own.shape[0] == 2 and context.benign.shape[0] == 4 and context.num_clients == 6
        crafted = -5.0 * context.benign.mean(0)
        is_crafted = torch.isclose(updates.deltas, crafted, atol=1e-6).all(dim=1)
        assert int(is_crafted.sum()) == 2  # the strategy received the crafted deltas ...
        benign_rows = updates.deltas[~is_crafted]  # ... and the benign ones the attackers were shown
        order = lambda t: t[torch.argsort(t[:, 0])]  # noqa: E731
        assert torch.allclose(order(benign_rows), order(context.benign), atol=1e-6)
        assert torch.equal(context.global_vector, updates.global_vector)
    assert result.rounds[-1]["sampled_malicious"] == 2


def test_a_training_attack_gets_its_hooks_and_asr_is_measured(monkeypatch):
    backdoor = fakes.Backdoor()
    monkeypatch.setitem(fakes.ATTACKS, "backdoor", lambda **params: backdoor)
    result = run_federation(config(attack="backdoor", malicious_fraction=0.5, rounds=2))
    assert backdoor.finalized == 3 * 2  # three malicious clients, two rounds
    assert all(0.0 <= r["asr"] <= 1.0 for r in result.rounds) and result.initial["asr"] is not None


def test_malformed_attackers_are_dropped_every_round_and_the_run_goes_on():
    result = run_federation(config(attack="nan", malicious_fraction=0.34, rounds=2))
    assert [r["dropped"] for r in result.rounds] == [2, 2]
    assert all(r["metrics"]["dropped-non-finite"] == 2 for r in result.rounds)
    assert result.rounds[-1]["accuracy"] > result.initial["accuracy"]


def test_detection_rates_reach_the_round_records():
    result = run_federation(config(attack="recorder", malicious_fraction=0.34, defense="droplargest",
                                   defense_params={"k": 2}, rounds=2))
    assert all(r["tpr"] == 1.0 and r["fpr"] == 0.0 for r in result.rounds)


def test_flowers_own_median_runs_with_the_same_records():
    result = run_federation(config(attack="recorder", malicious_fraction=0.34, defense="flower-median", rounds=2))
    assert result.rounds[-1]["accuracy"] > result.initial["accuracy"]
    assert all(r["sampled_malicious"] == 2 and r["dropped"] == 0 for r in result.rounds)


@pytest.mark.parametrize("field,value", [("rounds", 0), ("fraction", 0.0), ("num_clients", -1),
                                         ("malicious_fraction", 1.0), ("engine", "spark"), ("partition", "zipf"),
                                         ("max_update_norm", -2.0), ("attack", None)])
def test_bad_configs_name_the_field(field, value):
    kwargs = {field: value}
    if field == "attack":
        kwargs["malicious_fraction"] = 0.2
    with pytest.raises(InvalidArgumentError, match=field):
        run_federation(config(**kwargs))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Flower's simulation extra (ray) is absent")
def test_the_ray_engine_runs_the_same_federation(monkeypatch):
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    result = run_federation(config(engine="ray", num_clients=3, rounds=2, attack="recorder", malicious_fraction=0.34,
                                   defense="droplargest", ray_num_cpus=1))
    assert [r["round"] for r in result.rounds] == [1, 2]
    assert all(r["sampled_malicious"] == 1 and r["tpr"] == 1.0 and r["fpr"] == 0.0 for r in result.rounds)
    assert result.rounds[-1]["accuracy"] > result.initial["accuracy"]


def test_the_ray_engine_without_ray_is_a_one_line_dependency_error(monkeypatch):
    from artshield.errors import DependencyError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    with pytest.raises(DependencyError, match=r"flwr\[simulation\]") as error:
        run_federation(config(engine="ray", num_clients=2, rounds=1))
    assert "\n" not in str(error.value)
