"""Smoke runs of the federated benchmarks and proofs: each runs end to end on a tiny setting and writes its JSON."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("flwr")


def load(path: Path):
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_throughput_benchmark_writes_its_ratios(tmp_path):
    out = tmp_path / "throughput.json"
    module = load(ROOT / "benchmarks" / "fl_throughput.py")
    assert module.main(["--clients", "5", "--rounds", "2", "--repeats", "1", "--output", str(out)]) == 0
    data = json.loads(out.read_text())
    rates = data["updates_per_second"]
    assert rates["flower"] > 0 and rates["bare"] > 0
    assert data["ratio_flower_to_bare"] == pytest.approx(rates["flower"] / rates["bare"], rel=0.05)


def test_label_benchmark_writes_every_method(tmp_path):
    out = tmp_path / "labels.json"
    module = load(ROOT / "benchmarks" / "fl_labels.py")
    assert module.main(["--tasks", "digits", "--batches", "1", "4", "--trials", "2", "--train-epochs",
                        "--output", str(out)]) == 0
    text = out.read_text()
    for method in ("idlg", "zero-shot", "llg"):
        assert method in text


def test_dp_proof_quick_run(tmp_path):
    results, plot = tmp_path / "dp.json", tmp_path / "dp.png"
    module = load(ROOT / "examples" / "fl_dp_proof.py")
    assert module.main(["--quick", "--results", str(results), "--plot", str(plot)]) == 0
    data = json.loads(results.read_text())
    assert data and plot.stat().st_size > 0
