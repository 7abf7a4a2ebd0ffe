"""LocalGrid (Flower's loop in-process, no Ray), the omniscient exchange, and the message helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg

from artshield.fl_bridge import messages as M
from artshield.fl_bridge.grid import LocalGrid, OmniscientExchange, discover_partitions
from artshield.fl_bridge.strategy import RobustStrategy
from artshield.fl_bridge.updates import ParameterLayout
from fl_platform_fakes import MeanRule

INITIAL = ArrayRecord({"w": Array(np.zeros((2, 3), np.float32)), "b": Array(np.zeros(2, np.float32))})
LAYOUT = ParameterLayout.from_arrays({k: a.numpy() for k, a in INITIAL.items()})


def shift_app(shift=lambda pid, rnd: pid + 1.0, crafts: list | None = None, craft_value=-100.0) -> ClientApp:
    """Clients reply with global + shift(partition, round); `train.craft` records what it got and replies
    with global + craft_value."""
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        pid = context.node_config["partition-id"]
        rnd = message.content["config"]["server-round"]
        vector = M.arrays_to_vector(message.content["arrays"], LAYOUT)
        value = shift(pid, rnd)
        if value is None:
            raise RuntimeError(f"partition {pid} fails")
        return M.train_reply(message, M.vector_to_arrays(vector + value, LAYOUT, message.content["arrays"]), 10)

    @app.train("craft")
    def craft(message: Message, context: Context) -> Message:
        global_vector, own, benign, config = M.read_craft_content(message.content, LAYOUT)
        if crafts is not None:
            crafts.append((context.node_id, own, benign, dict(config)))
        return M.train_reply(message, M.vector_to_arrays(global_vector + craft_value, LAYOUT), 10)

    @app.query("partition")
    def query(message: Message, context: Context) -> Message:
        return M.metrics_reply(message, **{"partition-id": context.node_config["partition-id"]})

    return app


def run(strategy, grid, rounds=2):
    return strategy.start(grid=grid, initial_arrays=INITIAL, num_rounds=rounds)


def test_flowers_own_fedavg_runs_on_the_local_grid():
    grid = LocalGrid(shift_app(), 4, seed=0)
    result = run(FedAvg(fraction_evaluate=0.0, min_available_nodes=4), grid, rounds=3)
    # every round adds the mean shift (1+2+3+4)/4 = 2.5
    assert np.allclose(result.arrays["w"].numpy(), 7.5) and np.allclose(result.arrays["b"].numpy(), 7.5)


def test_nodes_are_deterministic_and_know_their_partitions():
    a, b = LocalGrid(shift_app(), 5, seed=1), LocalGrid(shift_app(), 5, seed=1)
    assert a.get_node_ids() == b.get_node_ids() != LocalGrid(shift_app(), 5, seed=2).get_node_ids()
    assert len(set(a.get_node_ids())) == 5 and all(n > 1 for n in a.get_node_ids())
    mapping = discover_partitions(a)
    assert sorted(mapping.values()) == list(range(5))
    assert all(a.partition_of(node) == pid for node, pid in mapping.items())


def test_a_failing_client_becomes_an_error_reply_and_the_round_continues():
    grid = LocalGrid(shift_app(lambda pid, rnd: None if pid == 0 else 1.0), 3, seed=0)
    strategy = RobustStrategy(MeanRule(), LAYOUT, seed=0, fraction_evaluate=0.0, min_available_nodes=3)
    result = run(strategy, grid, rounds=2)
    assert np.allclose(result.arrays["w"].numpy(), 2.0)
    assert all(result.train_metrics_clientapp[r]["dropped-error"] == 1 for r in (1, 2))
    message = Message(M.craft_content(INITIAL, [], None, {}), 12345, "train")
    (reply,) = grid.send_and_receive([message])
    assert reply.has_error() and "no node 12345" in reply.error.reason


def test_a_round_where_every_reply_is_dropped_keeps_the_model_and_the_run_goes_on():
    # round 1: everybody sends NaN; round 2: everybody sends +1
    grid = LocalGrid(shift_app(lambda pid, rnd: float("nan") if rnd == 1 else 1.0), 3, seed=0)
    strategy = RobustStrategy(MeanRule(), LAYOUT, seed=0, fraction_evaluate=0.0, min_available_nodes=3)
    seen = {}
    result = strategy.start(grid=grid, initial_arrays=INITIAL, num_rounds=2,
                            evaluate_fn=lambda r, arrays: seen.update({r: M.arrays_to_vector(arrays, LAYOUT)}))
    assert torch.equal(seen[1], torch.zeros(8))  # round 1 kept the initial model
    assert torch.allclose(seen[2], torch.ones(8))
    assert result.train_metrics_clientapp[1]["dropped-non-finite"] == 3 and strategy.kept_model == {1}


@pytest.mark.parametrize("share_benign", [True, False])
def test_the_exchange_delivers_exactly_the_benign_updates_and_substitutes_the_crafted_ones(share_benign):
    crafts: list = []
    inner = LocalGrid(shift_app(crafts=crafts), 5, seed=0)
    partition_of = discover_partitions(inner)
    malicious = {node for node, pid in partition_of.items() if pid in (1, 3)}
    grid = OmniscientExchange(inner, malicious, share_benign=share_benign)
    strategy = RobustStrategy(MeanRule(), LAYOUT, malicious_nodes=malicious, seed=0, fraction_evaluate=0.0,
                              min_available_nodes=5)
    result = run(strategy, grid, rounds=1)
    assert grid.crafts == 1 and sorted(c[0] for c in crafts) == sorted(malicious)
    for _node, own, benign, config in crafts:
        # own: the colluders' honest deltas (partition + 1 = 2 and 4), in order
        assert sorted(own[:, 0].tolist()) == [2.0, 4.0]
        if share_benign:
            assert sorted(benign[:, 0].tolist()) == [1.0, 3.0, 5.0]  # partitions 0, 2, 4
            assert torch.equal(benign, benign[:, :1].expand(-1, 8))
        else:
            assert benign is None
        assert config["server-round"] == 1 and config["num-clients"] == 5
    # the strategy saw two crafted replies (-100) as if they were train replies, and aggregated them
    deltas = strategy.rule.seen[-1].deltas[:, 0].tolist()
    assert sorted(deltas) == [-100.0, -100.0, 1.0, 3.0, 5.0]
    assert np.allclose(result.arrays["w"].numpy(), (1 + 3 + 5 - 200) / 5)
    assert result.train_metrics_clientapp[1]["dropped"] == 0


def test_the_exchange_passes_through_without_malicious_nodes_sampled():
    crafts: list = []
    inner = LocalGrid(shift_app(crafts=crafts), 4, seed=0)
    grid = OmniscientExchange(inner, {999})
    run(FedAvg(fraction_evaluate=0.0, min_available_nodes=4), grid, rounds=1)
    assert crafts == [] and grid.crafts == 0


def test_crafted_replies_answer_the_train_message():
    crafts: list = []
    inner = LocalGrid(shift_app(crafts=crafts), 3, seed=0)
    node = inner.get_node_ids()[0]
    grid = OmniscientExchange(inner, {node})
    M.set_task_identity(1)
    train = [Message(M.craft_content(INITIAL, [], None, {}), n, "train", group_id="1") for n in inner.get_node_ids()]
    for message in train:  # the train handler reads arrays and config
        message.content["arrays"] = INITIAL
        message.content["config"] = ConfigRecord({"server-round": 1})
    replies = grid.send_and_receive(train)
    crafted = [r for r in replies if r.metadata.src_node_id == node][0]
    assert crafted.metadata.message_type == "train" and crafted.metadata.group_id == "1"
    assert crafted.metadata.reply_to_message_id == train[0].metadata.message_id
    assert np.allclose(crafted.content["arrays"]["w"].numpy(), -100.0)


def test_vector_round_trip_keeps_template_order_dtype_and_buffers():
    template = ArrayRecord({"steps": Array(np.array([3], np.int64)), "w": Array(np.ones((2, 2), np.float16)),
                            "b": Array(np.zeros(2, np.float32))})
    layout = ParameterLayout.from_arrays({k: a.numpy() for k, a in template.items()})
    vector = torch.arange(6, dtype=torch.float32)
    record = M.vector_to_arrays(vector, layout, template)
    assert list(record.keys()) == ["steps", "w", "b"]
    assert record["w"].dtype == "float16" and record["steps"].numpy().tolist() == [3]
    assert torch.equal(M.arrays_to_vector(record, layout), vector)
    state = {"w": torch.ones(2, 2), "b": torch.zeros(2)}
    assert torch.equal(M.arrays_to_vector(M.state_to_arrays(state), ParameterLayout.from_arrays(state)),
                       torch.tensor([1.0, 1, 1, 1, 0, 0]))
