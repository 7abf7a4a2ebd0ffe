"""Running experiments: one federation → per-round JSON and a summary; a sweep of attacks × defenses × seeds
whose cells are kept as they finish, so an interrupted sweep resumes where it stopped.

Output of :func:`run_experiment` (a folder)::

    rounds.json     {"finished": false|true, "config_hash", "rounds": [{round, accuracy, loss, error_rate, asr,
                    tpr, fpr, dropped, seconds, ...}]} — rewritten atomically after every round
    summary.json    the experiment, its config hash and the summary (final accuracy / error rate / loss / ASR,
                    mean detection TPR / FPR, dropped replies, seconds) — written when the run finishes
    leak.json, leak.html, grid-client<k>.png
                    with a [leakage] table: the curious server's reconstructions (fl_bridge.leakage.runner)

Output of :func:`sweep` (a folder)::

    cells/<defense>__<attack>__seed<k>.json   one per cell, written atomically when the cell finishes
    sweep.json                                the grid and the base experiment

A cell file is reused only when it is finished and its ``config_hash`` is the cell's: change the experiment
(rounds, clients, learning rate, a parameter...) and every affected cell is computed again.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError
from ..fileio import check_output_folder, write_json_atomic
from .experiment import Experiment, check_grid

logger = logging.getLogger(__name__)

#: Keys of every per-round record, in this order (extra ``dropped-<reason>`` counts follow).
ROUND_KEYS = ("round", "accuracy", "loss", "error_rate", "asr", "tpr", "fpr", "dropped", "seconds")
#: Kept when the federation reports them (the platform's clients sampled, malicious among them, model kept).
EXTRA_KEYS = ("sampled", "sampled_malicious", "kept_model", "epsilon")
CELL_FORMAT = 1


def _federation():
    """The platform module (imported when a federation actually runs; tests replace it)."""
    return importlib.import_module("artshield.fl_bridge.federation")


# -------------------------------------------------------------------------------------------------
# per-round records and summaries
# -------------------------------------------------------------------------------------------------


def _number(value: Any) -> float | int | None:
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def round_record(record: dict) -> dict:
    """A federation's round dict as written to JSON: the :data:`ROUND_KEYS` (missing ones None, error rate
    = 1 − accuracy), then :data:`EXTRA_KEYS` and the non-zero ``dropped-<reason>`` counts (top level or in the record's
    ``metrics``); non-finite numbers become None."""
    out = {key: _number(record.get(key)) for key in ROUND_KEYS}
    if out["accuracy"] is not None:
        out["error_rate"] = 1.0 - float(out["accuracy"])
    if out["round"] is not None:
        out["round"] = int(out["round"])
    out["dropped"] = int(out["dropped"] or 0)
    for key in EXTRA_KEYS:
        if key in record:
            out[key] = _number(record[key])
    reasons = {**(record.get("metrics") if isinstance(record.get("metrics"), dict) else {}), **record}
    for key in sorted(reasons):
        if key.startswith("dropped-") and _number(reasons[key]):
            out[key] = int(_number(reasons[key]))
    return out


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarize_rounds(rounds: Sequence[dict]) -> dict:
    """Final accuracy / error rate / loss / ASR (last round), best accuracy, mean detection TPR / FPR over the
    rounds that report them, dropped replies and seconds in total."""
    final = rounds[-1] if rounds else {}
    accuracies = [r["accuracy"] for r in rounds if r.get("accuracy") is not None]
    return {
        "rounds": len(rounds),
        "final_accuracy": final.get("accuracy"),
        "final_error_rate": final.get("error_rate"),
        "final_loss": final.get("loss"),
        "final_asr": final.get("asr"),
        "best_accuracy": max(accuracies) if accuracies else None,
        "mean_tpr": _mean([r.get("tpr") for r in rounds]),
        "mean_fpr": _mean([r.get("fpr") for r in rounds]),
        "dropped": sum(int(r.get("dropped") or 0) for r in rounds),
        "seconds": sum(float(r.get("seconds") or 0.0) for r in rounds),
    }


def _result_rounds(result) -> list[dict]:
    rounds = getattr(result, "rounds", None)
    if rounds is None and isinstance(result, dict):
        rounds = result.get("rounds")
    if rounds is None:
        raise TypeError(f"run_federation returned {type(result).__name__} without per-round records (.rounds)")
    return [round_record(r) for r in rounds]


def _first_dict(args, kwargs) -> dict | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, dict):
            return value
    return None


def _federate(experiment: Experiment, on_round: Callable[[dict], None] | None, observer=None) -> list[dict]:
    """Run one federation; `on_round(record)` after every round, `observer` sees every accepted reply (a
    curious server). Returns the per-round records."""

    def progress(*args, **kwargs):
        record = _first_dict(args, kwargs)
        if record is not None and on_round is not None:
            on_round(round_record(record))

    extra = {"observer": observer} if observer is not None else {}
    result = _federation().run_federation(experiment.federation_config(), progress=progress, **extra)
    return _result_rounds(result)


# -------------------------------------------------------------------------------------------------
# one run
# -------------------------------------------------------------------------------------------------


def run_experiment(experiment: Experiment, out_dir: str | Path,
                   progress: Callable[[dict], None] | None = None) -> dict:
    """Run `experiment` once; writes ``rounds.json`` after every round and ``summary.json`` at the end (see the
    module docstring). `progress(record)` is called with each finished round. Returns the summary dict."""
    out_dir = check_output_folder("output folder", out_dir)
    config_hash = experiment.config_hash()
    rounds_path = out_dir / "rounds.json"
    seen: list[dict] = []

    def on_round(record: dict) -> None:
        seen.append(record)
        write_json_atomic(rounds_path, {"finished": False, "config_hash": config_hash, "rounds": seen},
                          what="per-round results")
        if progress is not None:
            progress(record)

    observer = None
    if experiment.leakage is not None:  # a curious server attacks chosen clients' updates as they arrive
        from .leakage.runner import CuriousServer

        observer = CuriousServer(experiment.leakage, out_dir=out_dir, mode="federated", experiment=experiment)
    start = time.perf_counter()
    rounds = _federate(experiment, on_round, observer)
    wall = time.perf_counter() - start
    write_json_atomic(rounds_path, {"finished": True, "config_hash": config_hash, "rounds": rounds},
                      what="per-round results")
    summary = {
        "experiment": experiment.name,
        "source": experiment.source,
        "attack": experiment.label,
        "defense": experiment.defense,
        "seed": experiment.seed,
        "engine": experiment.engine,
        "config_hash": config_hash,
        "config": experiment.to_dict(),
        "summary": summarize_rounds(rounds),
        "wall_seconds": wall,
    }
    if observer is not None:
        summary["leakage"] = observer.finish()["summary"]
    write_json_atomic(out_dir / "summary.json", summary, what="summary")
    return summary


# -------------------------------------------------------------------------------------------------
# sweeps
# -------------------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    """A finished sweep: its folder, every cell's record (grid order), and how many were computed / reused."""

    folder: Path
    attacks: tuple[str, ...]
    defenses: tuple[str, ...]
    seeds: tuple[int, ...]
    cells: list[dict] = field(default_factory=list)
    computed: int = 0
    reused: int = 0


def cell_filename(attack: str, defense: str, seed: int) -> str:
    safe = [re.sub(r"[^A-Za-z0-9_.+-]", "_", part) for part in (defense, attack)]
    return f"{safe[0]}__{safe[1]}__seed{int(seed)}.json"


def read_cell(path: Path) -> dict | None:
    """A cell file's record, or None when it is absent, unreadable or not a finished cell."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        logger.warning("cell %s is unreadable (%s); it is computed again", path, exc)
        return None
    if not isinstance(record, dict) or record.get("finished") is not True or record.get("format") != CELL_FORMAT:
        return None
    return record


def sweep(experiment: Experiment, attacks: Sequence[str], defenses: Sequence[str], seeds: Sequence[int],
          out_dir: str | Path, progress: bool = True) -> SweepResult:
    """Run every cell of attacks × defenses × seeds (see :meth:`Experiment.cell`) that `out_dir` does not
    already hold, finished, under the same configuration; returns every cell's record.

    Cells are checked first (names, parameters: nothing runs or is written on a bad one); each is written
    atomically when it finishes, so Ctrl-C loses at most the cell in progress."""
    attacks, defenses = tuple(attacks), tuple(defenses)
    seeds = tuple(int(s) for s in seeds)
    if not attacks or not defenses or not seeds:
        raise InvalidArgumentError("a sweep needs at least one attack, one defense and one seed.")
    check_grid(experiment, attacks, defenses)
    out_dir = check_output_folder("output folder", out_dir)
    cells_dir = out_dir / "cells"
    grid = [(attack, defense, seed) for defense in defenses for attack in attacks for seed in seeds]
    result = SweepResult(out_dir, attacks, defenses, seeds)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(grid), unit="cell", desc="sweep", disable=not progress, leave=True)
    try:
        for attack, defense, seed in grid:
            cell = experiment.cell(attack, defense, seed)
            config_hash = cell.config_hash()
            path = cells_dir / cell_filename(attack, defense, seed)
            record = read_cell(path)
            if record is not None and record.get("config_hash") == config_hash:
                result.reused += 1
            else:
                bar.set_postfix_str(f"{defense} / {attack} / seed {seed}", refresh=False)

                def on_round(r: dict, _cell=(defense, attack, seed)) -> None:
                    accuracy = r.get("accuracy")
                    text = f"{_cell[0]} / {_cell[1]} / seed {_cell[2]}: round {r.get('round')}"
                    bar.set_postfix_str(text + (f" acc {accuracy:.3f}" if accuracy is not None else ""))

                start = time.perf_counter()
                rounds = _federate(cell, on_round)
                record = {
                    "format": CELL_FORMAT,
                    "finished": True,
                    "attack": attack,
                    "defense": defense,
                    "seed": seed,
                    "config_hash": config_hash,
                    "config": cell.to_dict(),
                    "rounds": rounds,
                    "summary": summarize_rounds(rounds),
                    "wall_seconds": time.perf_counter() - start,
                }
                write_json_atomic(path, record, what="sweep cell")
                result.computed += 1
            result.cells.append(record)
            bar.update(1)
    finally:
        bar.close()
    write_json_atomic(out_dir / "sweep.json", {
        "experiment": experiment.name,
        "source": experiment.source,
        "base": experiment.to_dict(),
        "attacks": list(attacks),
        "defenses": list(defenses),
        "seeds": list(seeds),
        "cells": [{"attack": a, "defense": d, "seed": s, "file": f"cells/{cell_filename(a, d, s)}"}
                  for a, d, s in grid],
        "computed": result.computed,
        "reused": result.reused,
    }, what="sweep index")
    return result


def load_sweep(folder: str | Path) -> SweepResult:
    """A finished sweep's cells, read back from its folder (``sweep.json`` and ``cells/``)."""
    folder = Path(folder)
    try:
        index = json.loads((folder / "sweep.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidArgumentError(f"{str(folder)!r} is not a finished sweep folder (sweep.json: {exc}).") from None
    result = SweepResult(folder, tuple(index["attacks"]), tuple(index["defenses"]), tuple(index["seeds"]))
    for entry in index["cells"]:
        record = read_cell(folder / entry["file"])
        if record is None:
            raise InvalidArgumentError(f"{str(folder)!r}: cell {entry['file']!r} is missing or unfinished.")
        result.cells.append(record)
    result.reused = len(result.cells)
    return result


__all__ = ["ROUND_KEYS", "SweepResult", "cell_filename", "load_sweep", "read_cell", "round_record", "run_experiment",
           "summarize_rounds", "sweep"]
