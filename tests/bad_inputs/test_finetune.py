"""Bad inputs to the trainer (``artshield finetune``): each is refused before any model loads or any file is
written, with exit status 2 and one line naming the culprit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from artshield import compat

pytestmark = pytest.mark.usefixtures("no_model_load")


@pytest.fixture
def base(tmp_path) -> list[str]:
    """A valid command line (relative paths: the `refused` fixture runs in tmp_path) and its one image."""
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(tmp_path / "imgs" / "a.png")
    return ["finetune", "--pretrained_model_name_or_path", "demo", "--instance_data_dir", "imgs",
            "--instance_prompt", "sks", "--output_dir", "out", "--resolution", "32", "--report_to", "none"]  # fmt: skip


def with_flag(argv: list[str], flag: str, value: str | None = None) -> list[str]:
    """`argv` with `flag` set to `value` (replaced if present; a bare flag when value is None)."""
    argv = list(argv)
    if flag in argv:
        index = argv.index(flag)
        del argv[index: index + 2]
    return argv + ([flag] if value is None else [flag, value])


@pytest.mark.parametrize(
    ("flag", "value", "names"),
    [
        ("--learning_rate", "nan", ["--learning_rate", "finite"]),
        ("--learning_rate", "-0.0001", ["--learning_rate", ">="]),
        ("--learning_rate", "0", ["--learning_rate"]),
        ("--max_train_steps", "0", ["--max_train_steps", ">= 1"]),
        ("--resolution", "0", ["--resolution", ">= 8"]),
        ("--resolution", "30", ["--resolution", "multiple of 8"]),
        ("--rank", "0", ["--rank"]),
        ("--method", "qlora", ["--method", "qlora"]),
        ("--train_batch_size", "two", ["--train_batch_size", "two"]),
        ("--lora_dropout", "1", ["--lora_dropout", "< 1"]),
        ("--adam_beta2", "1.5", ["--adam_beta2"]),
        ("--ema_decay", "2", ["--ema_decay", "[0, 1]"]),
        ("--bogus", None, ["--bogus"]),
    ],
)
def test_bad_flag_values_are_refused_at_parse_time(refused, base, flag, value, names):
    refused(with_flag(base, flag, value), *names)


def test_missing_model_flag(refused, base):
    argv = base[:1] + base[3:]  # without --pretrained_model_name_or_path
    refused(argv, "--pretrained_model_name_or_path")


@pytest.mark.parametrize(
    ("extra", "names"),
    [
        (["--use_ema"], ["--use_ema", "--method lora"]),
        (["--train_data_dir", "imgs"], ["exactly one source", "--instance_data_dir", "--train_data_dir"]),
        (["--train_text_encoder", "--pre_compute_text_embeddings"], ["--pre_compute_text_embeddings"]),
        (["--with_prior_preservation"], ["--with_prior_preservation", "--class_data_dir"]),
        (["--method", "dreambooth", "--use_ema", "--bayesian"], ["--use_ema", "--bayesian"]),
        (["--resume_from_checkpoint", "checkpoint-7"], ["--resume_from_checkpoint", "no such checkpoint"]),
    ],
)
def test_conflicting_flags(refused, base, extra, names):
    refused(base + extra, *names)


def test_instance_data_without_prompt(refused, base):
    argv = with_flag(base, "--instance_prompt", " ")
    refused(argv, "--instance_prompt")


def test_missing_data_folder(refused, base):
    refused(with_flag(base, "--instance_data_dir", "nowhere"), "--instance_data_dir", "nowhere")


def test_empty_data_folder(refused, base, tmp_path):
    (tmp_path / "empty").mkdir()
    refused(with_flag(base, "--instance_data_dir", "empty"), "--instance_data_dir", "empty", "holds no images")


def test_output_dir_is_the_data_folder(refused, base):
    refused(with_flag(base, "--output_dir", "imgs"), "--output_dir", "--instance_data_dir")


def test_output_dir_is_the_data_folder_by_another_name(refused, base, tmp_path):
    os.symlink(tmp_path / "imgs", tmp_path / "link")
    refused(with_flag(base, "--output_dir", "link"), "--output_dir", "--instance_data_dir")


def test_output_dir_inside_the_data_folder(refused, base):
    refused(with_flag(base, "--output_dir", "imgs/lora"), "--output_dir", "inside", "--instance_data_dir")


def test_output_dir_around_the_data_folder(refused, base, tmp_path):
    (tmp_path / "project" / "imgs").mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "project" / "imgs" / "b.png")
    argv = with_flag(with_flag(base, "--instance_data_dir", "project/imgs"), "--output_dir", "project")
    refused(argv, "--output_dir", "around", "--instance_data_dir")


def test_output_dir_is_a_file(refused, base, tmp_path):
    (tmp_path / "out").write_text("not a folder")
    refused(base, "--output_dir", "is a file")


def test_output_dir_under_a_file(refused, base, tmp_path):
    (tmp_path / "notes.txt").write_text("not a folder")
    refused(with_flag(base, "--output_dir", "notes.txt/lora"), "--output_dir", "notes.txt")


def test_class_images_would_go_into_the_instance_folder(refused, base):
    argv = base + ["--method", "dreambooth", "--with_prior_preservation", "--class_data_dir", "imgs",
                   "--class_prompt", "a dog"]  # fmt: skip
    refused(argv, "--class_data_dir", "--instance_data_dir")


def test_incompatible_peft_is_one_line_naming_both_versions(refused, base, monkeypatch):
    """An installed transformers that needs a newer peft than the installed one: refused before loading."""
    monkeypatch.setattr(compat, "required_peft", lambda library: "99.0" if library == "transformers" else None)
    outcome = refused(base + ["--train_text_encoder"], "transformers", "peft", "pip install")
    assert compat.installed_version("transformers") in outcome.stderr
    assert compat.installed_version("peft") in outcome.stderr


def test_bad_flag_in_a_fresh_process_ends_with_the_trainers_line(tmp_path):
    """What `accelerate launch` runs: the child's last stderr line is the trainer's own one-line error."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "artshield.finetune.train", "--pretrained_model_name_or_path", "demo",
               "--instance_data_dir", "imgs", "--instance_prompt", "sks", "--bogus"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert lines == [lines[-1]] and lines[-1].startswith("python -m artshield.finetune.train: error: ")
    assert "--bogus" in lines[-1] and "Traceback" not in result.stderr
