"""The bad-input catalogue for ``protect``: every case is refused before a model loads, in one line naming
the culprit, with every file that existed before byte-identical and nothing new left behind."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def image(path: Path, size=(24, 16)) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


pytestmark = pytest.mark.usefixtures("no_model_load")


@pytest.fixture
def art(tmp_path):
    """tmp_path with a.png (24×16), a 10×10 mask, a folder of two images and a text file."""
    image(tmp_path / "a.png")
    image(tmp_path / "mask.png", size=(10, 10))
    (tmp_path / "in").mkdir()
    image(tmp_path / "in" / "x.png")
    image(tmp_path / "in" / "y.png")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


# ------------------------------------------------------------------ data loss: outputs over inputs
def test_report_is_the_input(refused, art):
    refused(["protect", "a.png", "--report", "a.png"], "a.png", "report")


def test_report_is_the_input_even_with_overwrite(refused, art):
    refused(["protect", "a.png", "--report", "a.png", "--overwrite"], "a.png")


def test_report_is_an_input_of_a_folder_run(refused, art):
    refused(["protect", "in", "--report", "in/x.png"], "x.png", "report")


def test_report_is_the_mask(refused, art):
    image(art / "fullmask.png")
    refused(["protect", "a.png", "--mask", "fullmask.png", "--report", "fullmask.png"], "fullmask.png")


def test_report_is_the_output(refused, art):
    refused(["protect", "a.png", "-o", "o.png", "--report", "o.png"], "o.png")


def test_output_is_the_input(refused, art):
    refused(["protect", "a.png", "-o", "a.png"], "a.png")


def test_output_is_the_mask(refused, art):
    image(art / "m.png")
    refused(["protect", "a.png", "--mask", "m.png", "-o", "m.png"], "m.png")


def test_report_is_a_folder(refused, art):
    (art / "reports").mkdir()
    refused(["protect", "a.png", "--report", "reports"], "reports", "folder")


def test_report_is_a_users_file(refused, art):
    refused(["protect", "a.png", "--report", "notes.txt"], "notes.txt", "not an artshield report")


def test_report_is_a_non_image_in_the_input_folder(refused, art):
    (art / "in" / "readme.txt").write_text("keep me")
    refused(["protect", "in", "--report", "in/readme.txt"], "readme.txt")


def test_existing_output_without_overwrite(refused, art):
    image(art / "mine.png", size=(24, 16))
    refused(["protect", "a.png", "-o", "mine.png"], "mine.png", "--overwrite")


def test_output_parent_is_a_file(refused, art):
    refused(["protect", "a.png", "-o", "notes.txt/out.png"], "notes.txt")


def test_output_folder_parent_is_a_file(refused, art):
    refused(["protect", "in", "-o", "notes.txt/out"], "notes.txt")


def test_output_with_jpeg_suffix(refused, art):
    refused(["protect", "a.png", "-o", "a.jpg"], "a.jpg", ".png")


def test_folder_output_is_a_file(refused, art):
    refused(["protect", "in", "-o", "notes.txt"], "notes.txt", "folder")


# ------------------------------------------------------------------ inputs
def test_missing_input(refused, art):
    refused(["protect", "nope.png"], "nope.png", "no such file")


def test_no_input(refused, art):
    refused(["protect"], "image or a folder")


def test_empty_folder(refused, art):
    (art / "empty").mkdir()
    refused(["protect", "empty"], "empty", "no images")


def test_folder_of_non_images_only(refused, art):
    (art / "docs").mkdir()
    (art / "docs" / "a.txt").write_text("text")
    refused(["protect", "docs"], "docs", "no images")


def test_text_file_as_input(refused, art):
    refused(["protect", "notes.txt"], "notes.txt")


def test_empty_file_as_input(refused, art):
    (art / "zero.png").write_bytes(b"")
    refused(["protect", "zero.png"], "zero.png", "empty")


def test_truncated_png_as_input(refused, art):
    data = (art / "a.png").read_bytes()
    (art / "cut.png").write_bytes(data[: len(data) // 2])
    refused(["protect", "cut.png"], "cut.png")


def test_float_tiff_as_input(refused, art):
    Image.fromarray(np.zeros((8, 8), np.float32), "F").save(art / "float.tif")
    refused(["protect", "float.tif"], "float.tif", "floating-point")


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_dev_zero_as_input(refused, art):
    refused(["protect", "/dev/zero"], "/dev/zero", "not a regular file")


def test_too_many_pixels(refused, art):
    out = refused(["protect", "a.png", "--max-pixels", "100"], "a.png", "24×16", "--max-pixels 384")
    assert "max_pixels=" not in out.stderr


def test_already_protected_single_file_is_a_no_op(art, monkeypatch, capsys):
    """Re-protecting a protected file: exit 0, a line saying so, and no stray *.protected.protected.* files."""
    from artshield.imageio import read_image, write_png
    from artshield.protect.cli import main

    monkeypatch.chdir(art)
    write_png(art / "done.png", read_image(art / "a.png").rgb, text={"artshield": '{"tool": "artshield"}'})
    before = sorted(p.name for p in art.iterdir())
    assert main(["done.png"]) == 0
    assert "already protected" in capsys.readouterr().out
    assert sorted(p.name for p in art.iterdir()) == before


# ------------------------------------------------------------------ the mask
def test_mask_missing(refused, art):
    refused(["protect", "a.png", "--mask", "nomask.png"], "nomask.png")


def test_mask_is_a_folder(refused, art):
    refused(["protect", "a.png", "--mask", "in"], "in", "folder")


def test_mask_of_the_wrong_size(refused, art):
    refused(["protect", "a.png", "--mask", "mask.png"], "mask.png", "10×10", "24×16")


def test_mask_not_an_image(refused, art):
    refused(["protect", "a.png", "--mask", "notes.txt"], "notes.txt")


# ------------------------------------------------------------------ arguments, at parse time
@pytest.mark.parametrize(
    "args, name",
    [
        (["--eps", "0"], "--eps"),
        (["--eps", "300"], "--eps"),
        (["--eps", "abc"], "--eps"),
        (["--eps", "8/0"], "--eps"),
        (["--step-size", "-1"], "--step-size"),
        (["--steps", "0"], "--steps"),
        (["--steps", "-1"], "--steps"),
        (["--steps", "2.5"], "--steps"),
        (["--tile-size", "0"], "--tile-size"),
        (["--samples-per-step", "0"], "--samples-per-step"),
        (["--eval-samples", "-1"], "--eval-samples"),
        (["--max-pixels", "0"], "--max-pixels"),
        (["--seed", "-3"], "--seed"),
        (["--method", "glaze"], "glaze"),
        (["--robust=jpeg,sharpen"], "sharpen"),
        (["--robust=jpeg:quality=900"], "--robust"),
        (["--device", "gpu"], "gpu"),
        (["--dtype", "fp8"], "fp8"),
        (["--strength", "max"], "max"),
        (["--strength", "low", "--eps", "4"], "--eps"),
        (["--no-such-option"], "--no-such-option"),
    ],
)
def test_bad_argument_is_refused_at_parse_time(refused, art, args, name):
    refused(["protect", "a.png", *args], name)


def test_nothing_was_loaded_for_an_argument_error_even_on_a_missing_input(refused, art):
    """Argument errors come first: no input is read for them."""
    refused(["protect", "nope.png", "--steps", "0"], "--steps")
