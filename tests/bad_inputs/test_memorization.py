"""Bad inputs to ``artshield memorization detect|prune``: each is refused with exit 2 and one line naming the
culprit, before a model loads, and leaves every file as it was."""

from __future__ import annotations

import pytest

PROMPT = "a tree in ink style\n"


pytestmark = pytest.mark.usefixtures("no_model_load")


@pytest.fixture
def files(tmp_path):
    """A prompts file, an empty prompts file, a fake model folder, a fake single-file model and a file."""
    (tmp_path / "prompts.txt").write_text(PROMPT)
    (tmp_path / "empty.txt").write_text("\n   \n")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model_index.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"not really weights")
    (tmp_path / "existing.txt").write_text("keep me")
    return tmp_path


def detect(*extra: str) -> list[str]:
    return ["memorization", "detect", "--prompts", "prompts.txt", *extra]


def prune(*extra: str) -> list[str]:
    return ["memorization", "prune", "--prompts", "prompts.txt", *extra]


@pytest.mark.parametrize(
    "argv, culprit",
    [
        # Numbers: refused by argparse at parse time (resolution 0 used to run silently at 128 px).
        (detect("--resolution", "0"), "--resolution"),
        (detect("--resolution", "-64"), "--resolution"),
        (detect("--resolution", "100"), "--resolution"),
        (detect("--resolution", "abc"), "--resolution"),
        (detect("--steps", "0"), "--steps"),
        (detect("--steps", "20", "--num-inference-steps", "10"), "--steps"),
        (detect("--num-inference-steps", "0"), "--num-inference-steps"),
        (detect("--batch-size", "0"), "--batch-size"),
        (detect("--guidance-scale", "1"), "--guidance-scale"),
        (detect("--guidance-scale", "nan"), "--guidance-scale"),
        (detect("--seeds", "a,b"), "--seeds"),
        (detect("--seeds", "1,1"), "--seeds"),
        (detect("--seeds", "-1"), "--seeds"),
        (detect("--fpr", "1"), "--fpr"),
        (detect("--threshold", "inf"), "--threshold"),
        (detect("--device", "gpu7"), "--device"),
        (prune("-o", "out", "--ratio", "0"), "--ratio"),
        (prune("-o", "out", "--ratio", "1.5"), "--ratio"),
        (prune("-o", "out", "--ratio", "nan"), "--ratio"),
        (prune("-o", "out", "--layers", "fc9"), "--layers"),
        (prune("-o", "out", "--layers", ","), "--layers"),
        (prune("-o", "out", "--timesteps", "0"), "--timesteps"),
        (prune("-o", "out", "--timesteps", "60"), "--timesteps"),
        (prune("-o", "out", "--perturbations", "0.1,nan"), "--perturbations"),
        (prune("-o", "out", "--locate-seeds", "x"), "--locate-seeds"),
        (prune("-o", "out", "--save-dtype", "int8"), "--save-dtype"),
        # Commands.
        (["memorization", "bogus"], "bogus"),
        (["memorization"], "detect or prune"),
        # Prompt files.
        (["memorization", "detect"], "--prompts"),
        (["memorization", "detect", "--prompts", "missing.txt"], "missing.txt"),
        (["memorization", "detect", "--prompts", "empty.txt"], "empty.txt"),
        (detect("--reference-prompts", "empty.txt"), "empty.txt"),
        (prune("-o", "out", "--utility-prompts", "missing.txt"), "missing.txt"),
        (prune(), "--output"),
        # Other inputs that must exist.
        (detect("--training-images", "no-such-folder"), "no-such-folder"),
        (detect("--sscd", "sscd.pt"), "--training-images"),
        (prune("-o", "out", "--clip-weights", "clip.safetensors"), "clip.safetensors"),
        # Outputs.
        (prune("--model", "model", "-o", "model", "--overwrite"), "is the model"),
        (prune("--model", "model.safetensors", "-o", ".", "--overwrite"), "is the model"),
        (prune("-o", "existing.txt", "--overwrite"), "not a folder"),
        (prune("-o", "model"), "already exists"),
        (prune("-o", "out", "--report", "model"), "is a folder"),
        (prune("-o", "out", "--report", "existing.txt"), "already exists"),
        (prune("-o", "out", "--report", "out"), "same path"),
        (prune("--model", "model.safetensors", "-o", "out", "--report", "model.safetensors", "--overwrite"), "model"),
        (detect("--report", "prompts.txt", "--overwrite"), "prompts file"),
        (detect("--report", "existing.txt"), "already exists"),
        (detect("--report", "existing.txt/r.json"), "is a file"),
        (detect("--save-generations", "existing.txt"), "generations folder"),
        (detect("--save-generations", "model"), "not empty"),
    ],
)
def test_memorization_refuses(refused, files, argv, culprit):
    refused(argv, culprit)


def test_prune_refuses_to_overwrite_the_shipped_demo_weights(refused, files):
    from artshield.models.demo import DEMO_WEIGHTS

    refused(prune("-o", str(DEMO_WEIGHTS), "--overwrite"), "demo weights")


def test_default_detect_report_is_not_clobbered(refused, files):
    (files / "memorization_detect.json").write_text("{}")
    refused(detect(), "memorization_detect.json", "already exists")
