"""Flower strategies for robust aggregation on deltas, and Flower's own robust strategies with the same metrics.

:class:`RobustStrategy` is a :class:`flwr.serverapp.strategy.FedAvg` subclass that drops into any Flower
ServerApp (``strategy.start(grid=grid, initial_arrays=..., num_rounds=...)``). It:

- stashes the round's global arrays in ``configure_train`` (Flower's ``aggregate_train`` never sees them,
  and every rule here works on *deltas*: local model minus global model);
- validates every reply before anything is computed from it, dropping (with a logged reason, counted in
  the round's MetricRecord as ``dropped`` and ``dropped-<reason>``) replies that carry an error, answer
  another round, lack the arrays or the ``num-examples`` weight, have missing or extra keys, a wrong dtype
  or shape, an oversized payload, undecodable bytes, NaN/inf, or a delta norm above ``max_update_norm``
  (or above an absurd 1e12 even without one);
- stacks the surviving deltas in one ``(n, d)`` tensor and calls the :class:`AggregationRule`;
- returns ``global + aggregate.delta`` as the new ArrayRecord; when every reply is dropped, or the rule's
  answer is not finite, the round keeps the old model;
- reports detection ``tpr``/``fpr`` when the rule selects clients and the experiment says which nodes are
  malicious (``malicious_nodes``);
- hands every accepted reply to an optional ``observer(server_round, node_id, delta, global_vector,
  num_examples)`` before aggregating: a curious server (:mod:`artshield.fl_bridge.leakage.runner`).

:func:`flower_strategy` returns Flower's own Krum, MultiKrum, Bulyan, FedMedian and FedTrimmedAvg
(``flwr.serverapp.strategy``) with their aggregation untouched: the wrapper validates replies the same way
(so a malformed reply cannot crash them) and records the same round metrics.

Both sample clients with a seeded generator when given a ``seed``: Flower samples with the module-level
``random``; the wrapper swaps in its own state around Flower's sampling and puts the caller's back.
"""

from __future__ import annotations

import inspect
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Bulyan, FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum

from ..errors import InvalidArgumentError
from . import messages as M
from .defenses.base import AggregationRule, RoundUpdates
from .updates import ParameterLayout

logger = logging.getLogger(__name__)

DROP_REASONS = ("error", "other-round", "no-arrays", "bad-metrics", "missing-keys", "extra-keys", "wrong-dtype",
                "oversized", "wrong-shape", "undecodable", "non-finite", "too-large")
ABSURD_NORM = 1e12  # a delta norm no training produces; dropped even without max_update_norm
_HEADER_SLACK = 1 << 16  # the .npy header Flower's Array carries is at most 64 KiB (format 1.0)


@dataclass
class ValidatedRound:
    """The replies that passed validation, as a stack of local models, and what was dropped."""

    vectors: torch.Tensor  # (n, d) local models (not deltas)
    num_examples: torch.Tensor  # (n,)
    node_ids: list[int]
    replies: list[Message]
    drops: Counter = field(default_factory=Counter)
    dropped_nodes: list[int] = field(default_factory=list)

    def metrics(self) -> dict[str, int]:
        out = {"received": len(self.replies) + sum(self.drops.values()), "dropped": sum(self.drops.values())}
        out.update({f"dropped-{reason}": int(self.drops.get(reason, 0)) for reason in DROP_REASONS})
        return out


class _Rejected(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


class ReplyValidator:
    """Checks ``train`` replies against the round's global arrays; see the module docstring for the rules."""

    def __init__(self, layout: ParameterLayout | None = None, *, max_update_norm: float | None = None,
                 arrays_key: str = M.ARRAYS, weighted_by_key: str = M.NUM_EXAMPLES):
        if max_update_norm is not None and not (max_update_norm > 0 and math.isfinite(max_update_norm)):
            raise InvalidArgumentError(f"max_update_norm must be a positive number, got {max_update_norm!r}")
        self.layout = layout
        self.max_update_norm = max_update_norm
        self.arrays_key = arrays_key
        self.weighted_by_key = weighted_by_key
        self.server_round = 0
        self.global_arrays: ArrayRecord | None = None
        self.global_vector: torch.Tensor | None = None

    def start_round(self, server_round: int, global_arrays: ArrayRecord) -> None:
        if self.layout is None:
            self.layout = ParameterLayout.from_arrays({k: a.numpy() for k, a in global_arrays.items()})
        self.server_round = int(server_round)
        self.global_arrays = global_arrays
        self._expected = {}
        for name, a in global_arrays.items():
            shape = tuple(int(x) for x in a.shape)
            self._expected[name] = (a.dtype, shape, math.prod(shape),
                                    math.prod(shape) * np.dtype(a.dtype).itemsize + _HEADER_SLACK)
        self.global_vector = M.arrays_to_vector(global_arrays, self.layout)

    def check(self, replies: Iterable[Message]) -> ValidatedRound:
        if self.global_arrays is None or self.layout is None:
            raise RuntimeError("ReplyValidator.check before start_round (configure_train was not called)")
        replies = list(replies)
        rows = torch.empty(len(replies), self.layout.size)
        rows_np = rows.numpy()  # shares memory; filled in place
        kept, weights, nodes, drops, dropped_nodes = [], [], [], Counter(), []
        for reply in replies:
            node = reply.metadata.src_node_id
            try:
                weights.append(self._check_one(reply, rows[len(kept)], rows_np[len(kept)]))
            except _Rejected as rejected:
                drops[rejected.reason] += 1
                dropped_nodes.append(node)
                logger.warning("round %d: dropped the reply of node %d (%s: %s)", self.server_round, node,
                               rejected.reason, rejected)
                continue
            kept.append(reply)
            nodes.append(node)
        return ValidatedRound(rows[:len(kept)], torch.tensor(weights, dtype=torch.float32), nodes, kept, drops,
                              dropped_nodes)

    def _check_one(self, reply: Message, row: torch.Tensor, row_np: np.ndarray) -> float:
        if reply.has_error():
            raise _Rejected("error", f"the client failed: {reply.error.reason}")
        if reply.metadata.group_id != str(self.server_round):
            raise _Rejected("other-round", f"a reply to round {reply.metadata.group_id!r}")
        if not reply.has_content():
            raise _Rejected("no-arrays", "an empty reply")
        content = reply.content
        records = content.array_records
        if self.arrays_key in records and len(records) == 1:
            arrays = records[self.arrays_key]
        else:
            raise _Rejected("no-arrays", f"expected one ArrayRecord {self.arrays_key!r}, got {sorted(records)}")
        metric_records = content.metric_records
        weight = None
        if len(metric_records) == 1:
            weight = next(iter(metric_records.values())).get(self.weighted_by_key)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not (
                math.isfinite(weight) and weight > 0):
            raise _Rejected("bad-metrics", f"no positive {self.weighted_by_key!r} in one MetricRecord")
        keys, expected = set(arrays.keys()), set(self._expected)
        if expected - keys:
            raise _Rejected("missing-keys", f"missing {sorted(expected - keys)[:3]}")
        if keys - expected:
            raise _Rejected("extra-keys", f"unexpected {sorted(keys - expected)[:3]}")
        for name, array in arrays.items():
            dtype, shape, size, limit = self._expected[name]
            if array.dtype != dtype:
                raise _Rejected("wrong-dtype", f"{name!r} is {array.dtype}, the model's is {dtype}")
            claimed = tuple(int(s) for s in array.shape)
            if math.prod(claimed) > size or len(array.data) > limit:
                raise _Rejected("oversized", f"{name!r} carries {len(array.data)} bytes for shape {shape}")
            if claimed != shape:
                raise _Rejected("wrong-shape", f"{name!r} has shape {claimed}, the model's is {shape}")
        for entry in self.layout:
            try:
                value = M.decode_array(arrays[entry.name])
            except Exception as error:  # bytes that np.load refuses (never unpickled: allow_pickle=False)
                raise _Rejected("undecodable", f"{entry.name!r}: {error}") from None
            if value.shape != entry.shape or str(value.dtype) != self._expected[entry.name][0]:
                raise _Rejected("wrong-shape", f"{entry.name!r} decodes to {value.dtype}{value.shape}")
            row_np[entry.span] = value.reshape(-1)
        if not bool(torch.isfinite(row).all()):
            raise _Rejected("non-finite", "NaN or inf in the update")
        norm = float(torch.linalg.vector_norm(row - self.global_vector))
        limit = self.max_update_norm if self.max_update_norm is not None else ABSURD_NORM
        if not norm <= min(limit, ABSURD_NORM):
            raise _Rejected("too-large", f"update norm {norm:.4g} above {limit:.4g}")
        return float(weight)


class _Platform:
    """What RobustStrategy and the wrapped Flower strategies share: seeded sampling, round tags, the stash of
    the global arrays, reply validation, timings and round metrics."""

    def _init_platform(self, layout: ParameterLayout | None, malicious_nodes: Iterable[int],
                       max_update_norm: float | None, seed: int | None, observer=None) -> None:
        self.layout = layout
        self.observer = observer
        self.malicious_nodes = frozenset(int(n) for n in malicious_nodes)
        self.validator = ReplyValidator(layout, max_update_norm=max_update_norm,
                                        arrays_key=self.arrayrecord_key, weighted_by_key=self.weighted_by_key)
        self._rng_state = random.Random(seed).getstate() if seed is not None else None
        self.current_arrays: ArrayRecord | None = None
        self.round_started: dict[int, float] = {}
        self.round_finished: dict[int, float] = {}
        self.sampled: dict[int, list[int]] = {}
        self.round_metrics: dict[int, dict] = {}
        self.kept_model: set[int] = set()  # rounds that kept the old global model

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.round_started[server_round] = time.perf_counter()
        self.current_arrays = arrays
        self.validator.start_round(server_round, arrays)
        if self.layout is None:
            self.layout = self.validator.layout
        messages = list(self._seeded(lambda: super(_Platform, self).configure_train(server_round, arrays, config,
                                                                                    grid)))
        for message in messages:  # Flower leaves group_id empty; it lets a reply name its round
            message.metadata.group_id = str(server_round)
        self.sampled[server_round] = [m.metadata.dst_node_id for m in messages]
        return messages

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self._seeded(lambda: super(_Platform, self).configure_evaluate(server_round, arrays, config, grid))

    def _seeded(self, call):
        if self._rng_state is None:
            return call()
        outer = random.getstate()
        random.setstate(self._rng_state)
        try:
            return call()
        finally:
            self._rng_state = random.getstate()
            random.setstate(outer)

    def _observe(self, server_round: int, valid: ValidatedRound) -> None:
        """Hand each accepted reply's delta to the observer (a curious server), if there is one."""
        if self.observer is None:
            return
        global_vector = self.validator.global_vector
        for row, node, weight in zip(valid.vectors, valid.node_ids, valid.num_examples.tolist(), strict=True):
            self.observer(server_round, node, row - global_vector, global_vector, weight)

    def _finish(self, server_round: int, metrics: dict, arrays: ArrayRecord | None
                ) -> tuple[ArrayRecord | None, MetricRecord]:
        self.round_finished[server_round] = time.perf_counter()
        sampled = self.sampled.get(server_round, [])
        metrics["sampled"] = len(sampled)
        metrics["sampled-malicious"] = sum(n in self.malicious_nodes for n in sampled)
        if arrays is None:
            self.kept_model.add(server_round)
        clean = {k: (float(v) if isinstance(v, float) else int(v)) for k, v in metrics.items()
                 if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}
        self.round_metrics[server_round] = clean
        return arrays, MetricRecord(clean)

    def round_seconds(self, server_round: int) -> float | None:
        """Seconds from configure_train to the end of aggregate_train (sampling, clients, aggregation)."""
        if server_round in self.round_started and server_round in self.round_finished:
            return self.round_finished[server_round] - self.round_started[server_round]
        return None


class RobustStrategy(_Platform, FedAvg):
    """FedAvg's message flow with a robust :class:`AggregationRule` on validated, stacked deltas.

    ``fedavg_kwargs`` go to :class:`flwr.serverapp.strategy.FedAvg` (``fraction_train``,
    ``min_available_nodes``...). `malicious_nodes` (node ids) is only used for detection metrics; `seed`
    makes client sampling reproducible; `observer` sees every accepted reply (see the module docstring).
    """

    def __init__(self, rule: AggregationRule, layout: ParameterLayout, *, malicious_nodes: Iterable[int] = frozenset(),
                 max_update_norm: float | None = None, seed: int | None = None, observer=None, **fedavg_kwargs):
        FedAvg.__init__(self, **fedavg_kwargs)
        self.rule = rule
        self._init_platform(layout, malicious_nodes, max_update_norm, seed, observer)
        self.last_accepted: list[int] | None = None

    def summary(self) -> None:
        logger.info("RobustStrategy: rule %s %s, max_update_norm %s", self.rule.name, self.rule.config(),
                    self.validator.max_update_norm)
        super().summary()

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid = self.validator.check(replies)
        metrics: dict = valid.metrics()
        metrics["aggregated"] = len(valid.node_ids)
        if not valid.node_ids:
            logger.warning("round %d: every reply was dropped; the global model stays as it was", server_round)
            return self._finish(server_round, metrics, None)
        self._observe(server_round, valid)
        global_vector = self.validator.global_vector
        updates = RoundUpdates(deltas=valid.vectors - global_vector, num_examples=valid.num_examples,
                               global_vector=global_vector, server_round=server_round,
                               client_ids=list(valid.node_ids), layout=self.layout)
        aggregate = self.rule(updates)
        delta = aggregate.delta.detach().to(torch.float32).reshape(-1)
        metrics.update({k: v for k, v in aggregate.metrics.items()})
        if delta.numel() != global_vector.numel() or not bool(torch.isfinite(delta).all()):
            logger.warning("round %d: the rule %s returned a non-finite or misshapen delta; the global model stays",
                           server_round, self.rule.name)
            metrics["aggregate-rejected"] = 1
            return self._finish(server_round, metrics, None)
        if aggregate.accepted is not None:
            accepted = aggregate.accepted.to(torch.bool).reshape(-1).tolist()
            self.last_accepted = [n for n, ok in zip(valid.node_ids, accepted, strict=True) if ok]
            metrics["accepted"] = sum(accepted)
            if self.rule.selects:
                metrics.update(detection_rates(valid.node_ids, accepted, self.malicious_nodes))
        arrays = M.vector_to_arrays(global_vector + delta, self.layout, template=self.current_arrays)
        return self._finish(server_round, metrics, arrays)


def detection_rates(node_ids: list[int], accepted: list[bool], malicious: frozenset[int]) -> dict[str, float]:
    """``tpr``: share of the malicious replies the rule rejected; ``fpr``: share of benign ones it rejected.

    Each is left out when the round had no reply of that kind."""
    bad = [n in malicious for n in node_ids]
    out = {}
    if any(bad):
        out["tpr"] = sum(not ok for ok, b in zip(accepted, bad, strict=True) if b) / sum(bad)
    if not all(bad):
        out["fpr"] = sum(not ok for ok, b in zip(accepted, bad, strict=True) if not b) / (len(bad) - sum(bad))
    return out


# ------------------------------------------------------------------------------------------ Flower's own strategies

FLOWER_STRATEGIES = {"krum": Krum, "multikrum": MultiKrum, "bulyan": Bulyan, "median": FedMedian,
                     "trimmedmean": FedTrimmedAvg}


class _Metered(_Platform):
    """Validates replies and records round metrics around a Flower strategy's own ``aggregate_train``."""

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid = self.validator.check(replies)
        metrics: dict = valid.metrics()
        metrics["aggregated"] = len(valid.node_ids)
        arrays = None
        if not valid.node_ids:
            logger.warning("round %d: every reply was dropped; the global model stays as it was", server_round)
        else:
            self._observe(server_round, valid)
            for reply in valid.replies:  # Flower insists that every reply has the same metric keys
                weight = next(iter(reply.content.metric_records.values()))[self.weighted_by_key]
                reply.content = RecordDict({self.arrayrecord_key: reply.content[self.arrayrecord_key],
                                            M.METRICS: MetricRecord({self.weighted_by_key: weight})})
            try:
                arrays, flower_metrics = super().aggregate_train(server_round, valid.replies)
            except Exception as error:  # a Flower strategy that raises must not stop the server either
                logger.warning("round %d: %s could not aggregate (%s); the global model stays", server_round,
                               type(self).__name__, error)
                metrics["aggregate-rejected"] = 1
                arrays, flower_metrics = None, None
            if flower_metrics:
                metrics.update({k: v for k, v in flower_metrics.items() if isinstance(v, int | float)})
            if arrays is None or not _finite(arrays):  # Flower declined (Bulyan with < 4f+3) or diverged
                metrics["aggregate-rejected"] = 1
                arrays = None
        return self._finish(server_round, metrics, arrays)


def _finite(arrays: ArrayRecord) -> bool:
    return all(np.isfinite(a.numpy()).all() for a in arrays.values()
               if np.issubdtype(np.dtype(a.dtype), np.floating))


def flower_strategy(name: str, *, layout: ParameterLayout | None = None, malicious_nodes: Iterable[int] = frozenset(),
                    max_update_norm: float | None = None, seed: int | None = None, observer=None,
                    **params) -> FedAvg:
    """Flower's own Krum / MultiKrum / Bulyan / FedMedian / FedTrimmedAvg, unmodified, with our round metrics.

    `name` is ``krum``, ``multikrum``, ``bulyan``, ``median`` or ``trimmedmean`` (a ``flower-`` prefix is
    accepted); `params` go to the Flower class (``num_malicious_nodes``, ``num_nodes_to_select``, ``beta``,
    ``fraction_train``...). Replies are validated like :class:`RobustStrategy`'s before Flower sees them.
    """
    key = name.removeprefix("flower-")
    if key not in FLOWER_STRATEGIES:
        raise InvalidArgumentError(f"unknown Flower strategy {name!r} (choose from "
                                   f"{', '.join('flower-' + n for n in FLOWER_STRATEGIES)})")
    base = FLOWER_STRATEGIES[key]
    accepted = set(inspect.signature(base.__init__).parameters) - {"self"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise InvalidArgumentError(f"flower-{key} has no parameter {unknown[0]!r}")
    cls = type(f"Metered{base.__name__}", (_Metered, base), {"__module__": __name__})
    try:
        strategy = cls(**params)
    except (ValueError, TypeError) as error:
        raise InvalidArgumentError(f"flower-{key}: {error}") from None
    strategy._init_platform(layout, malicious_nodes, max_update_norm, seed, observer)
    return strategy
