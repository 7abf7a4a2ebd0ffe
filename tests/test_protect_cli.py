"""The `protect` command end to end on a tiny model: odd-sized RGBA, folders, reruns and every bad input."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from artshield.cli import main as artshield_main
from artshield.protect.cli import main as protect_main


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_rgba(path: Path, size=(45, 29)) -> Path:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    alpha = np.tile(np.linspace(0, 255, size[0], dtype=np.uint8), (size[1], 1))[..., None]
    Image.fromarray(np.concatenate([rgb, alpha], axis=-1), "RGBA").save(path)
    return path


def make_rgb(path: Path, size=(40, 32), fmt=None) -> Path:
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, fmt)
    return path


def call(argv: list[str]) -> int:
    """Run `protect` in-process; argument errors exit through argparse (SystemExit(2))."""
    try:
        return protect_main([str(a) for a in argv])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1


@pytest.fixture
def fast(tiny_model_dir):
    """Arguments that keep a CLI run to a second on the tiny model."""
    return ["--model", str(tiny_model_dir), "--steps", "2", "--eval-samples", "2", "--quiet", "--device", "cpu"]


def test_odd_sized_rgba_end_to_end(tmp_path, fast, capsys):
    source = make_rgba(tmp_path / "painting.png")
    before = digest(source)
    assert protect_main([str(source), "--eps", "8/255", *fast]) == 0
    output = tmp_path / "painting.protected.png"
    report = json.loads((tmp_path / "painting.protected.report.json").read_text())
    assert digest(source) == before  # the original is untouched
    original, protected = Image.open(source), Image.open(output)
    assert protected.size == original.size and protected.mode == "RGBA"
    o, p = np.asarray(original).astype(int), np.asarray(protected).astype(int)
    assert np.array_equal(o[..., 3], p[..., 3])  # alpha kept exactly
    assert np.abs(o[..., :3] - p[..., :3]).max() <= 8  # budget holds in the saved file
    assert np.abs(o[..., :3] - p[..., :3]).max() > 0
    metadata = json.loads(protected.info["artshield"])
    assert metadata["settings"]["method"] == "advdm" and metadata["source_sha256"] == before
    entry = report["images"][0]
    for key in ("linf_255", "psnr_db", "ssim", "objective_before", "objective_after", "seconds"):
        assert key in entry
    assert entry["linf_255"] <= 8
    assert "painting.protected.png" in capsys.readouterr().out


def test_rerun_with_same_settings_is_skipped_and_different_needs_overwrite(tmp_path, fast, capsys):
    source = make_rgb(tmp_path / "a.png")
    assert protect_main([str(source), *fast]) == 0
    output = tmp_path / "a.protected.png"
    stamp = output.stat().st_mtime_ns
    capsys.readouterr()
    assert protect_main([str(source), *fast]) == 0  # same settings: up to date
    assert output.stat().st_mtime_ns == stamp
    assert protect_main([str(source), "--seed", "3", *fast]) == 2  # different settings: refuse
    assert "--overwrite" in capsys.readouterr().err
    assert protect_main([str(source), "--seed", "3", "--overwrite", *fast]) == 0
    assert output.stat().st_mtime_ns != stamp


def test_folder_mode_skips_non_images_and_protected_files(tmp_path, fast, capsys):
    folder = tmp_path / "art"
    folder.mkdir()
    make_rgb(folder / "one.png")
    make_rgb(folder / "two.jpg", fmt="JPEG")
    Image.fromarray(np.full((36, 36), 128, np.uint8), "L").save(folder / "grey.png")
    (folder / "notes.txt").write_text("not an image")
    assert protect_main([str(folder), *fast]) == 0
    out_dir = tmp_path / "art_protected"
    assert sorted(p.name for p in out_dir.glob("*.png")) == ["grey.png", "one.png", "two.png"]
    assert Image.open(out_dir / "grey.png").mode == "L"  # greyscale stays greyscale
    report = json.loads((out_dir / "report.json").read_text())
    assert len(report["images"]) == 3
    assert any("notes.txt" in s["input"] for s in report["skipped"])
    # A protected image dropped back into the input folder is recognised and skipped.
    (out_dir / "one.png").rename(folder / "already.png")
    capsys.readouterr()
    assert protect_main([str(folder), *fast]) == 0
    err_and_out = "".join(capsys.readouterr())
    assert "already protected" in err_and_out
    assert "up to date" in err_and_out  # two.jpg and grey.png were done last time


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda d: [str(d / "missing.png")], "no such file"),
        (lambda d: [str(d / "corrupt.png")], "corrupt.png"),
        (lambda d: [str(d / "ok.png"), "--eps", "lots"], "--eps"),
        (lambda d: [str(d / "ok.png"), "--method", "glaze"], "glaze"),
        (lambda d: [str(d / "ok.png"), "-o", str(d / "out.jpg")], ".png"),
        (lambda d: [str(d / "ok.png"), "--steps", "0"], "--steps"),
        (lambda d: [str(d / "ok.png"), "-o", str(d / "ok.png")], "ok.png"),
        (lambda d: [str(d / "empty")], "no images"),
    ],
)
def test_bad_input_is_one_line_and_nonzero_and_leaves_originals(tmp_path, fast, capsys, make_args, message):
    make_rgb(tmp_path / "ok.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    (tmp_path / "empty").mkdir()
    before = {p.name: digest(p) for p in tmp_path.iterdir() if p.is_file()}
    code = call([*fast, *make_args(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert {p.name: digest(p) for p in tmp_path.iterdir() if p.is_file() and p.name in before} == before


def test_bad_model_is_one_line(tmp_path, capsys):
    source = make_rgb(tmp_path / "ok.png")
    code = protect_main([str(source), "--model", "someone/not-a-model", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "not in the local Hugging Face cache" in err and len(err.splitlines()) == 1


def test_list_methods_and_umbrella(capsys):
    assert protect_main(["--list-methods"]) == 0
    assert "advdm" in capsys.readouterr().out
    assert artshield_main(["protect", "--list-methods"]) == 0
    assert "advdm" in capsys.readouterr().out
    assert artshield_main(["nonsense"]) == 2


def test_console_script_prints_no_traceback(tmp_path):
    """The installed entry point turns user errors into one line and exit status 2."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "artshield", "protect", str(tmp_path / "nope.png")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "nope.png" in proc.stderr


def test_sixteen_bit_greyscale_stays_sixteen_bit(tmp_path, fast):
    values = (np.linspace(0, 65535, 40 * 33).reshape(33, 40)).astype(np.uint16)
    source = tmp_path / "deep.png"
    Image.fromarray(values).save(source)  # uint16 -> a 16-bit greyscale PNG
    assert protect_main([str(source), "--eps", "8/255", *fast]) == 0
    protected = Image.open(tmp_path / "deep.protected.png")
    assert protected.mode.startswith("I") and protected.size == (40, 33)
    change = np.abs(np.asarray(protected).astype(np.int64) - values.astype(np.int64))
    assert change.max() <= round(8 / 255 * 65535) and change.max() > 0


def test_exif_orientation_is_honoured(tmp_path, fast):
    source = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    make_rgb(tmp_path / "plain.png", size=(48, 32))
    Image.open(tmp_path / "plain.png").save(source, "JPEG", exif=exif.tobytes())
    assert protect_main([str(source), *fast]) == 0
    assert Image.open(tmp_path / "rotated.protected.png").size == (32, 48)  # displayed as 32 wide, 48 high


def test_folder_run_skips_broken_files_protects_the_rest_and_exits_1(tmp_path, fast, capsys):
    folder = tmp_path / "art"
    folder.mkdir()
    make_rgb(folder / "a.png")
    data = (folder / "a.png").read_bytes()
    (folder / "b_cut.png").write_bytes(data[: len(data) // 2])  # passes the header check, fails decoding
    Image.fromarray(np.zeros((8, 8), np.float32), "F").save(folder / "c_float.tif")
    (folder / "d_garbage.png").write_bytes(b"not a png at all")
    make_rgb(folder / "e_tiny.png", size=(1, 1))
    make_rgb(folder / "f_small.png", size=(5, 7))
    make_rgb(folder / "z.png")
    (folder / "notes.txt").write_text("not an image, not an error")
    before = {p.name: digest(p) for p in folder.iterdir()}
    assert call([str(folder), *fast]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    out_dir = tmp_path / "art_protected"
    assert sorted(p.name for p in out_dir.iterdir()) == ["a.png", "e_tiny.png", "f_small.png", "report.json", "z.png"]
    for name in ("b_cut.png", "c_float.tif", "d_garbage.png", "notes.txt"):
        assert name in err
    assert "protected 4 of 6 images; 3 skipped for an error" in out
    assert "SSIM n/a" in out  # tiny images have no SSIM; the summary line says so instead of crashing
    report = json.loads((out_dir / "report.json").read_text())
    assert len(report["images"]) == 4
    assert sum(s["reason"].startswith("error") for s in report["skipped"]) == 2  # read errors met while running
    assert {p.name: digest(p) for p in folder.iterdir()} == before


def test_outputs_have_normal_permissions(tmp_path, fast):
    source = make_rgb(tmp_path / "a.png")
    old = os.umask(0o022)
    try:
        assert call([str(source), *fast]) == 0
    finally:
        os.umask(old)
    for name in ("a.protected.png", "a.protected.report.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_robust_spec_and_dtype_end_to_end(tmp_path, fast):
    source = make_rgb(tmp_path / "a.png")
    assert call([str(source), *fast, "--robust=jpeg:quality=60-90,resize", "--dtype", "bf16"]) == 0
    report = json.loads((tmp_path / "a.protected.report.json").read_text())
    assert report["dtype"] == "bfloat16"
    robust = json.dumps(report["settings"]["robust"]).lower()
    assert "jpeg" in robust and "resize" in robust
    change = np.abs(np.asarray(Image.open(tmp_path / "a.protected.png")).astype(int) - np.asarray(Image.open(source)).astype(int))
    assert 0 < change.max() <= 8


def test_no_model_and_no_cached_checkpoint_uses_the_demo_model_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    source = make_rgb(tmp_path / "a.png", size=(16, 16))
    assert call([str(source), "--steps", "1", "--eval-samples", "0", "--quiet", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    warning_lines = [line for line in err.splitlines() if "demonstration model" in line]
    assert len(warning_lines) == 1 and "does NOT protect against real mimicry" in warning_lines[0]
    assert "hf download" in warning_lines[0]
    report = json.loads((tmp_path / "a.protected.report.json").read_text())
    assert report["model"] == "demo" and report["model_chosen_by"] == "default"
    assert "demonstration model" in report["demo_model_warning"]
    assert "demonstration model" in report["images"][0]["demo_model_warning"]
    metadata = json.loads(Image.open(tmp_path / "a.protected.png").info["artshield"])
    assert "demonstration model" in metadata["demo_model_warning"]


def test_no_model_uses_a_checkpoint_from_the_local_cache_and_names_it(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """A fake Hugging Face cache holding a complete SD 1.5 snapshot (the tiny model's files)."""
    cache = tmp_path / "hub"
    repo = cache / "models--stable-diffusion-v1-5--stable-diffusion-v1-5"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    source = make_rgb(tmp_path / "a.png", size=(16, 16))
    assert call([str(source), "--steps", "1", "--eval-samples", "0", "--quiet", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in err and "local Hugging Face cache" in err
    assert "demonstration" not in err
    report = json.loads((tmp_path / "a.protected.report.json").read_text())
    assert report["model"] == "stable-diffusion-v1-5/stable-diffusion-v1-5" and "demo_model_warning" not in report
    assert "demo_model_warning" not in json.loads(Image.open(tmp_path / "a.protected.png").info["artshield"])


def test_start_up_is_light_and_ctrl_c_while_starting_is_one_line(monkeypatch, capsys):
    """`import artshield.protect.cli` does not import torch, and Ctrl-C while the parser is built (the only
    import left before the guarded parse) is one line with exit status 130."""
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, artshield.protect.cli; print('torch' in sys.modules)"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr
    import artshield.protect.cli as cli

    def interrupted(prog):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert cli.main(["x.png"]) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "interrupted" in err
