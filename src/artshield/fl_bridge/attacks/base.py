"""The contracts malicious clients follow.

Two kinds of attack, as the literature splits them:

- :class:`ModelPoisoning` crafts the update a malicious client sends from what the attacker knows this
  round: its own clients' honest updates and, for *omniscient* attacks (LIE, min-max, IPM, Fang...), the
  benign clients' updates, which the experiment delivers through Flower's message flow (a second
  ``train.craft`` message to the malicious nodes; see ``fl_bridge.clients``).
- :class:`TrainingAttack` changes how a malicious client trains: what data it sees (label flip, DBA
  triggers, edge-case samples), a constraint after every local step (PGD into an L2 ball around the global
  model), and a last transform of its delta (scaling / model replacement, Neurotoxin's coordinate mask).

Both are small objects configured once and called every round.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..updates import ParameterLayout


@dataclass
class AttackContext:
    """What a colluding group of malicious clients knows when it crafts this round's updates."""

    own: torch.Tensor  # (f, d) honest deltas the malicious clients trained on their own data this round
    benign: torch.Tensor | None  # (m, d) the benign clients' deltas (omniscient attacks only), else None
    global_vector: torch.Tensor  # (d,) the round's global model
    num_clients: int  # n: clients sampled this round, benign and malicious
    server_round: int
    generator: torch.Generator
    layout: ParameterLayout
    defense: str | None = None  # the server's rule, for attacks tailored to it (Fang); None if unknown
    previous_global_delta: torch.Tensor | None = None  # (d,) last round's global change (Neurotoxin)
    local_loss: Callable[[torch.Tensor], torch.Tensor] | None = None  # loss on the attackers' data at a vector

    @property
    def num_malicious(self) -> int:
        return int(self.own.shape[0])

    @property
    def reference(self) -> torch.Tensor:
        """The updates the attack estimates benign behaviour from: the benign ones if known, else its own."""
        return self.benign if self.benign is not None and len(self.benign) else self.own


class ModelPoisoning(ABC):
    """Crafts the malicious clients' deltas of a round."""

    name: ClassVar[str]
    needs_benign: ClassVar[bool] = False  # True: omniscient, must see the round's benign deltas

    @abstractmethod
    def craft(self, context: AttackContext) -> torch.Tensor:
        """The (f, d) deltas the malicious clients send."""

    def __call__(self, context: AttackContext) -> torch.Tensor:
        return self.craft(context)


class TrainingAttack:
    """Changes a malicious client's local training; every hook defaults to honest behaviour."""

    name: ClassVar[str] = "honest"
    targeted: ClassVar[bool] = False  # True: success is measured as attack success rate (ASR)

    def poison_batch(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
                     client_index: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch the malicious client trains on instead of (images, labels)."""
        return images, labels

    def constrain(self, vector: torch.Tensor, global_vector: torch.Tensor) -> torch.Tensor:
        """The local model after a training step, e.g. projected onto a ball around the global model."""
        return vector

    def finalize(self, delta: torch.Tensor, context: AttackContext | None = None) -> torch.Tensor:
        """The delta actually sent (shape (d,)), e.g. scaled up for model replacement."""
        return delta

    def backdoor(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Test inputs with the trigger and the attacker's target labels (targeted attacks), else None."""
        return None
