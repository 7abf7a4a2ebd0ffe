"""Bad-input catalogue for ``artshield evaluate``: every case is refused in one line, exit status 2, before a
model loads (``artshield.models.load`` fails the test if it is reached), leaving no file behind."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.usefixtures("no_model_load")


@pytest.fixture
def folders(tmp_path):
    """clean/ (3 images), prot/ (their perturbed versions), empty/, a file out.txt."""
    rng = np.random.default_rng(0)
    for name in ("clean", "prot", "empty"):
        (tmp_path / name).mkdir()
    for i in range(3):
        pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "clean" / f"{i}.png")
        Image.fromarray(pixels ^ 1).save(tmp_path / "prot" / f"{i}.png")
    (tmp_path / "out.txt").write_text("keep me")
    return tmp_path


BASE = ["evaluate", "--clean", "clean", "--protected", "prot", "--mimicry", "sdedit", "--purify", "none"]


@pytest.mark.parametrize(
    ("extra", "culprit"),
    [
        (["--bootstrap", "0"], "--bootstrap"),
        (["--bootstrap", "-5"], "--bootstrap"),
        (["--max-images", "0"], "--max-images"),
        (["--max-images", "-1"], "--max-images"),
        (["--max-images", "1"], "two clean images"),
        (["--samples", "0"], "--samples"),
        (["--sampling-steps", "0"], "--sampling-steps"),
        (["--sdedit-strength", "0"], "--sdedit-strength"),
        (["--sdedit-strength", "1.5"], "--sdedit-strength"),
        (["--guidance-scale", "nan"], "--guidance-scale"),
        (["--lora-lr", "0"], "--lora-lr"),
        (["--lora-checkpoints", "200"], "--lora-checkpoints"),  # without the lora mimic
        (["--mimicry", "lora", "--lora-checkpoints", "800"], "--lora-steps"),
        (["--mimicry", "lora", "--lora-steps", "100", "--lora-checkpoints", "50,150"], "--lora-steps"),
        (["--mimicry", "lora", "--lora-checkpoints", "0,100"], "--lora-checkpoints"),
        (["--mimicry", "lora", "--lora-checkpoints", "100,100"], "--lora-checkpoints"),
        (["--mimicry", "lora", "--lora-checkpoints", "a"], "--lora-checkpoints"),
        (["--mimicry", "lora", "--train-seeds", "1,1"], "--train-seeds"),
        (["--columns", "0"], "--columns"),
        (["--seed", "-1"], "--seed"),
        (["--device", "tpu"], "--device"),
        (["--dtype", "fp8"], "--dtype"),
        (["--headline", "beauty"], "--headline"),
        (["--output", "out.txt"], "out.txt"),
        (["--output", "out.txt/eval"], "out.txt"),
        (["--output", "clean"], "clean"),
        (["--output", "./clean/"], "clean"),
        (["--output", "prot"], "prot"),
        (["--mimicry", "dreamweaver"], "dreamweaver"),
        (["--mimicry", ","], "--mimicry"),
        (["--mimicry", "sdedit,sdedit"], "twice"),
        (["--purify", "bogus"], "bogus"),
        (["--purify", "jpeg0"], "jpeg0"),
        (["--purify", "jpeg101"], "jpeg101"),
        (["--purify", "diffpure:t_star=2"], "t_star"),
        (["--purify", "noise:sigma=-1"], "sigma"),
        (["--purify", "jpeg:bogus=1"], "bogus"),
        (["--purify", "jpeg75,jpeg:quality=75"], "jpeg:quality=75"),
        (["--headline", "artist_score", "--style-metric", "none"], "style metric"),
        (["--style-metric", "no-such-metric"], "no-such-metric"),
        (["--judge", "no-such-judge"], "no-such-judge"),
        (["--headline", "structure_score", "--judge", "none"], "structure judge"),
        (["--mimicry", "inpaint", "--inpaint-masks", "no-masks"], "no-masks"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(folders, refused, extra, culprit):
    refused([*BASE, *extra], culprit)


def test_protected_is_the_clean_folder(folders, refused):
    refused(["evaluate", "--clean", "clean", "--protected", "clean"], "clean")
    refused(["evaluate", "--clean", "clean", "--protected", "mine=./clean/"], "clean folder")
    refused(["evaluate", "--clean", str(folders / "clean"), "--protected", "mine=clean/../clean"], "clean folder")


def test_protected_is_a_link_to_the_clean_folder(folders, refused):
    os.symlink(folders / "clean", folders / "link")
    refused(["evaluate", "--clean", "clean", "--protected", "link"], "clean folder")


def test_protected_holds_the_clean_images_unchanged(folders, refused):
    (folders / "copy").mkdir()
    for path in (folders / "clean").iterdir():
        (folders / "copy" / path.name).write_bytes(path.read_bytes())
    refused([*BASE[:3], "--protected", "copy", *BASE[5:]], "unchanged")


def test_missing_and_empty_folders(folders, refused):
    refused(["evaluate", "--clean", "missing", "--protected", "prot"], "missing")
    refused(["evaluate", "--clean", "empty", "--protected", "prot"], "empty")
    refused(["evaluate", "--clean", "clean", "--protected", "missing"], "missing")
    refused(["evaluate", "--clean", "clean", "--protected", "empty"], "empty")
    refused(["evaluate", "--clean", "out.txt", "--protected", "prot"], "out.txt")


def test_protected_set_lacking_images_or_with_other_sizes(folders, refused):
    (folders / "prot" / "2.png").unlink()
    refused(BASE, "lacks")
    Image.new("RGB", (8, 8)).save(folders / "prot" / "2.png")
    refused(BASE, "protected image 2 ")


def test_labels_that_would_share_a_report_folder(folders, refused):
    refused([*BASE, "--protected", "clean=prot"], "clean")
    refused([*BASE[:5], "--protected", "a b=prot", "--protected", "a_b=prot", *BASE[5:]], "a_b")


def test_missing_required_arguments(folders, refused):
    refused(["evaluate", "--protected", "prot"], "--clean")
    refused(["evaluate", "--clean", "clean"], "--protected")
