"""Bad-input catalogue for ``artshield evaluate --mimicry external``: a bad training or generation template, or
external options without the external mimic, are refused in one line with exit status 2 before a model loads
(and before any command runs), leaving no file behind."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.usefixtures("no_model_load")

PY = sys.executable
TRAIN = f"{PY} train.py --data {{data_dir}} --out {{output_dir}} --seed {{seed}}"
GEN = f"{PY} gen.py {{model_dir}} {{output_dir}}"


@pytest.fixture
def folders(tmp_path):
    """clean/ (3 images), prot/ (their perturbed versions)."""
    rng = np.random.default_rng(0)
    for name in ("clean", "prot"):
        (tmp_path / name).mkdir()
    for i in range(3):
        pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "clean" / f"{i}.png")
        Image.fromarray(pixels ^ 1).save(tmp_path / "prot" / f"{i}.png")
    return tmp_path


BASE = ["evaluate", "--clean", "clean", "--protected", "prot", "--purify", "none"]


@pytest.mark.parametrize(
    ("extra", "culprit"),
    [
        (["--mimicry", "external"], "--train-command"),
        (["--mimicry", "external", "--train-command", TRAIN + " {data_folder}"], "{data_folder}"),
        (["--mimicry", "external", "--train-command", TRAIN + " {}"], "{}"),
        (["--mimicry", "external", "--train-command", TRAIN + " {seed!r}"], "{seed}"),
        (["--mimicry", "external", "--train-command", f"{PY} train.py {{data_dir}}"], "{output_dir}"),
        (["--mimicry", "external", "--train-command", f"{PY} train.py {{output_dir}}"], "{data_dir}"),
        (["--mimicry", "external", "--train-command", TRAIN + " 'unclosed"], "--train-command"),
        (["--mimicry", "external", "--train-command", TRAIN + " {oops"], "--train-command"),
        (["--mimicry", "external", "--train-command", ""], "--train-command"),
        (["--mimicry", "external", "--train-command", "no-such-trainer-xyz {data_dir} {output_dir}"], "no-such-trainer-xyz"),
        (["--mimicry", "external", "--train-command", TRAIN, "--generate-command", GEN + " {data_dir}"], "{data_dir}"),
        (["--mimicry", "external", "--train-command", TRAIN, "--generate-command", f"{PY} gen.py {{model_dir}}"],
         "--generate-command"),
        (["--mimicry", "external", "--train-command", TRAIN, "--train-seeds", "0,0"], "--train-seeds"),
        (["--mimicry", "external", "--train-command", TRAIN, "--train-seeds", "-1"], "--train-seeds"),
        (["--mimicry", "external", "--train-command", TRAIN, "--train-seeds", "a,b"], "--train-seeds"),
        (["--mimicry", "external", "--train-command", TRAIN, "--train-seeds", ","], "--train-seeds"),
        (["--mimicry", "sdedit", "--train-command", TRAIN], "--train-command"),
        (["--mimicry", "lora", "--generate-command", GEN], "--generate-command"),
        (["--mimicry", "external,external", "--train-command", TRAIN], "twice"),
        (["--mimicry", "externel", "--train-command", TRAIN], "externel"),
    ],
)
def test_bad_external_mimic_arguments_are_refused_before_any_work(folders, refused, extra, culprit):
    refused([*BASE, *extra], culprit)
