"""Flower messages for fl_bridge: model arrays as update vectors, and the messages the platform exchanges.

Flower carries a model as an :class:`~flwr.app.ArrayRecord` (named, serialised NumPy arrays); attacks and
defenses work on one flat float32 vector per client (:class:`~artshield.fl_bridge.updates.ParameterLayout`).
This module converts between the two and builds the few messages the platform sends:

- ``train`` (Flower's own, built by the strategy): ``{"arrays": global model, "config": {"server-round": r, ...}}``;
  the reply is ``{"arrays": local model, "metrics": {"num-examples": n, ...}}`` as in every Flower example.
- ``train.craft`` (the omniscient exchange, :class:`~artshield.fl_bridge.grid.OmniscientExchange`):
  ``{"global": ..., "own-<i>": ..., "benign-<j>": ..., "config": {...}}``; the reply is a ``train`` reply.
- ``query`` (``partition``): which data partition a node holds, so a server that only knows node ids (the
  Simulation Engine picks random ones) can tell malicious nodes apart for detection metrics.

It is also the one place that touches Flower internals: :func:`set_task_identity` and
:func:`assign_message_id` (see their comments).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from .updates import ParameterLayout

ARRAYS = "arrays"
METRICS = "metrics"
CONFIG = "config"
NUM_EXAMPLES = "num-examples"
SERVER_ROUND = "server-round"
NUM_CLIENTS = "num-clients"
PARTITION_ID = "partition-id"  # Flower's node_config key (flwr.common.constant.PARTITION_ID_KEY)
NUM_PARTITIONS = "num-partitions"

TRAIN = "train"
CRAFT = "train.craft"
QUERY_PARTITION = "query.partition"

GLOBAL = "global"
OWN_PREFIX = "own-"
BENIGN_PREFIX = "benign-"
OWN_NODES = "own-nodes"

ERROR_CLIENT_RAISED = 2  # flwr.common.constant.ErrorCode.CLIENT_APP_RAISED_EXCEPTION
ERROR_NODE_UNAVAILABLE = 5  # flwr.common.constant.ErrorCode.NODE_UNAVAILABLE

SERVER_NODE_ID = 1  # flwr.common.constant.SUPERLINK_NODE_ID


def set_task_identity(run_id: int) -> None:
    """Make Flower able to build instruction messages in this process.

    Flower 1.42's ``Message(content, dst_node_id, message_type)`` reads the process-global
    ``flwr.supercore.task_identity.TaskIdentity`` (run id, node id, task id), which Flower's own runtimes set
    before they run a ServerApp (``run_serverapp.py``, and ``_run_simulation`` for the legacy Python API).
    The in-process driver and unit tests have no runtime, so they set it here. This is a private Flower API
    (not exported from ``flwr.app``/``flwr.serverapp``) and the ONLY place fl_bridge touches it: if a Flower
    upgrade moves it, this function is what to fix.
    """
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id = 1
    TaskIdentity.run_id = int(run_id)
    TaskIdentity.node_id = SERVER_NODE_ID


def assign_message_id(message: Message, message_id: str) -> None:
    """Give an instruction message the id a SuperLink would give it when it is pushed.

    ``Metadata.message_id`` has no public setter; Flower's own ``InMemoryGrid.push_messages`` writes the
    private slot exactly like this. Replies built with ``Message(..., reply_to=message)`` then carry it as
    ``reply_to_message_id``.
    """
    message.metadata.__dict__["_message_id"] = message_id


# --------------------------------------------------------------------------------------------- arrays <-> vector

def arrays_to_vector(record: ArrayRecord, layout: ParameterLayout) -> torch.Tensor:
    """The layout's floating arrays of `record` as one float32 vector (names a missing or misshapen array)."""
    return layout.flatten({name: record[name].numpy() for name in layout.names if name in record})


def state_to_arrays(state: Mapping[str, torch.Tensor | np.ndarray]) -> ArrayRecord:
    """A model's state dict (or a mapping of arrays) as an ArrayRecord, in order."""
    return ArrayRecord({name: Array(_to_numpy(value)) for name, value in state.items()})


def vector_to_arrays(vector: torch.Tensor, layout: ParameterLayout,
                     template: ArrayRecord | None = None) -> ArrayRecord:
    """An ArrayRecord holding `vector` (shape ``(layout.size,)``) in the layout's named arrays.

    With a `template` (normally the round's global arrays), every array keeps the template's order and
    dtype, and arrays outside the layout (integer buffers) are carried over unchanged.
    """
    named = layout.unflatten(vector.detach().to("cpu"))
    if template is None:
        return ArrayRecord({name: Array(np.ascontiguousarray(v.numpy())) for name, v in named.items()})
    out = {}
    for name, array in template.items():
        if name in named:
            value = named[name].numpy()
            if str(value.dtype) != array.dtype:
                value = value.astype(np.dtype(array.dtype))
            out[name] = Array(np.ascontiguousarray(value))
        else:
            out[name] = array
    return ArrayRecord(out)


def _to_numpy(value: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return np.ascontiguousarray(value.detach().to("cpu").numpy())
    return np.ascontiguousarray(value)


# --------------------------------------------------------------------------------------------- message builders

def train_reply(message: Message, arrays: ArrayRecord, num_examples: int, **metrics: float) -> Message:
    """A ``train`` reply in Flower's convention: the local model and ``num-examples`` (the FedAvg weight)."""
    record = MetricRecord({NUM_EXAMPLES: int(num_examples), **{k: float(v) for k, v in metrics.items()}})
    return Message(RecordDict({ARRAYS: arrays, METRICS: record}), reply_to=message)


def metrics_reply(message: Message, **metrics: float | int) -> Message:
    """A reply carrying only metrics (``evaluate`` and ``query`` handlers)."""
    return Message(RecordDict({METRICS: MetricRecord(dict(metrics))}), reply_to=message)


def error_reply(message: Message, reason: str, code: int = ERROR_CLIENT_RAISED) -> Message:
    """The reply a failed client sends (Flower's ``Error``)."""
    return Message(Error(code=code, reason=reason), reply_to=message)


def craft_content(global_arrays: ArrayRecord, own: list[tuple[int, ArrayRecord]],
                  benign: list[ArrayRecord] | None, config: Mapping[str, int | float]) -> RecordDict:
    """The ``train.craft`` payload: the global model, the colluding nodes' honest local models (with their node
    ids, in order) and, for omniscient attacks, the benign nodes' local models of the same round."""
    content: dict = {GLOBAL: global_arrays}
    for i, (_, arrays) in enumerate(own):
        content[f"{OWN_PREFIX}{i}"] = arrays
    for j, arrays in enumerate(benign or ()):
        content[f"{BENIGN_PREFIX}{j}"] = arrays
    content[CONFIG] = ConfigRecord({**dict(config), OWN_NODES: [int(node) for node, _ in own]})
    return RecordDict(content)


def read_craft_content(content: RecordDict, layout: ParameterLayout
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, ConfigRecord]:
    """``(global (d,), own deltas (f,d), benign deltas (m,d) | None, config)`` from a ``train.craft`` payload."""
    global_vector = arrays_to_vector(content[GLOBAL], layout)
    config = content[CONFIG]
    num_own = len(config[OWN_NODES])
    own = torch.stack([arrays_to_vector(content[f"{OWN_PREFIX}{i}"], layout) for i in range(num_own)])
    benign_keys = sorted((k for k in content.array_records if k.startswith(BENIGN_PREFIX)),
                         key=lambda k: int(k[len(BENIGN_PREFIX):]))
    benign = (torch.stack([arrays_to_vector(content[k], layout) for k in benign_keys]) - global_vector
              if benign_keys else None)
    return global_vector, own - global_vector, benign, config
