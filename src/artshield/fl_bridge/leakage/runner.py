"""A curious server: gradient inversion of chosen clients' updates, in a federation or on its own.

Two ways to run it, one attack path (:meth:`CuriousServer.attack_update`):

- **inside a federation** (an experiment file with a ``[leakage]`` table, ``artshield fl run``): the strategy
  hands every accepted reply to a :class:`CuriousServer` (``run_federation(..., observer=server)``); in the
  chosen rounds it attacks the chosen clients' deltas, inside the normal Flower message flow;
- **on its own** (:func:`run_leakage`, ``artshield fl leak``): no federation, unless rounds after the first are
  asked for. The model is the task's initial model (round 1), or the global model after ``r - 1`` rounds of
  honest federated training (the experiment without its poisoning attack) for round ``r``; each chosen client
  computes its honest update exactly as the ClientApp does (:func:`fl_bridge.training.train_locally`, the same
  seeded generator), and the server attacks it.

The attacked clients' batch. A client trains on its whole partition for E epochs, so its update mixes every
sample it holds. For a leakage experiment the attacked clients therefore hold only ``batch_size`` samples of
their partition, drawn once from the seed (in the federation too: :func:`fl_bridge.federation.attacked_partitions`),
so their update is the
gradient of exactly that batch (``kind = "fedsgd"``: one local step, which needs ``[training] epochs = 1`` and
``batch_size >= [leakage] batch_size``), or the FedAvg update of ``epochs × ceil(batch / training batch)``
local steps on it (``kind = "fedavg"``: the weight difference over ``lr × steps`` is the pseudo-gradient).
Other clients keep their whole partition. A batch larger than an attacked client's data is refused.

The attack: the delta becomes an :class:`~artshield.fl_bridge.leakage.observe.Observation`
(``observation_from_delta``), labels are recovered (``leakage.labels.recover_labels``; ``known`` takes the
true ones, ``joint`` lets DLG optimise them), the batch is reconstructed (``leakage.inversion.reconstruct``,
on the engine's Inverter) and assessed against the client's true batch (``leakage.assess.assess``: PSNR, SSIM,
LPIPS when its weights are present, label and per-class count accuracy, matching by assignment). Results go to
``leak.json``, ``leak.html`` and ``grid-client<k>.png`` (see :mod:`.report`), rewritten after every attacked
update, so an interrupted run keeps what it finished.
"""

from __future__ import annotations

import copy
import importlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ...errors import DependencyError, InvalidArgumentError
from ..experiment import CLEAN, Experiment, leakage_settings
from . import report as R

logger = logging.getLogger(__name__)

#: Files a leakage run writes into its folder (besides the grids).
LEAK_FILES = (R.LEAK_JSON, R.LEAK_HTML)
_SERVER_SALT = 0x1EA7


def _leakage(name: str):
    """``fl_bridge.leakage.<name>`` (labels, observe, inversion, assess), imported when an attack runs."""
    full = f"artshield.fl_bridge.leakage.{name}"
    try:
        return importlib.import_module(full)
    except ModuleNotFoundError as exc:
        if exc.name and full.startswith(exc.name):
            raise DependencyError(f"{full} is not available ({exc}); gradient leakage needs it.") from exc
        raise


# ------------------------------------------------------------------------------------------------- settings
def settings_for(experiment: Experiment, overrides: Mapping[str, Any] | None = None,
                 options: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The experiment's ``[leakage]`` settings with `overrides` (``attack``, ``labels``, ``clients``, ``rounds``,
    ``batch_size``, ``steps``, ``restarts``, ``kind``; None values are ignored) applied and validated together;
    errors name an override by ``options[key]`` (e.g. ``--batch-size``), a file's field as the file does."""
    overrides = {k: v for k, v in dict(overrides or {}).items() if v is not None}
    table: dict[str, Any] = {}
    if experiment.leakage is not None:
        table = {k: v for k, v in dict(experiment.leakage).items() if k != "local_steps"}
        table = {k: list(v) if isinstance(v, tuple) else v for k, v in table.items() if v is not None}
        if "kind" not in overrides and "batch_size" in overrides:
            table.pop("kind", None)  # it was resolved for the file's batch: resolve it again
    table.update({k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()})
    names = {k: (options or {}).get(k, k) for k in overrides}
    for key in ("attack", "labels"):
        if key not in table:
            raise InvalidArgumentError(f"{(options or {}).get(key, key)} is missing and "
                                       f"{experiment.source or 'the experiment'} has no [leakage] {key}")
    # Rounds after the file's last are fine on their own (the honest training before them is separate).
    max_round = None if "rounds" in overrides else experiment.rounds
    return leakage_settings(table, source=experiment.source or "experiment", training=dict(experiment.training),
                            clients=experiment.clients, max_round=max_round, options=names)


def model_at(model: torch.nn.Module, layout, vector: torch.Tensor) -> torch.nn.Module:
    """A copy of `model` whose floating arrays are `vector` (the layout's order)."""
    copy_ = copy.deepcopy(model)
    state = copy_.state_dict()
    state.update({name: value.detach().clone().to(state[name].dtype) for name, value in layout.unflatten(
        vector.detach().to(torch.float32)).items()})
    copy_.load_state_dict(state)
    copy_.eval()
    return copy_


def _pick(assessment: Mapping[str, Any], *names: str) -> float | None:
    """A number from the assessment under the first of `names` it has (a dict's ``mean`` counts)."""
    for name in names:
        value = assessment.get(name)
        if isinstance(value, Mapping):
            value = value.get("mean")
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def _seed(*parts: int) -> int:
    value = 0
    for part in parts:
        value = (value * 1_000_003 + int(part)) % (1 << 62)
    return value


# ------------------------------------------------------------------------------------------------- the server
class CuriousServer:
    """Attacks chosen clients' updates in chosen rounds; an observer for
    :func:`~artshield.fl_bridge.federation.run_federation` (``observer(server_round, partition_id, delta,
    global_vector, num_examples)``) and the engine of :func:`run_leakage`.

    `settings` are resolved ``[leakage]`` settings (:func:`settings_for`); `out_dir` (optional) receives
    ``leak.json``, ``leak.html`` and the grids after every attacked update; `progress(result)` is called
    with each result. Call :meth:`attach` before the first update and :meth:`finish` at the end.
    """

    def __init__(self, settings: Mapping[str, Any], *, out_dir: str | Path | None = None, mode: str = "federated",
                 experiment: Experiment | None = None, progress: Callable[[dict], None] | None = None,
                 lpips: bool = True):
        self.settings = dict(settings)
        self.clients = tuple(int(c) for c in self.settings["clients"])
        self.rounds = tuple(int(r) for r in self.settings["rounds"])
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.mode = mode
        self.experiment = experiment
        self.progress = progress
        self.lpips = lpips
        self.results: list[dict] = []
        self.finished = False
        self._done: set[tuple[int, int]] = set()
        self._attached = False

    def attach(self, *, task, model, layout, train_set, partitions, training, seed: int) -> None:
        """What the server knows (the task, model and layout) and what it uses only to score itself (the
        attacked clients' true batches: their partitions of `train_set`)."""
        self.task, self.model, self.layout = task, model, layout
        self.train_set, self.partitions = train_set, list(partitions)
        self.training, self.seed = training, int(seed)
        for pid in self.clients:
            if not 0 <= pid < len(self.partitions):
                raise InvalidArgumentError(f"[leakage] clients names partition {pid}, but there are "
                                           f"{len(self.partitions)} clients")
        classes, batch = int(task.num_classes), int(self.settings["batch_size"])
        if self.settings["labels"] in ("analytic", "yin") and batch > classes:
            raise InvalidArgumentError(f"[leakage] labels {self.settings['labels']!r} assumes distinct labels, but "
                                       f"batch_size {batch} is more than the task's {classes} classes (--labels / "
                                       "--batch-size in `fl leak`); use zero-shot or llg for such batches")
        self._attached = True

    def batch(self, partition_id: int):
        """The client's true batch (the first ``batch_size`` samples of its partition, which
        :func:`~artshield.fl_bridge.federation.attacked_partitions` cut to the attacked batch): the ground truth
        the attack is scored on."""
        index = self.partitions[partition_id][:int(self.settings["batch_size"])]
        return self.train_set.subset(index)

    def __call__(self, server_round: int, partition_id: int, delta: torch.Tensor, global_vector: torch.Tensor,
                 num_examples: float = 0.0) -> None:
        key = (int(server_round), int(partition_id))
        if key[0] in self.rounds and key[1] in self.clients and key not in self._done:
            self.attack_update(key[0], key[1], delta, global_vector)

    # ---------------------------------------------------------------------------------------------- attack
    def attack_update(self, server_round: int, partition_id: int, delta: torch.Tensor,
                      global_vector: torch.Tensor) -> dict:
        """Reconstruct client `partition_id`'s batch from its `delta` (local model minus `global_vector`)."""
        if not self._attached:
            raise RuntimeError("CuriousServer.attach was not called")
        size = self.layout.size
        for name, value in (("update", delta), ("global model", global_vector)):
            if not isinstance(value, torch.Tensor) or value.dim() != 1 or value.numel() != size:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise InvalidArgumentError(f"the {name} of client {partition_id} in round {server_round} has shape "
                                           f"{shape}, but the {getattr(self.task, 'name', 'task')} model has "
                                           f"{size} parameters: not an update of this model")
        s = self.settings
        data = self.batch(partition_id)
        batch = len(data)
        model = model_at(self.model, self.layout, global_vector)
        observe, inversion, assess = _leakage("observe"), _leakage("inversion"), _leakage("assess")
        input_shape = tuple(int(x) for x in data.images.shape[1:])
        observation = observe.observation_from_delta(
            model, delta.detach().to(torch.float32), self.layout, lr=float(self.training.lr),
            steps=int(s["local_steps"]), batch_size=min(int(self.training.batch_size), batch),
            input_shape=input_shape, num_classes=int(self.task.num_classes), num_images=batch)
        generator = torch.Generator().manual_seed(_seed(self.seed, server_round, partition_id, _SERVER_SALT))
        true_labels = data.labels.sort().values
        start = time.perf_counter()
        recovery = None
        if s["labels"] == "known":
            labels = true_labels.clone()
        elif s["labels"] == "joint":
            labels = None
        else:
            recovery = _leakage("labels").recover_labels(
                s["labels"], observation.gradients, model, batch_size=batch, num_classes=int(self.task.num_classes),
                generator=generator, local_steps=int(s["local_steps"]), local_lr=float(self.training.lr),
                input_shape=input_shape)
            labels = recovery.labels
        label_seconds = time.perf_counter() - start
        reconstruction = inversion.reconstruct(s["attack"], model, observation, labels=labels, steps=s.get("steps"),
                                               restarts=int(s.get("restarts") or 1), generator=generator)
        seconds = time.perf_counter() - start
        recovered = recovery.labels if recovery is not None else getattr(reconstruction, "labels", labels)
        assessment = dict(assess.assess(data.images, data.labels, reconstruction, recovered_labels=recovered,
                                        lpips=self.lpips))
        order = assessment.get("matched_order")
        order = None if order is None else [int(i) for i in torch.as_tensor(order).reshape(-1).tolist()]
        several = len(self.rounds) > 1
        name = R.grid_filename(partition_id, server_round if several else None)
        result = {
            "client": int(partition_id),
            "round": int(server_round),
            "observed": True,
            "psnr": _pick(assessment, "psnr", "mean_psnr", "psnr_mean"),
            "ssim": _pick(assessment, "ssim", "mean_ssim", "ssim_mean"),
            "lpips": _pick(assessment, "lpips", "mean_lpips", "lpips_mean"),
            "label_accuracy": _pick(assessment, "label_accuracy", "labels_accuracy"),
            "count_accuracy": _pick(assessment, "count_accuracy", "label_count_accuracy"),
            "seconds": seconds,
            "label_seconds": label_seconds,
            "loss": _pick({"loss": getattr(reconstruction, "loss", None)}, "loss"),
            "true_labels": [int(v) for v in true_labels.tolist()],
            "recovered_labels": None if recovered is None else
            [int(v) for v in torch.as_tensor(recovered).reshape(-1).tolist()],
            "grid": name if self.out_dir is not None else None,
            "config": {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in s.items()},
                       "reconstruction": dict(getattr(reconstruction, "config", {}) or {})},
            "assessment": {k: v for k, v in assessment.items() if k != "matched_order"},
            "matched_order": order,
        }
        self._done.add((server_round, partition_id))
        self.results.append(result)
        if self.out_dir is not None:
            R.write_grid(self.out_dir / name, data.images, reconstruction.images, order)
            self.write()
        if self.progress is not None:
            self.progress(result)
        return result

    # ---------------------------------------------------------------------------------------------- output
    def document(self) -> dict:
        exp = self.experiment
        return {
            "format": R.FORMAT,
            "finished": self.finished,
            "mode": self.mode,
            "experiment": exp.name if exp is not None else None,
            "source": exp.source if exp is not None else None,
            "task": exp.task if exp is not None else getattr(getattr(self, "task", None), "name", None),
            "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.settings.items()},
            "experiment_config": exp.to_dict() if exp is not None else None,
            "results": sorted(self.results, key=lambda r: (r["round"], r["client"])),
        }

    def write(self) -> dict[str, Path] | None:
        if self.out_dir is None:
            return None
        return R.write_report(self.out_dir, self.document())

    def finish(self) -> dict:
        """Mark the run finished, record the chosen (round, client) pairs the server never saw (clients not
        sampled in that round), write the report; returns the document with its summary."""
        for server_round in self.rounds:
            for pid in self.clients:
                if (server_round, pid) not in self._done:
                    self.results.append({"client": pid, "round": server_round, "observed": False})
                    self._done.add((server_round, pid))
        self.finished = True
        self.write()
        document = self.document()
        document["summary"] = R.summarize(document["results"])
        return R.jsonable(document)


# ------------------------------------------------------------------------------------------------- standalone
class _GlobalModels:
    """An observer that keeps each wanted round's global model (the honest federation before the attack)."""

    def __init__(self, rounds):
        self.rounds, self.vectors = set(rounds), {}

    def __call__(self, server_round, partition_id, delta, global_vector, num_examples=0.0):
        if server_round in self.rounds and server_round not in self.vectors:
            self.vectors[server_round] = global_vector.detach().clone()


def _federation():
    """The platform module (looked up when needed; tests replace it)."""
    return importlib.import_module("artshield.fl_bridge.federation")


def global_models(experiment: Experiment, rounds: Sequence[int], initial: torch.Tensor) -> dict[int, torch.Tensor]:
    """Round r's global model: the initial one for r = 1, else the one after r - 1 rounds of honest federated
    training (the experiment without its poisoning attack, the attacked clients holding their batch only)."""
    out = {r: initial for r in rounds if r == 1}
    later = sorted(r for r in rounds if r > 1)
    if later:
        honest = experiment.replace(attack=CLEAN, attack_fraction=0.0, rounds=later[-1] - 1)
        capture = _GlobalModels(later[:-1])  # each earlier round's global model, as the federation passes it
        result = _federation().run_federation(honest.federation_config(), observer=capture)
        out.update(capture.vectors)
        out[later[-1]] = result.final_vector.detach().clone()
    return out


def prepare_leakage(experiment: Experiment, *, out_dir: str | Path | None, attack: str | None = None,
                    labels: str | None = None, clients=None, rounds=None, batch_size: int | None = None,
                    steps: int | None = None, restarts: int | None = None, kind: str | None = None,
                    progress: Callable[[dict], None] | None = None, lpips: bool = True) -> StandaloneLeakage:
    """Check everything :func:`run_leakage` needs (settings, output folder, the attacked clients' data) and load
    the task, without training or writing anything; ``.run()`` then attacks."""
    from .. import partition as P
    from .. import tasks, training
    from ..updates import ParameterLayout

    overrides = dict(attack=attack, labels=labels, clients=clients, rounds=rounds, batch_size=batch_size,
                     steps=steps, restarts=restarts, kind=kind)
    if experiment.leakage is not None and all(v is None for v in overrides.values()):
        settings = dict(experiment.leakage)  # validated when the experiment was read (or by settings_for)
    else:
        settings = settings_for(experiment, overrides, options={k: k for k in overrides})
    experiment = experiment.replace(leakage=settings)
    if out_dir is not None:
        from ...fileio import check_output_folder

        out_dir = check_output_folder("output folder", out_dir)
    task = tasks.load_task(experiment.task, root=experiment.task_root, **dict(experiment.task_params))
    train_set = task.train_set()
    partitions = P.partition(train_set.labels, experiment.clients, experiment.partition, alpha=experiment.alpha,
                             shards_per_client=experiment.shards_per_client, seed=experiment.seed)
    # the attacked clients' batches, as in the federation; a batch larger than a client's data is refused here
    partitions = _federation().attacked_partitions(partitions, settings, experiment.seed)
    model = task.build_model(experiment.seed)
    layout = ParameterLayout.from_arrays(model.state_dict())
    config = training.LocalTraining(**dict(experiment.training))
    server = CuriousServer(settings, out_dir=out_dir, mode="standalone", experiment=experiment, progress=progress,
                           lpips=lpips)
    server.attach(task=task, model=model, layout=layout, train_set=train_set, partitions=partitions,
                  training=config, seed=experiment.seed)
    return StandaloneLeakage(experiment, server)


class StandaloneLeakage:
    """A checked standalone leakage run (:func:`prepare_leakage`); :meth:`run` attacks and returns leak.json's
    document."""

    def __init__(self, experiment: Experiment, server: CuriousServer):
        self.experiment, self.server = experiment, server

    @property
    def total(self) -> int:
        """Updates to attack."""
        return len(self.server.clients) * len(self.server.rounds)

    def run(self) -> dict:
        # the ClientApp's own seeding: the very update a client would send
        from .. import training
        from ..clients import generator_for

        server, seed = self.server, self.experiment.seed
        globals_ = global_models(self.experiment, server.rounds, server.layout.flatten(server.model.state_dict()))
        for server_round in server.rounds:
            for pid in server.clients:
                data = server.batch(pid)
                delta = training.train_locally(server.model, server.layout, globals_[server_round], data,
                                               server.training, generator_for(seed, server_round, pid),
                                               client_index=pid)
                server(server_round, pid, delta, globals_[server_round], float(len(data)))
        return server.finish()


def run_leakage(experiment: Experiment, *, out_dir: str | Path | None, attack: str | None = None,
                labels: str | None = None, clients=None, rounds=None, batch_size: int | None = None,
                steps: int | None = None, restarts: int | None = None, kind: str | None = None,
                progress: Callable[[dict], None] | None = None, lpips: bool = True) -> dict:
    """The curious server on its own (see the module docstring): attack each chosen client's honest update in
    each chosen round; keyword arguments override the experiment's ``[leakage]`` table. Writes ``leak.json``,
    ``leak.html`` and the grids into `out_dir` (None: nothing is written); `progress(result)` after each
    attacked update. Returns the leak.json document (with its summary)."""
    return prepare_leakage(experiment, out_dir=out_dir, attack=attack, labels=labels, clients=clients, rounds=rounds,
                           batch_size=batch_size, steps=steps, restarts=restarts, kind=kind, progress=progress,
                           lpips=lpips).run()


__all__ = ["LEAK_FILES", "CuriousServer", "StandaloneLeakage", "global_models", "model_at", "prepare_leakage",
           "run_leakage", "settings_for"]
