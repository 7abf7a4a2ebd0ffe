"""The ClientApp every experiment runs: honest clients, training-time attackers and model-poisoning attackers.

:func:`build_client_app` returns a :class:`flwr.clientapp.ClientApp` with four handlers; the node's data is
the partition named by Flower's ``node_config["partition-id"]`` (what the Simulation Engine and
:class:`~artshield.fl_bridge.grid.LocalGrid` set), so the same app runs in-process, under Ray, or on
SuperNodes.

- ``train``: local training from the received global model (:func:`fl_bridge.training.train_locally`);
  replies with the local model and ``num-examples``. A node whose partition is in `malicious` with a
  :class:`TrainingAttack` trains with the attack's hooks and sends ``attack.finalize(delta, context)``;
  one with a :class:`ModelPoisoning` attack trains honestly here and waits for ``train.craft``.
- ``train.craft``: the omniscient exchange (:class:`~artshield.fl_bridge.grid.OmniscientExchange`)
  delivers the global model, the colluding nodes' honest models and, for omniscient attacks, the benign
  replies; the node builds an :class:`AttackContext` from those deltas, crafts the group's ``(f, d)``
  updates (once per round and group: every member computes the same thing from the same seed) and
  replies with its own row.
- ``evaluate``: accuracy and loss of the received model on the node's partition.
- ``query.partition``: the node's partition id (so a server can map node ids to partitions).

Under user-level DP (``fl_bridge.privacy.UserLevelDP``) the train config carries the round's clip norm
(``dp-clip``); a client training with BLUR and no ``blur_bound`` of its own uses it as the bound.

Every random choice comes from a generator seeded by (seed, round, partition), so runs repeat exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from . import messages as M
from .attacks.base import AttackContext, ModelPoisoning, TrainingAttack
from .updates import ParameterLayout


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (deterministic across processes, unlike ``hash``)."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (int(part) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        value ^= value >> 31
    return value & 0x7FFFFFFFFFFFFFFF


def generator_for(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


_CRAFT_SALT = 0xC4AF7
#: The round's DP clip norm in the train config (``fl_bridge.privacy.CLIP_KEY``): BLUR's default bound.
DP_CLIP_KEY = "dp-clip"


class _ClientRuntime:
    """What the handlers share inside one process: the model, the data, the attack group's cache."""

    def __init__(self, task: Any, partitions: Sequence[torch.Tensor], training: Any,
                 malicious: Mapping[int, ModelPoisoning | TrainingAttack], seed: int, defense: str | None):
        for pid, attack in malicious.items():
            if not isinstance(attack, ModelPoisoning | TrainingAttack):
                raise TypeError(f"malicious[{pid}] is {type(attack).__name__}, not an attack")
        from . import training as training_module

        self.T = training_module  # resolved here, in the process that builds the app (Ray ships it by name)
        self.task = task
        self.partitions = list(partitions)
        self.training = training
        self.malicious = dict(malicious)
        self.seed = int(seed)
        self.defense = defense
        self._model: torch.nn.Module | None = None
        self._layout: ParameterLayout | None = None
        self._train_set = None
        self._data: dict[int, Any] = {}
        self._globals_seen: dict[int, torch.Tensor] = {}
        self._crafted: tuple[tuple, torch.Tensor] | None = None
        self._last_global: tuple | None = None

    def __getstate__(self):  # Ray ships the app to its actors: no caches, the model is rebuilt there
        state = dict(self.__dict__)
        state.update(_model=None, _layout=None, _train_set=None, _data={}, _globals_seen={}, _crafted=None, _last_global=None)
        return state

    @property
    def model(self) -> torch.nn.Module:
        if self._model is None:
            self._model = self.task.build_model(self.seed)
        return self._model

    @property
    def layout(self) -> ParameterLayout:
        if self._layout is None:
            self._layout = ParameterLayout.from_arrays(self.model.state_dict())
        return self._layout

    def data(self, pid: int):
        if pid not in self._data:
            if not 0 <= pid < len(self.partitions):
                raise ValueError(f"this app has {len(self.partitions)} partitions, the node holds {pid}")
            if self._train_set is None:
                self._train_set = self.task.train_set()
            self._data[pid] = self._train_set.subset(self.partitions[pid])
        return self._data[pid]

    @staticmethod
    def partition(context: Context) -> int:
        return int(context.node_config[M.PARTITION_ID])

    def global_vector(self, arrays) -> torch.Tensor:
        """The received global model as a vector; decoded once per round in-process, where every node gets the
        very same ArrayRecord object (compared by identity, array by array; a copy is returned)."""
        last = self._last_global
        values = list(arrays.values())
        if last is not None and last[0] is arrays and len(last[1]) == len(values) and all(
                a is b and a.data is b_data for a, b, b_data in zip(values, last[1], last[2], strict=True)):
            return last[3].clone()
        vector = M.arrays_to_vector(arrays, self.layout)
        self._last_global = (arrays, values, [a.data for a in values], vector)
        return vector.clone()

    def _previous_delta(self, server_round: int, global_vector: torch.Tensor) -> torch.Tensor | None:
        """Last round's global change as the attackers saw it (Neurotoxin); None before they saw two rounds."""
        self._globals_seen[server_round] = global_vector
        for old in [r for r in self._globals_seen if r < server_round - 1]:
            del self._globals_seen[old]
        previous = self._globals_seen.get(server_round - 1)
        return None if previous is None else global_vector - previous

    # ---------------------------------------------------------------------------------------------- handlers
    def train(self, message: Message, context: Context) -> Message:
        T = self.T
        pid = self.partition(context)
        arrays = message.content[M.ARRAYS]
        config = message.content[M.CONFIG] if M.CONFIG in message.content.config_records else {}
        server_round = int(config.get(M.SERVER_ROUND, 0))
        global_vector = self.global_vector(arrays)
        data = self.data(pid)
        generator = generator_for(self.seed, server_round, pid)
        attack = self.malicious.get(pid)
        training_attack = attack if isinstance(attack, TrainingAttack) else None
        training = self.training
        if getattr(training, "blur", None) and training.blur_bound is None and DP_CLIP_KEY in config:
            training = dataclasses.replace(training, blur_bound=float(config[DP_CLIP_KEY]))  # BLUR: bound = DP clip
        delta = T.train_locally(self.model, self.layout, global_vector, data, training, generator,
                                attack=training_attack, client_index=pid)
        if training_attack is not None:
            context_ = AttackContext(
                own=delta[None], benign=None, global_vector=global_vector,
                num_clients=int(config.get(M.NUM_CLIENTS, context.node_config.get(M.NUM_PARTITIONS, 1))),
                server_round=server_round, generator=generator, layout=self.layout, defense=self.defense,
                previous_global_delta=self._previous_delta(server_round, global_vector),
                local_loss=T.loss_at(self.model, self.layout, data))
            delta = training_attack.finalize(delta, context_)
        local = M.vector_to_arrays(global_vector + delta, self.layout, template=arrays)
        return M.train_reply(message, local, len(data))

    def craft(self, message: Message, context: Context) -> Message:
        T = self.T
        pid = self.partition(context)
        attack = self.malicious.get(pid)
        if not isinstance(attack, ModelPoisoning):
            raise ValueError(f"partition {pid} has no model-poisoning attack to craft with")
        global_vector, own, benign, config = M.read_craft_content(message.content, self.layout)
        own_nodes = [int(n) for n in config[M.OWN_NODES]]
        server_round = int(config.get(M.SERVER_ROUND, 0))
        key = (server_round, tuple(own_nodes))
        if self._crafted is None or self._crafted[0] != key:
            data = self.data(pid)
            attack_context = AttackContext(
                own=own, benign=benign if attack.needs_benign else None, global_vector=global_vector,
                num_clients=int(config.get(M.NUM_CLIENTS, own.shape[0] + (0 if benign is None else len(benign)))),
                server_round=server_round, generator=generator_for(self.seed, server_round, _CRAFT_SALT),
                layout=self.layout, defense=self.defense,
                previous_global_delta=self._previous_delta(server_round, global_vector),
                local_loss=T.loss_at(self.model, self.layout, data))
            crafted = attack.craft(attack_context)
            if tuple(crafted.shape) != tuple(own.shape):
                raise ValueError(f"{attack.name} crafted {tuple(crafted.shape)} updates for {tuple(own.shape)}")
            self._crafted = (key, crafted.detach())
        row = self._crafted[1][own_nodes.index(context.node_id)]
        local = M.vector_to_arrays(global_vector + row, self.layout, template=message.content[M.GLOBAL])
        return M.train_reply(message, local, len(self.data(pid)))

    def evaluate(self, message: Message, context: Context) -> Message:
        T = self.T
        pid = self.partition(context)
        data = self.data(pid)
        vector = M.arrays_to_vector(message.content[M.ARRAYS], self.layout)
        result = T.evaluate_model(self.model, self.layout, vector, data)
        metrics = {k: float(v) for k, v in result.items()}
        metrics[M.NUM_EXAMPLES] = len(data)
        return M.metrics_reply(message, **metrics)

    def query_partition(self, message: Message, context: Context) -> Message:
        return M.metrics_reply(message, **{M.PARTITION_ID: self.partition(context)})


def build_client_app(task: Any, partitions: Sequence[torch.Tensor], training: Any, *,
                     malicious: Mapping[int, ModelPoisoning | TrainingAttack] | None = None, seed: int = 0,
                     defense: str | None = None) -> ClientApp:
    """A Flower ClientApp for `task` whose node with ``partition-id`` i trains on ``partitions[i]``.

    `training` is a :class:`fl_bridge.training.LocalTraining`; `malicious` maps partition ids to the
    attack those clients run (one shared object per attack: colluding clients craft together); `defense`
    names the server's rule for attacks tailored to it (Fang). See the module docstring for the handlers.
    """
    runtime = _ClientRuntime(task, partitions, training, malicious or {}, seed, defense)
    app = ClientApp()
    app.train()(runtime.train)
    app.train("craft")(runtime.craft)
    app.evaluate()(runtime.evaluate)
    app.query("partition")(runtime.query_partition)
    return app
