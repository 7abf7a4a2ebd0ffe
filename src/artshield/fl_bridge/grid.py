"""Grids: the in-process driver (no Ray, no SuperLink) and the omniscient attackers' exchange.

:class:`LocalGrid` is a :class:`flwr.serverapp.Grid` whose ``send_and_receive`` hands every message to a
:class:`flwr.clientapp.ClientApp` synchronously, in order, in this process. Flower's own strategies (and
ours) run on it unchanged through ``strategy.start(grid=LocalGrid(...), ...)``; a run is deterministic
given the client app's seeds, because nothing is concurrent and node ids come from a seed.

:class:`OmniscientExchange` wraps any grid (LocalGrid, or the Simulation Engine's) and gives colluding
malicious nodes what omniscient attacks assume (LIE, min-max, IPM, Fang): after the ``train`` replies come
back, it sends a ``train.craft`` message to each malicious node that replied, carrying the round's global
model, the colluding nodes' honest local models and (for omniscient attacks) the benign replies' local
models, and substitutes the crafted replies for the honest ones. The strategy under test only ever sees
``train`` replies: it does not know the exchange happened.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from . import messages as M

logger = logging.getLogger(__name__)


class LocalGrid(Grid):
    """Runs a ClientApp in this process for `num_nodes` nodes, one message at a time.

    Each node has a fixed node id (drawn from `seed`, like the random 63-bit ids of Flower's runtimes), a
    ``node_config`` with Flower's ``partition-id`` / ``num-partitions`` keys, and a persistent
    :class:`~flwr.app.Context` (its ``state`` survives across rounds, as on a SuperNode). An exception in the
    client app becomes an error reply, as the Simulation Engine does.
    """

    def __init__(self, client_app: ClientApp | Callable[[Message, Context], Message], num_nodes: int, *,
                 seed: int = 0, run_id: int = 1, run_config: Mapping | None = None):
        if num_nodes < 1:
            raise ValueError("a LocalGrid needs at least one node")
        self.client_app = client_app
        rng = random.Random(seed)
        ids: list[int] = []
        while len(ids) < num_nodes:
            node_id = rng.getrandbits(63)
            if node_id > M.SERVER_NODE_ID and node_id not in ids:
                ids.append(node_id)
        self.node_ids = ids
        self._partition = {node: i for i, node in enumerate(ids)}
        self._contexts = {
            node: Context(run_id=run_id, node_id=node,
                          node_config={M.PARTITION_ID: i, M.NUM_PARTITIONS: num_nodes},
                          state=RecordDict(), run_config=dict(run_config or {}))
            for i, node in enumerate(ids)}
        self._run = Run.create_empty(run_id)
        self._replies: dict[str, Message] = {}
        self._count = 0
        M.set_task_identity(run_id)

    # -- Grid API
    def set_run(self, run: Run) -> None:
        self._run = run
        M.set_task_identity(run.run_id)

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)

    def partition_of(self, node_id: int) -> int:
        """The data partition node `node_id` holds."""
        return self._partition[node_id]

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for message in messages:
            self._count += 1
            message_id = f"local-{self._count}"
            M.assign_message_id(message, message_id)
            self._replies[message_id] = self._deliver(message)
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        return self.pull_messages(self.push_messages(messages))

    def _deliver(self, message: Message) -> Message:
        context = self._contexts.get(message.metadata.dst_node_id)
        if context is None:
            return M.error_reply(message, f"no node {message.metadata.dst_node_id}", M.ERROR_NODE_UNAVAILABLE)
        try:
            reply = self.client_app(message, context)
        except Exception as error:  # a failing client must not stop the server: Flower sends an error reply
            logger.debug("client app raised on node %d", context.node_id, exc_info=True)
            return M.error_reply(message, f"{type(error).__name__}: {error}")
        if not isinstance(reply, Message):
            return M.error_reply(message, f"the client app returned {type(reply).__name__}, not a Message")
        return reply


class OmniscientExchange(Grid):
    """Wraps a grid so that malicious nodes replace their ``train`` replies with crafted ones.

    `malicious_nodes` are the colluding nodes' ids; with `share_benign` the ``train.craft`` message also
    carries the benign nodes' replies of the round (omniscient attacks), else only the group's own honest
    models (attacks that craft from what the attacker trained itself). Everything else passes through.
    ``crafts`` counts the exchanges (one per round with a malicious node sampled).
    """

    def __init__(self, grid: Grid, malicious_nodes: Iterable[int], *, share_benign: bool = True):
        self.grid = grid
        self.malicious_nodes = frozenset(int(n) for n in malicious_nodes)
        self.share_benign = share_benign
        self.crafts = 0

    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        return self.grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def get_nodes(self):
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        train = [m for m in messages if m.metadata.message_type == M.TRAIN]
        if not train or not self.malicious_nodes:
            return replies
        sent = {m.metadata.dst_node_id: m for m in train}
        own = [(r.metadata.src_node_id, r) for r in replies
               if r.metadata.src_node_id in self.malicious_nodes and r.metadata.src_node_id in sent
               and not r.has_error() and M.ARRAYS in r.content.array_records]
        if not own:
            return replies
        benign = None
        if self.share_benign:
            benign = [r.content[M.ARRAYS] for r in replies
                      if r.metadata.src_node_id not in self.malicious_nodes and r.metadata.src_node_id in sent
                      and not r.has_error() and M.ARRAYS in r.content.array_records]
        first = sent[own[0][0]]
        config = dict(first.content[M.CONFIG]) if M.CONFIG in first.content.config_records else {}
        config.setdefault(M.SERVER_ROUND, 0)
        config[M.NUM_CLIENTS] = len(train)
        content = M.craft_content(first.content[M.ARRAYS], [(node, r.content[M.ARRAYS]) for node, r in own],
                                  benign, {k: v for k, v in config.items() if isinstance(v, int | float)})
        craft = [Message(content, node, M.CRAFT, group_id=sent[node].metadata.group_id) for node, _ in own]
        crafted = {r.metadata.src_node_id: r for r in self.grid.send_and_receive(craft, timeout=timeout)}
        self.crafts += 1
        out = []
        for reply in replies:
            node = reply.metadata.src_node_id
            if any(node == n for n, _ in own):
                reply = self._substitute(sent[node], crafted.get(node))
            out.append(reply)
        return out

    @staticmethod
    def _substitute(train_message: Message, crafted: Message | None) -> Message:
        """The crafted reply, re-addressed as the reply to the node's ``train`` message."""
        if crafted is None:
            return M.error_reply(train_message, "no reply to train.craft")
        if crafted.has_error():
            return M.error_reply(train_message, f"train.craft failed: {crafted.error.reason}", crafted.error.code)
        return Message(crafted.content, reply_to=train_message)


def discover_partitions(grid: Grid, num_nodes: int | None = None, timeout: float = 600.0) -> dict[int, int]:
    """``{node id: partition id}`` for every node, asked through a ``query.partition`` message.

    The Simulation Engine gives nodes random ids and tells only each node its ``partition-id``; a server that
    must know which nodes are malicious (for detection metrics) asks them. With `num_nodes`, waits (up to
    `timeout` seconds) until that many nodes are connected, as Flower's own sampling does.
    """
    end = time.monotonic() + timeout
    node_ids = list(grid.get_node_ids())
    while num_nodes is not None and len(node_ids) < num_nodes:
        if time.monotonic() > end:
            raise RuntimeError(f"only {len(node_ids)} of {num_nodes} nodes connected within {timeout:g} s")
        time.sleep(0.05)
        node_ids = list(grid.get_node_ids())
    queries = [Message(RecordDict({M.CONFIG: ConfigRecord({})}), node, M.QUERY_PARTITION) for node in node_ids]
    found = {}
    for reply in grid.send_and_receive(queries, timeout=max(1.0, end - time.monotonic())):
        if not reply.has_error():
            found[reply.metadata.src_node_id] = int(reply.content[M.METRICS][M.PARTITION_ID])
    missing = [n for n in node_ids if n not in found]
    if missing or not found:
        raise RuntimeError(f"{len(missing)} of {len(node_ids)} node(s) did not say which partition they hold")
    return found
