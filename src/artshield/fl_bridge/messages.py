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

import math
from collections.abc import Mapping
from io import BytesIO

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from ..errors import InvalidArgumentError
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
#
# Flower's Array holds ``np.save`` bytes; ``Array.numpy()`` re-parses the .npy header with ast.literal_eval for
# every array (~70 µs, most of a small client's round trip). For the plain C-order arrays Flower itself writes,
# the header is a pure function of (dtype, shape): we build it once and check that a payload starts with
# exactly those bytes and has exactly the right length, then read it with np.frombuffer. Anything else (Fortran
# order, another .npy version, a header that disagrees with the metadata) falls back to Array.numpy().

_NPY = "numpy.ndarray"  # flwr.app Array stype for np.save bytes
_HEADERS: dict[tuple[str, tuple[int, ...]], bytes] = {}


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    key = (dtype.str, shape)
    header = _HEADERS.get(key)
    if header is None:
        buffer = BytesIO()
        np.lib.format.write_array_header_1_0(
            buffer, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
        header = buffer.getvalue()
        if len(_HEADERS) < 4096:
            _HEADERS[key] = header
    return header


def encode_array(value: np.ndarray | torch.Tensor) -> Array:
    """``Array(value)`` (the same bytes ``np.save`` writes), without re-serialising the header every time."""
    value = _to_numpy(value)
    if value.dtype.hasobject or value.dtype.kind not in "biuf":
        return Array(value)
    header = _npy_header(value.dtype, tuple(value.shape))
    return Array(dtype=str(value.dtype), shape=tuple(int(s) for s in value.shape), stype=_NPY,
                 data=header + value.tobytes())


def decode_array(array: Array) -> np.ndarray:
    """``array.numpy()`` (read-only result), fast for the plain arrays Flower writes; never unpickles."""
    try:
        dtype, shape = np.dtype(array.dtype), tuple(int(s) for s in array.shape)
    except (TypeError, ValueError):
        return array.numpy()
    if array.stype == _NPY and not dtype.hasobject and dtype.kind in "biuf":
        header = _npy_header(dtype, shape)
        data = array.data
        if len(data) == len(header) + dtype.itemsize * math.prod(shape) and data.startswith(header):
            return np.frombuffer(data, dtype=dtype, offset=len(header)).reshape(shape)
    return array.numpy()


def arrays_to_vector(record: ArrayRecord, layout: ParameterLayout) -> torch.Tensor:
    """The layout's floating arrays of `record` as one float32 vector (names a missing or misshapen array)."""
    out = np.empty(layout.size, dtype=np.float32)
    for entry in layout:
        if entry.name not in record:
            raise InvalidArgumentError(f"the update has no array named {entry.name!r}")
        value = decode_array(record[entry.name])
        if tuple(value.shape) != entry.shape:
            raise InvalidArgumentError(
                f"array {entry.name!r} has shape {tuple(value.shape)}, the model's is {entry.shape}")
        out[entry.span] = value.reshape(-1)
    return torch.from_numpy(out)


def state_to_arrays(state: Mapping[str, torch.Tensor | np.ndarray]) -> ArrayRecord:
    """A model's state dict (or a mapping of arrays) as an ArrayRecord, in order."""
    return ArrayRecord({name: encode_array(value) for name, value in state.items()})


def vector_to_arrays(vector: torch.Tensor, layout: ParameterLayout,
                     template: ArrayRecord | None = None) -> ArrayRecord:
    """An ArrayRecord holding `vector` (shape ``(layout.size,)``) in the layout's named arrays.

    With a `template` (normally the round's global arrays), every array keeps the template's order and
    dtype, and arrays outside the layout (integer buffers) are carried over unchanged.
    """
    named = layout.unflatten(vector.detach().to("cpu", torch.float32))
    if template is None:
        return ArrayRecord({name: encode_array(v.numpy()) for name, v in named.items()})
    out = {}
    for name, array in template.items():
        if name in named:
            value = named[name].numpy()
            if str(value.dtype) != array.dtype:
                value = value.astype(np.dtype(array.dtype))
            out[name] = encode_array(value)
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
