"""The Auditor end to end on a tiny base and a tiny LoRA made by the project's trainer: report.json and
report.html with the verdict and per-image evidence, resuming from the cells, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from artshield.authenticate import Auditor
from artshield.authenticate.cgidm import CGIDM
from artshield.cli import main as artshield_main
from artshield.errors import ArtshieldError, InvalidArgumentError
from tiny_lora import local_lora

TINY = {"steps": 2, "eps": 0.5, "step_size": 0.3}


@pytest.fixture(scope="module")
def lora_file(tiny_model_dir, tmp_path_factory):
    return local_lora(tiny_model_dir, tmp_path_factory.mktemp("lora") / "suspect.safetensors", steps=2)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit-images")
    rng = np.random.default_rng(0)
    for split, count in (("artist", 3), ("holdout", 3)):
        (root / split).mkdir()
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / split / f"{split}{i}.png")
    return root


@pytest.fixture(scope="module")
def auditor(tiny_model_dir, lora_file):
    return Auditor(str(tiny_model_dir), lora=lora_file, prompt="sks", cgidm=TINY, device="cpu", dtype="fp32")


def test_audit_writes_report_with_verdict_and_evidence_then_resumes(auditor, folders, tmp_path, monkeypatch):
    out = tmp_path / "report"
    result = auditor.audit(folders / "artist", holdout=folders / "holdout", output=out, progress=False)
    assert (result.computed, result.reused) == (6, 0)
    assert [i.split for i in result.images] == ["artist"] * 3 + ["holdout"] * 3
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"]["reference"] == "holdout" and 0 < report["verdict"]["p_value"] <= 1
    assert isinstance(report["verdict"]["learned"], bool) and report["verdict_text"]
    assert report["feature_space"] in ("clip", "dct")
    assert set(report["metrics"]) >= {"cgidm", "cgidm-gain", "cgidm-max", "cgidm-latent-align", "cgidm-latent-gain",
                                      "loss", "loss-diff", "secmi", "pia"}
    assert 0 <= report["metrics"]["cgidm"]["auc"] <= 1
    for image in report["images"]:
        assert set(image["evidence"]) == {"original", "degraded", "base", "contrast"}
        for rel in image["evidence"].values():
            with Image.open(out / rel) as im:
                assert im.size == (32, 32)
        assert set(image["similarity"]) == {"degraded", "base", "contrast"}
        assert (image["flagged"] is None) == (image["split"] == "holdout")
    page = (out / "report.html").read_text()
    assert report["verdict_text"].split(":")[0] in page
    assert "http://" not in page and "https://" not in page
    for image in report["images"]:
        assert image["evidence"]["contrast"] in page

    def forbidden(*args, **kwargs):
        raise AssertionError("a cell was recomputed")

    monkeypatch.setattr(CGIDM, "recover", forbidden)
    again = auditor.audit(folders / "artist", holdout=folders / "holdout", output=out, progress=False)
    assert (again.computed, again.reused) == (0, 6)
    assert [i.scores for i in again.images] == [i.scores for i in result.images]
    assert again.verdict == result.verdict
    # A reused image keeps the time its computation took (a proof over reused cells still reports seconds per image).
    assert [i.seconds for i in again.images] == [i.seconds for i in result.images] and min(i.seconds for i in again.images) > 0


def test_changed_settings_do_not_reuse_cells(auditor, tiny_model_dir, lora_file):
    other = Auditor(str(tiny_model_dir), lora=lora_file, prompt="sks", cgidm={**TINY, "steps": 3}, device="cpu", dtype="fp32")
    assert other.cell_key("ab" * 32) != auditor.cell_key("ab" * 32)
    assert auditor.cell_key("ab" * 32) == auditor.cell_key("ab" * 32)


def test_audit_without_reference_has_scores_but_no_verdict(auditor, folders):
    result = auditor.audit(folders / "artist", progress=False)
    assert result.verdict is None and result.metrics == {} and result.threshold is None
    assert all("cgidm" in i.scores and "pia" in i.scores for i in result.images)


def test_audit_refuses_overlap_and_single_image_reference(auditor, folders):
    artist = sorted((folders / "artist").iterdir())
    with pytest.raises(InvalidArgumentError, match="SHA-256"):
        auditor.audit(artist[:2], holdout=artist[1:], progress=False)
    with pytest.raises(InvalidArgumentError, match="at least 2"):
        auditor.audit(artist[:2], holdout=artist[2:], progress=False)


def test_suspect_of_another_architecture_is_refused(tiny_model_dir, tiny_inpaint_dir):
    with pytest.raises(ArtshieldError, match="suspect"):  # ModelPair.load refuses it
        Auditor(str(tiny_model_dir), suspect=str(tiny_inpaint_dir), device="cpu", dtype="fp32")


def test_cli_end_to_end(tiny_model_dir, lora_file, folders, tmp_path, capsys):
    out = tmp_path / "cli-report"
    argv = ["authenticate", "--base", str(tiny_model_dir), "--lora", str(lora_file), "--images", str(folders / "artist"),
            "--holdout", str(folders / "holdout"), "-o", str(out), "--steps", "1", "--baselines", "loss,pia",
            "--device", "cpu", "--dtype", "fp32", "--verdict-score", "pia", "-q"]  # fmt: skip
    assert artshield_main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"]["score"] == "pia"
    assert report["settings"]["baselines"] == ["loss", "pia"] and report["settings"]["cgidm"]["steps"] == 1
    assert (out / "report.html").is_file()
    assert capsys.readouterr().err.strip() == ""


def test_proof_example_smoke_run(tmp_path):
    """examples/authenticate_proof.py with tiny settings: a suspect and a control on the demo model."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "authenticate_proof.py"
    spec = importlib.util.spec_from_file_location("authenticate_proof_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = [str(tmp_path / "proof"), "--images", "4", "--size", "32", "--lora-steps", "1", "--cgidm-steps", "1",
            "--seeds", "0", "--control-images", "2", "--variance-draws", "2", "--device", "cpu", "--dtype", "fp32", "-q",
            "--suspects", "lora"]  # fmt: skip
    assert module.main(argv) == 0
    results = json.loads((tmp_path / "proof" / "results.json").read_text())
    run = results["runs"][0]["suspects"]["lora"]
    assert run["suspect"]["verdict"] is not None and run["control"]["verdict"] is not None
    assert "cgidm" in run["suspect"]["metrics"] and run["suspect"]["gradient_variance"]["draws"] == 2
    assert "| lora | cgidm |" in (tmp_path / "proof" / "table.md").read_text()


def test_suspect_recovery_adds_its_score_and_can_decide(tiny_model_dir, lora_file, folders):
    auditor = Auditor(str(tiny_model_dir), lora=lora_file, prompt="sks", cgidm={**TINY, "t_max": 200}, baselines=(),
                      suspect_recovery=True, verdict_score="cgidm-suspect-align", device="cpu", dtype="fp32")
    artist, holdout = sorted((folders / "artist").glob("*.png")), sorted((folders / "holdout").glob("*.png"))
    result = auditor.audit(artist[:2], holdout=holdout[:2])
    scores = result.images[0].scores
    assert {"cgidm-suspect-align", "cgidm-latent-align", "cgidm-latent-gain"} <= set(scores)
    assert all(-1.0 <= image.scores["cgidm-latent-align"] <= 1.0 for image in result.images)
    with pytest.raises(InvalidArgumentError, match="verdict_score"):  # without the suspect-only recovery
        Auditor(str(tiny_model_dir), lora=lora_file, verdict_score="cgidm-suspect-align", device="cpu", dtype="fp32")
