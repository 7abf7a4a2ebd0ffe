"""RobustStrategy and the wrapped Flower strategies: validation of every malformed reply, deltas, detection."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum

from artshield.errors import InvalidArgumentError
from artshield.fl_bridge import messages as M
from artshield.fl_bridge.defenses.base import Aggregate, AggregationRule
from artshield.fl_bridge.grid import LocalGrid
from artshield.fl_bridge.strategy import DROP_REASONS, RobustStrategy, flower_strategy
from artshield.fl_bridge.updates import ParameterLayout
from fl_platform_fakes import DropLargestRule, MeanRule

SHAPES = {"w": (3, 4), "b": (3,)}


def global_arrays() -> ArrayRecord:
    return ArrayRecord({"w": Array(np.arange(12, dtype=np.float32).reshape(3, 4) / 10),
                        "b": Array(np.zeros(3, dtype=np.float32)),
                        "steps": Array(np.array([7], dtype=np.int64))})


LAYOUT = ParameterLayout.from_arrays({k: a.numpy() for k, a in global_arrays().items()})


def local(delta: float) -> dict[str, np.ndarray]:
    return {k: a.numpy() + (np.float32(delta) if a.dtype.startswith("float") else 0)
            for k, a in global_arrays().items()}


def instruction(node: int, server_round: int = 1) -> Message:
    M.set_task_identity(7)
    message = Message(RecordDict({"arrays": global_arrays(), "config": ConfigRecord({"server-round": server_round})}),
                      node, "train", group_id=str(server_round))
    M.assign_message_id(message, f"m-{node}-{server_round}")
    return message


def reply(node: int, arrays: dict | None, *, server_round: int = 1, num_examples=10, metrics=None,
          raw: ArrayRecord | None = None) -> Message:
    record = raw if raw is not None else ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})
    content = {"arrays": record, "metrics": MetricRecord(metrics if metrics is not None
                                                         else {"num-examples": num_examples})}
    return Message(RecordDict(content), reply_to=instruction(node, server_round))


def started(strategy, server_round: int = 1):
    grid = LocalGrid(lambda m, c: None, 4, seed=0)
    strategy.configure_train(server_round, global_arrays(), ConfigRecord(), grid)
    return strategy


def robust(rule=None, **kwargs) -> RobustStrategy:
    kwargs.setdefault("min_available_nodes", 1)
    return started(RobustStrategy(rule or MeanRule(), LAYOUT, **kwargs))


def vector_of(arrays: ArrayRecord) -> torch.Tensor:
    return M.arrays_to_vector(arrays, LAYOUT)


def test_mean_of_deltas_keeps_dtypes_and_integer_buffers():
    strategy = robust()
    arrays, metrics = strategy.aggregate_train(1, [reply(1, local(1.0)), reply(2, local(3.0))])
    assert torch.allclose(vector_of(arrays), vector_of(global_arrays()) + 2.0)
    assert arrays["w"].dtype == "float32" and arrays["steps"].numpy().tolist() == [7]
    assert list(arrays.keys()) == ["w", "b", "steps"]
    assert metrics["dropped"] == 0 and metrics["received"] == 2 and metrics["aggregated"] == 2
    seen = strategy.rule.seen[-1]
    assert seen.deltas.shape == (2, LAYOUT.size) and torch.allclose(seen.deltas[1], torch.full((15,), 3.0))
    assert seen.num_examples.tolist() == [10.0, 10.0] and seen.server_round == 1


def _bad(kind: str, node: int) -> Message:
    good = local(0.5)
    if kind == "nan":
        good["w"][0, 0] = np.nan
        return reply(node, good)
    if kind == "inf":
        good["b"][1] = -np.inf
        return reply(node, good)
    if kind == "wrong-shape":
        good["w"] = np.zeros((4, 3), np.float32)
        return reply(node, good)
    if kind == "missing-key":
        del good["b"]
        return reply(node, good)
    if kind == "extra-key":
        good["evil"] = np.zeros(2, np.float32)
        return reply(node, good)
    if kind == "wrong-dtype":
        good["w"] = good["w"].astype(np.float64)
        return reply(node, good)
    if kind == "gigantic":
        good["w"] = np.zeros((3, 4_000_000), np.float32)
        return reply(node, good)
    if kind == "lying-header":  # metadata claims the right shape, the bytes hold far more
        big = Array(np.zeros(3_000_000, np.float32))
        raw = ArrayRecord({k: Array(v) for k, v in good.items()})
        raw["w"] = Array(dtype="float32", shape=(3, 4), stype=big.stype, data=big.data)
        return reply(node, None, raw=raw)
    if kind == "undecodable":
        raw = ArrayRecord({k: Array(v) for k, v in good.items()})
        raw["w"] = Array(dtype="float32", shape=(3, 4), stype="numpy.ndarray", data=b"\x00" * 48)
        return reply(node, None, raw=raw)
    if kind == "other-round":
        return reply(node, good, server_round=0)
    if kind == "error":
        return M.error_reply(instruction(node), "RuntimeError: the client crashed")
    if kind == "no-arrays":
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 3})}), reply_to=instruction(node))
    if kind == "bad-metrics":
        return reply(node, good, metrics={"loss": 1.0})
    if kind == "negative-weight":
        return reply(node, good, num_examples=-5)
    if kind == "absurd-norm":
        good["w"][:] = 1e13
        return reply(node, good)
    raise AssertionError(kind)


CASES = {"nan": "non-finite", "inf": "non-finite", "wrong-shape": "wrong-shape", "missing-key": "missing-keys",
         "extra-key": "extra-keys", "wrong-dtype": "wrong-dtype", "gigantic": "oversized",
         "lying-header": "oversized", "undecodable": "undecodable", "other-round": "other-round", "error": "error",
         "no-arrays": "no-arrays", "bad-metrics": "bad-metrics", "negative-weight": "bad-metrics",
         "absurd-norm": "too-large"}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_each_malformed_reply_is_dropped_and_counted(kind, caplog):
    strategy = robust()
    arrays, metrics = strategy.aggregate_train(1, [reply(1, local(1.0)), _bad(kind, 2), reply(3, local(3.0))])
    assert torch.allclose(vector_of(arrays), vector_of(global_arrays()) + 2.0)  # the bad reply did not count
    reason = CASES[kind]
    assert metrics["dropped"] == 1 and metrics[f"dropped-{reason}"] == 1 and metrics["aggregated"] == 2
    assert all(metrics[f"dropped-{r}"] == 0 for r in DROP_REASONS if r != reason)
    assert f"node 2 ({reason}" in caplog.text


def test_max_update_norm_drops_large_updates():
    strategy = robust(max_update_norm=5.0)  # ||delta|| = |c| * sqrt(15)
    arrays, metrics = strategy.aggregate_train(1, [reply(1, local(1.0)), reply(2, local(2.0))])
    assert metrics["dropped-too-large"] == 1
    assert torch.allclose(vector_of(arrays), vector_of(global_arrays()) + 1.0)
    with pytest.raises(InvalidArgumentError, match="max_update_norm"):
        RobustStrategy(MeanRule(), LAYOUT, max_update_norm=-1.0)


def test_all_dropped_keeps_the_old_model():
    strategy = robust()
    arrays, metrics = strategy.aggregate_train(1, [_bad("nan", 1), _bad("error", 2), _bad("wrong-dtype", 3)])
    assert arrays is None  # Strategy.start keeps the previous arrays
    assert metrics["dropped"] == 3 and metrics["aggregated"] == 0 and 1 in strategy.kept_model


def test_a_non_finite_aggregate_keeps_the_old_model():
    class Broken(AggregationRule):
        name = "broken"

        def aggregate(self, updates):
            return Aggregate(torch.full((updates.deltas.shape[1],), float("nan")))

    arrays, metrics = robust(Broken()).aggregate_train(1, [reply(1, local(1.0))])
    assert arrays is None and metrics["aggregate-rejected"] == 1


def test_detection_rates_from_a_selecting_rule():
    strategy = robust(DropLargestRule(k=2), malicious_nodes={3, 4})
    replies = [reply(1, local(0.1)), reply(2, local(0.2)), reply(3, local(5.0)), reply(4, local(0.3)),
               reply(5, local(6.0))]
    arrays, metrics = strategy.aggregate_train(1, replies)
    # rejected: nodes 5 (benign) and 3 (malicious); node 4 (malicious) got through
    assert metrics["tpr"] == pytest.approx(0.5) and metrics["fpr"] == pytest.approx(1 / 3)
    assert metrics["accepted"] == 3 and strategy.last_accepted == [1, 2, 4]
    assert torch.allclose(vector_of(arrays), vector_of(global_arrays()) + 0.2)


def test_no_detection_metrics_for_a_rule_that_does_not_select():
    _, metrics = robust(malicious_nodes={1}).aggregate_train(1, [reply(1, local(1.0)), reply(2, local(1.0))])
    assert "tpr" not in metrics and "fpr" not in metrics


def test_seeded_sampling_repeats_and_leaves_the_global_random_state_alone():
    grid = LocalGrid(lambda m, c: None, 20, seed=3)

    def sampled(seed):
        strategy = RobustStrategy(MeanRule(), LAYOUT, seed=seed, fraction_train=0.25, min_available_nodes=20)
        return [[m.metadata.dst_node_id for m in strategy.configure_train(r, global_arrays(), ConfigRecord(), grid)]
                for r in (1, 2, 3)]

    random.seed(99)
    before = random.random()
    random.seed(99)
    first = sampled(5)
    assert random.random() == before
    assert first == sampled(5) and first != sampled(6)
    assert all(len(r) == 5 for r in first) and first[0] != first[1]


def test_messages_carry_the_round_as_group_id():
    strategy = RobustStrategy(MeanRule(), LAYOUT, seed=0, min_available_nodes=1)
    grid = LocalGrid(lambda m, c: None, 3, seed=0)
    messages = list(strategy.configure_train(4, global_arrays(), ConfigRecord(), grid))
    assert {m.metadata.group_id for m in messages} == {"4"} and len(messages) == 3


@pytest.mark.parametrize("name,cls", [("flower-krum", Krum), ("multikrum", MultiKrum), ("flower-bulyan", Bulyan),
                                      ("flower-median", FedMedian), ("trimmedmean", FedTrimmedAvg)])
def test_flower_strategy_is_flowers_own_class(name, cls):
    strategy = flower_strategy(name, seed=0)
    assert isinstance(strategy, cls)
    assert type(strategy).aggregate_train is not cls.aggregate_train  # only wrapped around it


def test_flower_strategy_refuses_unknown_names_and_parameters():
    with pytest.raises(InvalidArgumentError, match="flower-nope"):
        flower_strategy("flower-nope")
    with pytest.raises(InvalidArgumentError, match="'gamma'"):
        flower_strategy("flower-krum", gamma=3)
    with pytest.raises(InvalidArgumentError, match="beta"):
        flower_strategy("flower-trimmedmean", beta=0.9)


def test_flower_median_drops_malformed_replies_and_reports_the_same_metrics():
    strategy = started(flower_strategy("flower-median", layout=LAYOUT, seed=0, min_available_nodes=1))
    replies = [reply(1, local(1.0)), _bad("nan", 2), reply(3, local(2.0), metrics={"num-examples": 4, "x": 1.0}),
               reply(4, local(10.0)), _bad("extra-key", 5)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert torch.allclose(vector_of(arrays), vector_of(global_arrays()) + 2.0)  # Flower's median of 1, 2, 10
    assert metrics["dropped"] == 2 and metrics["dropped-non-finite"] == 1 and metrics["dropped-extra-keys"] == 1


def test_flower_krum_survives_an_all_dropped_round_and_too_few_replies():
    strategy = started(flower_strategy("flower-bulyan", layout=LAYOUT, seed=0, min_available_nodes=1,
                                       num_malicious_nodes=1))
    arrays, metrics = strategy.aggregate_train(1, [_bad("nan", 1), _bad("error", 2)])
    assert arrays is None and metrics["dropped"] == 2
    arrays, metrics = strategy.aggregate_train(1, [reply(1, local(1.0)), reply(2, local(1.0))])  # needs 4f+3
    assert arrays is None and metrics["aggregate-rejected"] == 1
