"""Smoke run of examples/fl_privacy_leakage.py (the leakage side of the user-level DP proof) in a tiny setting."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _script():
    name = "script_examples_fl_privacy_leakage"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / "fl_privacy_leakage.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_quick_run_writes_the_table_the_json_and_the_plot(tmp_path, capsys):
    module = _script()
    results, plot = tmp_path / "leak.json", tmp_path / "leak.png"
    assert module.main(["--quick", "--no-local-utility", "--results", str(results), "--plot", str(plot)]) == 0
    document = json.loads(results.read_text(encoding="utf-8"))
    names = [v["name"] for v in document["variants"]]
    assert names[0] == "FedAvg, no DP" and len(names) == len(set(names)) == len(module.VARIANTS)
    # every variant attacked once per case, the noised ones once per epsilon
    per_case = sum(1 if m in ("none", "central") else len(module.EPSILONS) for _, m, _, _ in module.VARIANTS)
    assert len(document["cells"]) == per_case
    for cell in document["cells"]:
        assert 0.0 <= cell["label_accuracy"] <= 1.0 and cell["psnr_known"] > 0
        if cell["mode"] == "central":  # the server sees the clipped delta: its norm is at most S
            assert cell["observed_norm"] <= document["setting"]["clip"] + 1e-5
        if cell["mode"] == "local":  # noise of std zS on 2,410 coordinates swamps the clipped update
            assert cell["observed_norm"] > 10 * document["setting"]["clip"]
    # z is the calibrated one, larger for a smaller epsilon
    z = document["noise_multipliers"]
    assert z["2"] > z["4"] > z["8"] > 0
    # fl_dp.json's setting is not the quick one: no accuracy is borrowed from it
    assert document["accuracy"]["from_fl_dp"] is False
    assert "| FedAvg, no DP |" in document["table"] and document["table"] in capsys.readouterr().out
    with Image.open(plot) as image:
        assert image.size[0] > 300 and image.size[1] > 200


def test_utility_reads_fl_dp_only_for_the_same_setting():
    module = _script()
    fl_dp = {"setting": dict(module.SETTING), "no_dp": {"mean": 0.9},
             "dp": {name: {f"{e:g}": {"mean": 0.5 + e / 100} for e in module.EPSILONS}
                    for name in ("DP-FedAvg", "+ BLUR", "+ LUS", "+ BLUR + LUS")}}
    measured = {"local_noise_accuracy": [{"epsilon": "2", "accuracy": 0.1}, {"epsilon": "2", "accuracy": 0.2}]}
    table = module.utility(fl_dp, module.SETTING, measured)
    assert table["from_fl_dp"] is True
    assert table["accuracy"]["FedAvg, no DP"]["4"] == 0.9
    assert table["accuracy"]["central DP + LUS (clip only)"]["8"] == 0.58
    assert table["accuracy"]["distributed noise zS/√(qN)"]["2"] == 0.52
    assert abs(table["accuracy"]["local noise zS (LocalDpMod)"]["2"] - 0.15) < 1e-12
    assert table["accuracy"]["local noise zS (LocalDpMod)"]["4"] is None
    other = module.utility(fl_dp, {**module.SETTING, "clip": 1.0}, measured)
    assert other["from_fl_dp"] is False and other["accuracy"]["FedAvg, no DP"]["2"] is None
