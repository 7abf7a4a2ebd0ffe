"""The authentication proof script (LoRA and DreamBooth suspects, pooled over training seeds), its README
block, and the LoRA-toggle vs two-models benchmark: smoke runs with tiny settings and the pooling arithmetic."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def script(relative: str):
    """Import a script of benchmarks/ or examples/ by path (as tests/test_examples_benchmarks.py does)."""
    name = "script_" + relative.replace("/", "_").removesuffix(".py")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / relative)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _audit(artist, holdout, p, learned=False):
    from artshield.stats import roc_auc

    return {
        "verdict": {"learned": learned, "p_value": p},
        "p_values": {"cgidm": p},
        "metrics": {"cgidm": {"auc": roc_auc(artist, holdout), "tpr_at_1pct": float(np.mean(np.asarray(artist) > max(holdout)))}},
        "scores": {"artist": {"cgidm": list(artist)}, "holdout": {"cgidm": list(holdout)}},
        "seconds_per_image": 2.0,
    }


def test_summary_pools_training_seeds():
    proof = script("examples/authenticate_proof.py")
    runs = [  # seed 0 separates perfectly, seed 1 not at all; scores of seed 1 sit far above seed 0's
        {"seed": 0, "suspects": {"lora": {"train_seconds": {"suspect": 4.0}, "suspect": _audit([3, 4, 5], [0, 1, 2], 0.05),
                                          "control": _audit([0, 2, 4], [1, 3, 5], 0.6)}}},
        {"seed": 1, "suspects": {"lora": {"train_seconds": {"suspect": 6.0}, "suspect": _audit([10, 11, 12], [10, 11, 12], 0.5),
                                          "control": _audit([10, 11, 12], [10, 11, 12], 0.5)}}},
    ]  # fmt: skip
    summary = proof.summarize(runs)
    score = summary["lora"]["scores"]["cgidm"]
    over = score["suspect"]["auc_over_seeds"]
    assert over["per_seed"] == [1.0, 0.5] and over["mean"] == pytest.approx(0.75) and over["range"] == [0.5, 1.0]
    assert 0.5 <= over["ci"][0] <= over["mean"] <= over["ci"][1] <= 1.0
    pooled = score["suspect"]["pooled"]
    assert pooled["n_members"] == 6 and pooled["n_nonmembers"] == 6
    # pooled over seeds: every member score against every hold-out score, seeds mixed
    from artshield.stats import roc_auc

    assert pooled["auc"] == pytest.approx(roc_auc([3, 4, 5, 10, 11, 12], [0, 1, 2, 10, 11, 12]))
    assert pooled["auc_ci"][0] <= pooled["auc"] <= pooled["auc_ci"][1]
    assert score["suspect"]["p_values"] == [0.05, 0.5] and score["suspect"]["accused"] == [False, False]
    assert score["control"]["auc_over_seeds"]["per_seed"] == [pytest.approx(1 / 3), 0.5]
    assert [v["suspect"]["p_value"] for v in summary["lora"]["verdicts"]] == [0.05, 0.5]
    assert summary["lora"]["train_seconds"] == 5.0


@pytest.mark.slow
def test_proof_smoke_with_a_dreambooth_suspect_and_its_readme_block(tmp_path):
    proof = script("examples/authenticate_proof.py")
    written = tmp_path / "committed.json"
    argv = [str(tmp_path / "out"), "--images", "4", "--size", "32", "--suspects", "dreambooth", "--dreambooth-steps", "1",
            "--cgidm-steps", "1", "--seeds", "0", "--control-images", "0", "--variance-draws", "0", "-q",
            "--write-result", str(written)]  # fmt: skip
    assert proof.main(argv) == 0
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    assert json.loads(written.read_text()) == result
    assert result["suspect_kinds"] == ["dreambooth"] and result["seeds"] == [0]
    entry = result["runs"][0]["suspects"]["dreambooth"]
    assert (tmp_path / "out" / "seed0" / "suspect_dreambooth" / "unet").is_dir()  # a full diffusers folder
    report = json.loads((tmp_path / "out" / "seed0" / "report_suspect_dreambooth" / "report.json").read_text())
    assert report["settings"]["models"]["kind"] == "checkpoint"  # audited as a second loaded model
    assert set(entry) == {"train_seconds", "suspect"}  # --control-images 0: no control (the summary test has one)
    assert len(entry["suspect"]["scores"]["artist"]["cgidm"]) == 2 and 0 < entry["suspect"]["p_values"]["loss-diff"] <= 1
    table = script("benchmarks/render_readme.py").authenticate_proof_table(result)
    assert "| dreambooth | cgidm |" in table and "| dreambooth | loss-diff |" in table and "1 training seed (0)" in table
    assert "| dreambooth | cgidm |" in table.replace("–", "-") and "accused the real suspect in 0 of 1 seeds;" in table
    assert all(row.count("|") == 8 for row in table.splitlines() if row.startswith("| dreambooth"))


def test_proof_refuses_an_unknown_suspect_kind(tmp_path, capsys):
    proof = script("examples/authenticate_proof.py")
    with pytest.raises(SystemExit) as raised:
        proof.main([str(tmp_path / "out"), "--suspects", "lora,full"])
    assert raised.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--suspects" in err[0]
    assert not (tmp_path / "out").exists()


def test_authenticate_pair_smoke(tmp_path, tiny_model_dir):
    out = tmp_path / "authenticate_pair.json"
    argv = ["--model", str(tiny_model_dir), "--device", "cpu", "--resolution", "32", "--steps", "1", "--repeats", "1",
            "--rounds", "1", "--rank", "2", "--in-process", "--output", str(out)]  # fmt: skip
    assert script("benchmarks/authenticate_pair.py").main(argv) == 0
    result = json.loads(out.read_text())
    rows = {row["variant"]: row for row in result["rows"]}
    assert list(rows) == ["lora-toggle", "two-models", "two-pipelines"] and result["in_process"] is True
    assert rows["lora-toggle"]["time_ratio"] == 1.0 and all(row["s_per_image"] > 0 for row in rows.values())
    # One set of weights (plus the adapter) vs a second UNet vs everything twice.
    toggle, two, pipelines = (rows[v]["weights_mb"] for v in ("lora-toggle", "two-models", "two-pipelines"))
    assert toggle < two < pipelines
    table = script("benchmarks/render_readme.py").authenticate_pair_table(result)
    assert "| two-pipelines |" in table and "Ratios are to `lora-toggle`" in table
