"""Bad-input catalogue for ``artshield purify``: every case is refused in one line, exit status 2, before a
model loads (``artshield.models.load`` fails the test if it is reached) and before any output is written."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.usefixtures("no_model_load")


@pytest.fixture
def folders(tmp_path):
    """in/ (a.png, b.jpg, notes.txt), empty/, only-text/ (notes.txt), a file out.txt."""
    rng = np.random.default_rng(0)
    for name in ("in", "empty", "only-text"):
        (tmp_path / name).mkdir()
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "in" / "a.png")
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "in" / "b.jpg")
    (tmp_path / "in" / "notes.txt").write_text("mine")
    (tmp_path / "only-text" / "notes.txt").write_text("mine")
    (tmp_path / "out.txt").write_text("keep me")
    return tmp_path


@pytest.mark.parametrize(
    ("argv", "culprit"),
    [
        (["jpeg0", "in", "out"], "quality"),
        (["jpeg101", "in", "out"], "quality"),
        (["jpeg:quality=0", "in", "out"], "quality"),
        (["diffpure:t_star=2", "in", "out"], "t_star"),
        (["diffpure:t_star=0", "in", "out"], "t_star"),
        (["gridpure:gamma=1", "in", "out"], "gamma"),
        (["diffpure:steps=ten", "in", "out"], "steps"),
        (["noise:sigma=-1", "in", "out"], "sigma"),
        (["impress:perceptual=vibes", "in", "out"], "perceptual"),
        (["noisy-upscale:strength=1", "in", "out"], "strength"),
        (["resize:factor=0", "in", "out"], "factor"),
        (["blur:sigma=inf", "in", "out"], "sigma"),
        (["bogus", "in", "out"], "bogus"),
        (["jpeg:bogus=1", "in", "out"], "bogus"),
        (["jpeg:quality", "in", "out"], "quality"),
        (["jpeg75", "in"], "required"),
        (["jpeg75"], "required"),
        ([], "required"),
        (["jpeg75", "in", "out", "--seed", "-1"], "--seed"),
        (["jpeg75", "in", "out", "--device", "tpu"], "--device"),
        (["jpeg75", "in", "out", "--dtype", "fp8"], "--dtype"),
        (["jpeg75", "in", "out", "--wat"], "--wat"),
        (["jpeg75", "missing", "out"], "missing"),
        (["jpeg75", "out.txt", "out"], "out.txt"),
        (["jpeg75", "empty", "out"], "no images"),
        (["jpeg75", "only-text", "out"], "no images"),
        (["jpeg75", "in", "in"], "input folder"),
        (["diffpure", "in", "./in/"], "input folder"),
        (["jpeg75", "in", "in/../in"], "input folder"),
        (["jpeg75", "in", "out.txt"], "out.txt"),
        (["jpeg75", "in", "out.txt/sub"], "out.txt"),
        (["jpeg75", "in", "out", "--report", "in/a.png"], "a.png"),
        (["jpeg75", "in", "out", "--report", "in/b.jpg"], "b.jpg"),
        (["jpeg75", "in", "out", "--report", "in/notes.txt"], "notes.txt"),
        (["jpeg75", "in", "out", "--report", "./in//a.png"], "input file"),
        (["jpeg75", "in", "out", "--report", "in"], "folder"),
        (["jpeg75", "in", "out", "--report", "out.txt/report.json"], "out.txt"),
        (["jpeg75", "in", "out", "--report", "out/a.png"], "output image"),
        (["jpeg75", "in", "out", "--report", "out/b.png"], "output image"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(folders, refused, argv, culprit):
    refused(["purify", *argv], culprit)


def test_output_folder_is_a_link_to_the_input_folder(folders, refused):
    os.symlink(folders / "in", folders / "link")
    refused(["purify", "noise0.1", "in", "link"], "input folder")
    refused(["purify", "noise0.1", "link", "in"], "input folder")


def test_an_output_image_that_links_to_an_input_is_refused(folders, refused):
    (folders / "out").mkdir()
    os.symlink(folders / "in" / "a.png", folders / "out" / "a.png")
    refused(["purify", "jpeg75", "in", "out"], "a.png")


def test_report_that_links_to_an_input(folders, refused):
    os.symlink(folders / "in" / "a.png", folders / "report.json")
    refused(["purify", "jpeg75", "in", "out", "--report", "report.json"], "a.png")


def test_default_report_that_is_a_folder(folders, refused):
    (folders / "out" / "purify_report.json").mkdir(parents=True)
    refused(["purify", "jpeg75", "in", "out"], "purify_report.json")
