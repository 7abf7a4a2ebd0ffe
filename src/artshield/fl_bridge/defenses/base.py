"""The contract every server-side aggregation rule follows.

A rule sees one round's client *deltas* (local model minus the round's global model) stacked in one matrix
and returns the delta to apply to the global model, plus which clients it kept when it selects clients (for
detection TPR/FPR). Rules are plain objects configured once and called every round (torchattacks' shape);
the Flower strategy that feeds them (``fl_bridge.strategy``) owns message handling, validation of replies and
the global arrays, so a rule never touches Flower types and can be benchmarked and tested on tensors alone.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import torch

from ..updates import ParameterLayout


@dataclass
class RoundUpdates:
    """What the server holds after a round's replies are validated."""

    deltas: torch.Tensor  # (n, d) float32: each client's local model minus the round's global model
    num_examples: torch.Tensor  # (n,) float32: the sizes clients reported (FedAvg weights)
    global_vector: torch.Tensor  # (d,) the round's global model
    server_round: int
    client_ids: list[int]  # stable node ids, for rules that keep per-client history (FoolsGold)
    layout: ParameterLayout

    @property
    def num_clients(self) -> int:
        return int(self.deltas.shape[0])


@dataclass
class Aggregate:
    """A rule's answer: the global delta, and which clients it kept if it selects."""

    delta: torch.Tensor  # (d,)
    accepted: torch.Tensor | None = None  # (n,) bool; None when the rule does not select clients
    metrics: dict[str, float] = field(default_factory=dict)  # anything worth logging per round


class RootAccess(Protocol):
    """The server's own small clean dataset, as FLTrust and SkyMask assume (built by the task)."""

    def update(self, global_vector: torch.Tensor) -> torch.Tensor:
        """The delta the server gets by training the global model on the root data, like a client would."""
        ...

    def loss(self, vector: torch.Tensor) -> torch.Tensor:
        """Differentiable mean loss on the root data of the model with parameters `vector` (shape (d,))."""
        ...


class AggregationRule(ABC):
    """A robust (or plain) aggregation rule on stacked deltas."""

    name: ClassVar[str]
    selects: ClassVar[bool] = False  # True when `accepted` is meaningful (detection metrics)

    @abstractmethod
    def aggregate(self, updates: RoundUpdates) -> Aggregate: ...

    def __call__(self, updates: RoundUpdates) -> Aggregate:
        return self.aggregate(updates)

    def config(self) -> dict:
        """The rule's settings, for reports (override when constructor arguments are not attributes)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and isinstance(v, int | float | str | bool)}
