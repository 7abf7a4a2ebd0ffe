"""The experiment runner with a fake federation: per-round JSON, sweeps that write a file per cell, resume
(finished cells skipped, an interrupted one rerun, a changed experiment recomputed), and reports whose
tables and plots match the cells. One real end-to-end run is skipped until the platform module exists."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

from artshield.fl_bridge import report as fl_report
from artshield.fl_bridge.experiment import parse_experiment
from artshield.fl_bridge.runner import cell_filename, load_sweep, run_experiment, sweep
from fl_fakes import FakeFederation, install_registries

ROOT = Path(__file__).resolve().parents[1]

EXPERIMENT = """
[task]
name = "digits"
[federation]
clients = 10
rounds = 3
[attack]
name = "lie"
fraction = 0.2
[defense]
name = "median"
"""
ATTACKS = ("clean", "lie", "pill+lie", "dba")
DEFENSES = ("fedavg", "krum")
SEEDS = (0, 1, 2)


@pytest.fixture
def federation(monkeypatch) -> FakeFederation:
    install_registries(monkeypatch)
    return FakeFederation().install(monkeypatch)


@pytest.fixture
def experiment(federation):
    return parse_experiment(EXPERIMENT, source="unit.toml")


def test_run_writes_rounds_and_summary(experiment, federation, tmp_path):
    seen = []
    summary = run_experiment(experiment, tmp_path / "run", progress=seen.append)
    rounds = json.loads((tmp_path / "run" / "rounds.json").read_text())
    assert rounds["finished"] is True and len(rounds["rounds"]) == 3 == len(seen)
    first = rounds["rounds"][0]
    assert list(first)[:9] == ["round", "accuracy", "loss", "error_rate", "asr", "tpr", "fpr", "dropped", "seconds"]
    assert first["dropped-nan"] == 1 and first["sampled"] == 10 and "metrics" not in first and first["error_rate"] == pytest.approx(1 - first["accuracy"])
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    expected = FakeFederation.final_accuracy("lie", "median", 0)
    assert on_disk["summary"]["final_accuracy"] == pytest.approx(expected)
    assert on_disk["summary"]["dropped"] == 1 and on_disk["config_hash"] == experiment.config_hash()
    assert federation.calls[0]["num_clients"] == 10 and federation.calls[0]["defense"] == "median"
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]


def test_sweep_writes_a_cell_per_attack_defense_seed(experiment, federation, tmp_path):
    result = sweep(experiment, ATTACKS, DEFENSES, SEEDS, tmp_path / "sw", progress=False)
    cells = sorted((tmp_path / "sw" / "cells").iterdir())
    assert len(cells) == len(result.cells) == result.computed == 24 and result.reused == 0
    assert len(federation.calls) == 24
    record = json.loads((tmp_path / "sw" / "cells" / cell_filename("pill+lie", "krum", 2)).read_text())
    assert (record["attack"], record["defense"], record["seed"], record["finished"]) == ("pill+lie", "krum", 2, True)
    assert record["config"]["attack"] == {"name": "pill", "fraction": 0.2, "params": {"base": "lie"}}
    clean = json.loads((tmp_path / "sw" / "cells" / cell_filename("clean", "fedavg", 0)).read_text())
    assert clean["config"]["attack"]["fraction"] == 0.0
    assert {c["attack"] for c in federation.calls} == {None, "lie", "pill", "dba"}
    index = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert index["attacks"] == list(ATTACKS) and len(index["cells"]) == 24
    assert [c["attack"] for c in load_sweep(tmp_path / "sw").cells] == [c["attack"] for c in result.cells]


def test_resume_skips_finished_cells_and_reruns_the_interrupted_one(experiment, federation, tmp_path):
    federation.interrupt_on_call = 5
    with pytest.raises(KeyboardInterrupt):
        sweep(experiment, ATTACKS, DEFENSES, SEEDS, tmp_path / "sw", progress=False)
    finished = sorted(p.name for p in (tmp_path / "sw" / "cells").iterdir())
    assert len(finished) == 4  # the fifth was interrupted after its first round: nothing of it is kept
    assert not [p for p in (tmp_path / "sw" / "cells").iterdir() if p.name.startswith(".")]
    federation.calls.clear()
    federation.interrupt_on_call = None
    result = sweep(experiment, ATTACKS, DEFENSES, SEEDS, tmp_path / "sw", progress=False)
    assert (result.reused, result.computed) == (4, 20) and len(federation.calls) == 20
    interrupted = result.cells[4]
    assert interrupted["finished"] and interrupted["attack"] == "lie" and interrupted["seed"] == 1
    again = sweep(experiment, ATTACKS, DEFENSES, SEEDS, tmp_path / "sw", progress=False)
    assert (again.reused, again.computed) == (24, 0) and len(federation.calls) == 20


def test_a_corrupt_or_unfinished_cell_is_computed_again(experiment, federation, tmp_path):
    sweep(experiment, ("lie",), ("fedavg",), (0, 1), tmp_path / "sw", progress=False)
    (tmp_path / "sw" / "cells" / cell_filename("lie", "fedavg", 0)).write_text("{ half")
    path = tmp_path / "sw" / "cells" / cell_filename("lie", "fedavg", 1)
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "finished": False}))
    federation.calls.clear()
    result = sweep(experiment, ("lie",), ("fedavg",), (0, 1), tmp_path / "sw", progress=False)
    assert result.computed == 2 and len(federation.calls) == 2


def test_a_changed_experiment_does_not_reuse_stale_cells(experiment, federation, tmp_path):
    sweep(experiment, ("clean", "lie"), ("fedavg",), (0,), tmp_path / "sw", progress=False)
    federation.calls.clear()
    longer = experiment.replace(rounds=4)
    result = sweep(longer, ("clean", "lie"), ("fedavg",), (0,), tmp_path / "sw", progress=False)
    assert result.computed == 2 and result.reused == 0
    assert all(len(c["rounds"]) == 4 for c in result.cells)
    federation.calls.clear()
    other_params = parse_experiment(EXPERIMENT.replace('fraction = 0.2', 'fraction = 0.2\nz = 0.5'),
                                    source="unit.toml").replace(rounds=4)
    result = sweep(other_params, ("clean", "lie"), ("fedavg",), (0,), tmp_path / "sw", progress=False)
    assert (result.reused, result.computed) == (1, 1)  # the clean cell does not depend on the attack's z


def test_report_tables_and_plots_match_the_cells(experiment, federation, tmp_path):
    result = sweep(experiment, ATTACKS, DEFENSES, SEEDS, tmp_path / "sw", progress=False)
    written = fl_report.write_report(result.cells, tmp_path / "sw", resamples=200)
    summary = written["summary"]
    for defense in DEFENSES:
        for attack in ATTACKS:
            base = None if attack == "clean" else attack
            name, pill_base = ("pill", "lie") if attack == "pill+lie" else (base, None)
            finals = [FakeFederation.final_accuracy(name, defense, s, pill_base) for s in SEEDS]
            entry = summary["accuracy"][defense][attack]
            assert entry["mean"] == pytest.approx(np.mean(finals)) and entry["n"] == 3
            assert entry["low"] <= entry["mean"] <= entry["high"] and entry["high"] - entry["low"] > 0
    assert set(summary["asr"]["fedavg"]) == {"dba"} and summary["asr"]["fedavg"]["dba"]["mean"] == pytest.approx(0.5)
    assert set(summary["detection"]) == {"krum"} and summary["detection"]["krum"]["lie"]["tpr"]["mean"] == 0.75
    pill = summary["pill"]["fedavg"]["lie"]
    lie_err = [1 - FakeFederation.final_accuracy("lie", "fedavg", s) for s in SEEDS]
    pill_err = [1 - FakeFederation.final_accuracy("pill", "fedavg", s, "lie") for s in SEEDS]
    assert pill["ratio"]["mean"] == pytest.approx(np.mean(pill_err) / np.mean(lie_err))
    assert pill["difference"]["mean"] == pytest.approx(np.mean(pill_err) - np.mean(lie_err))
    assert summary["per_round"]["lie"]["krum"][-1] == pytest.approx(summary["accuracy"]["krum"]["lie"]["mean"])

    md = written["markdown"].read_text()
    fedavg_lie = summary["accuracy"]["fedavg"]["lie"]
    assert f"{100 * fedavg_lie['mean']:.1f} [{100 * fedavg_lie['low']:.1f}, {100 * fedavg_lie['high']:.1f}]" in md
    assert f"×{pill['ratio']['mean']:.2f}" in md and "| krum |" in md and "TPR / FPR" in md
    page = written["html"].read_text()
    assert page.count("<table>") == 4 and "plots/accuracy-pill-lie.png" in page
    plots = sorted(p.name for p in (tmp_path / "sw" / "plots").iterdir())
    assert plots == sorted(fl_report.plot_filename(a) for a in ATTACKS)
    assert all((tmp_path / "sw" / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
    assert json.loads(written["json"].read_text())["accuracy"]["krum"]["dba"]["n"] == 3


def test_one_seed_has_no_interval_column(experiment, federation, tmp_path):
    result = sweep(experiment, ("clean", "lie"), ("fedavg",), (0,), tmp_path / "sw", progress=False)
    md = fl_report.markdown(fl_report.summarize(result.cells, resamples=50))
    assert "| fedavg | 95.0 | 65.0 |" in md and "[" not in md.split("\n", 3)[3]


def _script(relative: str):
    name = "script_" + relative.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_proof_script_quick_and_its_readme_table(federation, tmp_path, capsys):
    proof = _script("examples/fl_proof.py")
    results = tmp_path / "fl_proof.json"
    argv = ["--quick", "-o", str(tmp_path / "sw"), "--results", str(results), "-q", "--resamples", "50", "--last-rounds", "1"]
    assert proof.main(argv) == 0
    data = json.loads(results.read_text())
    assert data["config"]["task"]["name"] == "digits" and len(data["cells"]) == 6 == data["computed"]
    lie = data["goals"]["lie"]
    assert lie["best_defense"] == "median" and lie["fedavg_drop_points"] == pytest.approx(30.0)
    assert lie["met"] is False and lie["best_gap_points"] == pytest.approx(12.0)
    assert (tmp_path / "sw" / "report.html").is_file()
    table = _script("benchmarks/render_readme.py").render("fl-proof", source=results)
    assert "Task `digits`, 10 clients (20 % malicious), Dirichlet α = 0.5, 2 rounds, seeds 0" in table
    assert "| median | 95.0 | 83.0 | 71.0 |" in table and "×" in table
    assert "Under lie: best defense **median** at 83.0 %" in table and "not met" in table
    assert proof.main(argv) == 0 and json.loads(results.read_text())["reused"] == 6


@pytest.mark.skipif(importlib.util.find_spec("artshield.fl_bridge.federation") is None,
                    reason="the platform's federation module is not in this tree yet")
def test_quickstart_runs_end_to_end(tmp_path):
    """The real platform: the quickstart file, two rounds, through the command line."""
    from artshield.cli import main

    text = re.sub(r"(?m)^rounds = \d+", "rounds = 2", (ROOT / "examples/fl/quickstart.toml").read_text())
    path = tmp_path / "quick.toml"
    path.write_text(text)
    assert main(["fl", "run", str(path), "-o", str(tmp_path / "out"), "-q"]) == 0
    rounds = json.loads((tmp_path / "out" / "rounds.json").read_text())["rounds"]
    assert len(rounds) == 2 and 0.0 < rounds[-1]["accuracy"] <= 1.0


def test_cli_sweep_writes_the_report_and_resumes(federation, tmp_path, capsys):
    from artshield.cli import main

    (tmp_path / "exp.toml").write_text(EXPERIMENT)
    argv = ["fl", "sweep", str(tmp_path / "exp.toml"), "--attacks", "clean,lie", "--defenses", "fedavg,krum",
            "--seeds", "0,1", "-o", str(tmp_path / "out"), "-q"]
    assert main(argv) == 0
    assert "8 cells (8 computed, 0 reused)" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"cells", "plots", "sweep.json", "report.json",
                                                               "report.md", "report.html"}
    assert main(argv) == 0 and "(0 computed, 8 reused)" in capsys.readouterr().out
    assert len(federation.calls) == 8
    assert main(["fl", "run", str(tmp_path / "exp.toml"), "-o", str(tmp_path / "one"), "--seed", "3", "-q"]) == 0
    assert "lie vs median, 3 rounds" in capsys.readouterr().out and federation.calls[-1]["seed"] == 3


def test_cli_list_names_every_attack_defense_and_task(federation, capsys):
    from artshield.cli import main

    assert main(["fl", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("lie", "pill", "pill+<attack>", "fedavg", "skymask", "flower-krum", "digits", "styles"):
        assert f"  {name}" in out or name in out, name


def test_report_averages_the_last_rounds_when_asked():
    from artshield.fl_bridge.report import markdown, summarize

    rounds = [{"round": i + 1, "accuracy": a, "error_rate": 1 - a, "asr": None} for i, a in enumerate((0.2, 0.9, 0.5))]
    cells = [{"defense": "fedavg", "attack": "clean", "seed": 0, "rounds": rounds,
              "summary": {"final_accuracy": 0.5, "final_error_rate": 0.5, "rounds": 3}}]
    assert summarize(cells, resamples=10)["accuracy"]["fedavg"]["clean"]["mean"] == pytest.approx(0.5)
    last_two = summarize(cells, resamples=10, last_rounds=2)
    assert last_two["accuracy"]["fedavg"]["clean"]["mean"] == pytest.approx(0.7)
    assert "over the last 2 rounds" in markdown(last_two)
