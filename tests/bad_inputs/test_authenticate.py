"""Bad inputs to ``artshield authenticate``: each refused with exit status 2, one line naming the culprit, and
nothing written — argument and folder problems before any model loads, model mismatches right after loading
(before the output folder exists)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image


def _image(path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 32, 3), value, np.uint8)).save(path)


@pytest.fixture
def base(tmp_path) -> list[str]:
    """A valid command line (relative paths: `refused` runs in tmp_path) with two artist and two hold-out images."""
    for i in range(2):
        _image(tmp_path / "art" / f"a{i}.png", 10 + i)
        _image(tmp_path / "held" / f"h{i}.png", 100 + i)
    (tmp_path / "lora.safetensors").write_bytes(b"not read before the folders are checked")
    return ["authenticate", "--base", "demo", "--lora", "lora.safetensors", "--images", "art", "--holdout", "held", "-o", "out"]


def with_flag(argv: list[str], flag: str, value: str | None) -> list[str]:
    argv = list(argv)
    if flag in argv:
        index = argv.index(flag)
        del argv[index : index + 2]
    return argv if value is None else argv + [flag, value]


@pytest.mark.usefixtures("no_model_load")
class TestBeforeAnyModelLoads:
    def test_empty_images_folder(self, refused, base, tmp_path):
        (tmp_path / "empty").mkdir()
        refused(with_flag(base, "--images", "empty"), "--images", "empty")

    def test_folder_without_images(self, refused, base, tmp_path):
        (tmp_path / "docs").mkdir()
        (tmp_path / "docs" / "notes.txt").write_text("hello")
        refused(with_flag(base, "--images", "docs"), "--images", "no images")

    def test_missing_images_folder(self, refused, base):
        refused(with_flag(base, "--images", "nowhere"), "--images", "nowhere")

    def test_holdout_with_one_image(self, refused, base, tmp_path):
        _image(tmp_path / "one" / "x.png", 200)
        refused(with_flag(base, "--holdout", "one"), "--holdout", "1 image")

    def test_holdout_sharing_a_file_with_the_images(self, refused, base, tmp_path):
        _image(tmp_path / "held" / "renamed_copy.png", 10)  # same bytes as art/a0.png
        refused(base, "--holdout", "SHA-256", "renamed_copy.png")

    def test_output_is_the_images_folder(self, refused, base):
        refused(with_flag(base, "-o", "art"), "--output", "art")

    def test_output_is_the_holdout_folder(self, refused, base):
        refused(with_flag(base, "-o", "held"), "--output", "held")

    def test_output_inside_the_images_folder(self, refused, base):
        refused(with_flag(base, "-o", "art/report"), "--output", "inside")

    def test_output_is_a_file(self, refused, base, tmp_path):
        (tmp_path / "out").write_text("x")
        refused(base, "--output", "is a file")

    def test_missing_lora(self, refused, base):
        refused(with_flag(base, "--lora", "missing.safetensors"), "--lora", "missing.safetensors")

    def test_suspect_and_lora_together(self, refused, base):
        refused(base + ["--suspect", "demo"], "--suspect", "--lora")

    def test_neither_suspect_nor_lora(self, refused, base):
        refused(with_flag(base, "--lora", None), "--suspect", "--lora")

    def test_negative_steps(self, refused, base):
        refused(base + ["--steps", "-1"], "--steps")

    def test_verdict_score_not_computed(self, refused, base):
        refused(base + ["--baselines", "loss", "--verdict-score", "pia"], "--verdict-score", "pia")

    def test_unknown_baseline(self, refused, base):
        refused(base + ["--baselines", "loss,guess"], "--baselines", "guess")


@pytest.fixture(scope="module")
def misfit_lora(tiny_model_dir, tmp_path_factory):
    """A LoRA with the key names of a real one for the tiny model but the wrong shapes."""
    from safetensors.torch import save_file

    from artshield.finetune import LocalTrainer
    from artshield.models import load

    model = load(str(tiny_model_dir), device="cpu", dtype="fp32")
    state = LocalTrainer(model, rank=4, resolution=model.native_resolution).state_dict()
    wrong = {key: torch.zeros(value.shape[0] + 3, value.shape[-1] + 5) for key, value in state.items()}
    path = tmp_path_factory.mktemp("misfit") / "misfit.safetensors"
    save_file(wrong, str(path))
    return path


def test_lora_that_does_not_fit_the_base(refused, base, tiny_model_dir, misfit_lora):
    argv = with_flag(with_flag(base, "--base", str(tiny_model_dir)), "--lora", str(misfit_lora))
    refused(argv + ["--device", "cpu"], "misfit.safetensors")


def test_suspect_of_another_architecture(refused, base, tiny_model_dir, tiny_inpaint_dir):
    argv = with_flag(with_flag(base, "--base", str(tiny_model_dir)), "--lora", None)
    refused(argv + ["--suspect", str(tiny_inpaint_dir), "--device", "cpu"], "suspect", "in_channels")
