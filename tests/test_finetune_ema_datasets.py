"""The trainer's `--use_ema` (diffusers' EMAModel, as train_text_to_image.py) and `--dataset_name` (a local
imagefolder, a save_to_disk folder, a hub id) on the tiny model, in process."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from artshield.errors import ImageReadError
from artshield.finetune import data as D
from artshield.finetune import train as T
from test_finetune_train import LORA_FILE, UNET_FILE, assert_one_line_error, common, write_images

TEXT_FILE = "text_encoder/model.safetensors"


def run(argv: list[str]) -> dict:
    """One in-process training run, with accelerate's process-wide singletons reset around it."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    try:
        return T.train(T.parse_args(argv))
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def equal(a: dict, b: dict) -> bool:
    assert a.keys() == b.keys()
    return all(torch.equal(a[k], b[k]) for k in a)


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


# ============================================================================================ EMA
@pytest.fixture(scope="module")
def ema_runs(tmp_path_factory, tiny_model_dir):
    """DreamBooth runs of 4 steps (3 images, batch 1: step 4 is in the second epoch) with the text encoder
    trained: without EMA; with EMA (validating at steps 2 and 4, through a stand-in for log_validation that
    records the weights it is shown); the EMA run resumed from its checkpoint-2; and an EMA run resumed from
    the plain run's checkpoint-2 (which has no average)."""
    root = tmp_path_factory.mktemp("ema-runs")
    write_images(root / "instance")
    args = ["--method", "dreambooth", "--instance_data_dir", str(root / "instance"), "--instance_prompt", "sks",
            "--train_text_encoder", "--train_batch_size", "1", "--max_train_steps", "4", "--checkpointing_steps", "2",
            "--learning_rate", "1e-3", "--random_flip"]  # fmt: skip
    ema = ["--use_ema", "--validation_prompt", "sks", "--validation_steps", "2"]
    seen: dict[int, dict[str, torch.Tensor]] = {}

    def fake_validation(model, unet, text_encoder, args, accelerator, step, monitor=None, phase="validation"):
        seen[step] = {k: v.detach().clone() for k, v in accelerator.unwrap_model(unet).state_dict().items()}
        return []

    out = {name: root / name for name in ("plain", "ema", "resumed", "from_plain", "foreach")}
    summaries = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(T, "log_validation", fake_validation)
        summaries["plain"] = run([*common(tiny_model_dir, out["plain"]), *args])
        summaries["ema"] = run([*common(tiny_model_dir, out["ema"]), *args, *ema])
        validated = dict(seen)
        summaries["foreach"] = run([*common(tiny_model_dir, out["foreach"]), *args, *ema, "--foreach_ema", "--offload_ema"])
        for name, source in (("resumed", "ema"), ("from_plain", "plain")):
            out[name].mkdir()
            shutil.copytree(out[source] / "checkpoint-2", out[name] / "checkpoint-2")
            summaries[name] = run([*common(tiny_model_dir, out[name]), *args, *ema, "--resume_from_checkpoint", "latest"])
    return {"out": out, "summary": summaries, "validated": validated}


def test_ema_run_saves_the_average_not_the_trained_weights(ema_runs):
    out = ema_runs["out"]
    checkpoint = out["ema"] / "checkpoint-4"
    assert {"unet", "unet_ema", "text_encoder", "text_encoder_ema"} <= {p.name for p in checkpoint.iterdir()}
    final = weights(out["ema"] / UNET_FILE)
    average = weights(checkpoint / "unet_ema" / "diffusion_pytorch_model.safetensors")
    trained = weights(checkpoint / UNET_FILE)
    assert equal(final, average)
    assert max_difference(final, trained) > 1e-6
    assert equal(weights(out["ema"] / TEXT_FILE), weights(checkpoint / "text_encoder_ema" / "model.safetensors"))
    # The average does not disturb training: the trained weights are those of the run without EMA ...
    assert equal(trained, weights(out["plain"] / UNET_FILE))
    assert equal(weights(checkpoint / TEXT_FILE), weights(out["plain"] / TEXT_FILE))
    # ... and the saved model differs from that run's.
    assert max_difference(final, weights(out["plain"] / UNET_FILE)) > 1e-6
    assert ema_runs["summary"]["ema"]["ema_steps"] == 4 and "ema_steps" not in ema_runs["summary"]["plain"]
    # diffusers' layout: the counters sit in unet_ema/config.json, as EMAModel.save_pretrained writes them.
    config = json.loads((checkpoint / "unet_ema" / "config.json").read_text())
    assert config["optimization_step"] == 4 and config["decay"] == 0.9999


def test_foreach_and_offloaded_ema_give_the_same_average(ema_runs):
    out = ema_runs["out"]
    for name in (UNET_FILE, TEXT_FILE):
        assert max_difference(weights(out["foreach"] / name), weights(out["ema"] / name)) <= 1e-6


def test_ema_is_what_validation_sees(ema_runs):
    out, validated = ema_runs["out"], ema_runs["validated"]
    assert sorted(validated) == [2, 4]
    for step in (2, 4):
        average = weights(out["ema"] / f"checkpoint-{step}" / "unet_ema" / "diffusion_pytorch_model.safetensors")
        assert equal({k: validated[step][k] for k in average}, average)


def test_ema_resume_is_bit_identical(ema_runs):
    out = ema_runs["out"]
    assert ema_runs["summary"]["resumed"]["global_step"] == 4 and ema_runs["summary"]["resumed"]["ema_steps"] == 4
    for name in (UNET_FILE, TEXT_FILE, "checkpoint-4/unet_ema/diffusion_pytorch_model.safetensors",
                 "checkpoint-4/text_encoder_ema/model.safetensors"):  # fmt: skip
        assert equal(weights(out["ema"] / name), weights(out["resumed"] / name)), name


def test_ema_resume_from_a_checkpoint_without_average_starts_it_there(ema_runs):
    out = ema_runs["out"]
    assert ema_runs["summary"]["from_plain"]["ema_steps"] == 2  # steps 3 and 4 only
    # Trained weights unaffected; the average restarted from the resumed weights differs from the full one.
    assert equal(weights(out["from_plain"] / "checkpoint-4" / UNET_FILE), weights(out["plain"] / UNET_FILE))
    assert max_difference(weights(out["from_plain"] / UNET_FILE), weights(out["ema"] / UNET_FILE)) > 0


def test_ema_is_refused_with_lora(tmp_path, tiny_model_dir, capsys):
    write_images(tmp_path / "i")
    base = [*common(tiny_model_dir, tmp_path / "out"), "--instance_data_dir", str(tmp_path / "i"),
            "--instance_prompt", "sks", "--use_ema"]  # fmt: skip
    assert T.main([*base, "--method", "lora"]) == 2
    assert_one_line_error(capsys, "--use_ema averages full-weight training (--method full or dreambooth)")
    assert T.main([*base, "--method", "full", "--ema_decay", "1.5"]) == 2
    assert_one_line_error(capsys, "--ema_decay: must be in [0, 1]")
    if T.importlib.util.find_spec(T.BAYESIAN_MODULE) is not None:
        assert T.main([*base, "--method", "full", "--bayesian"]) == 2
        assert_one_line_error(capsys, "--use_ema cannot be combined with --bayesian")
    assert not (tmp_path / "out").exists()


# ============================================================================================ datasets
try:
    import datasets
except ImportError:  # an optional dependency (artshield[finetune], in the dev extra)
    datasets = None
needs_datasets = pytest.mark.skipif(datasets is None, reason="needs the datasets package")


@pytest.fixture(scope="module")
def imagefolder(tmp_path_factory) -> Path:
    """An imagefolder dataset: three images and a metadata.jsonl whose caption column is not called 'text'."""
    root = tmp_path_factory.mktemp("imagefolder")
    files = write_images(root / "imgs")  # (a folder named "train" would be taken for a split)
    rows = [{"file_name": f"imgs/{p.name}", "caption": f"a photo of a house {i}", "artist": "me"}
            for i, p in enumerate(files)]  # fmt: skip
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@needs_datasets
def test_imagefolder_dataset_trains(tmp_path, tiny_model_dir, imagefolder):
    # Columns not given: 'image', then the first other column ('caption') as diffusers falls back.
    examples = D.hub_dataset_examples(str(imagefolder), cache_dir=str(tmp_path / "cache"))
    assert [e.caption for e in examples] == [f"a photo of a house {i}" for i in range(3)]
    assert "row 2" in examples[2].name
    out = tmp_path / "out"
    summary = run([*common(tiny_model_dir, out), "--method", "lora", "--dataset_name", str(imagefolder),
                   "--cache_dir", str(tmp_path / "cache"), "--train_batch_size", "2", "--max_train_steps", "2",
                   "--rank", "2"])  # fmt: skip
    assert summary["global_step"] == 2 and (out / LORA_FILE).is_file()


@needs_datasets
def test_save_to_disk_dataset_trains(tmp_path, tiny_model_dir, imagefolder):
    source = shutil.copytree(imagefolder, tmp_path / "source")
    loaded = datasets.load_dataset(str(source), cache_dir=str(tmp_path / "cache"))["train"]
    renamed = loaded.rename_columns({"image": "picture", "caption": "prompt"}).select_columns(["prompt", "picture"])
    renamed.save_to_disk(str(tmp_path / "saved"))  # a Dataset, the image bytes inside its arrow files
    datasets.DatasetDict({"train": loaded}).save_to_disk(str(tmp_path / "saved_dict"))
    shutil.rmtree(source)  # the saved datasets do not need the original files
    # The DatasetDict folder: its train split, default columns.
    examples = D.hub_dataset_examples(str(tmp_path / "saved_dict"))
    assert len(examples) == 3 and examples[0].caption == "a photo of a house 0"
    out = tmp_path / "out"
    summary = run([*common(tiny_model_dir, out), "--method", "full", "--dataset_name", str(tmp_path / "saved"),
                   "--image_column", "picture", "--caption_column", "prompt", "--train_batch_size", "2",
                   "--max_train_steps", "2", "--learning_rate", "1e-3"])  # fmt: skip
    assert summary["global_step"] == 2
    assert max_difference(weights(out / UNET_FILE), weights(tiny_model_dir / UNET_FILE)) > 0


def bad_dataset(tmp_path: Path, kind: str) -> tuple[list[str], str]:
    """Arguments naming a broken --dataset_name, and what the one-line error must contain."""
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    png = tmp_path / "ok.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(png)
    good = {"bytes": png.read_bytes(), "path": None}
    folder = str(tmp_path / kind)
    if kind == "missing_column":
        datasets.Dataset.from_dict({"image": [good], "text": ["x"]}, features=features).save_to_disk(folder)
        return ["--dataset_name", folder, "--caption_column", "prompt"], "--caption_column 'prompt' is not a column"
    if kind == "empty":
        datasets.Dataset.from_dict({"image": [], "text": []}, features=features).save_to_disk(folder, num_shards=1)
        return ["--dataset_name", folder], "is empty"
    if kind == "bad_image":
        rows = {"image": [good, {"bytes": b"\x89PNG\r\n\x1a\n not really", "path": None}], "text": ["x", "y"]}
        datasets.Dataset.from_dict(rows, features=features).save_to_disk(folder)
        return ["--dataset_name", folder], "row 1"
    if kind == "no_caption":
        datasets.Dataset.from_dict({"image": [good], "text": [""]}, features=features).save_to_disk(folder)
        return ["--dataset_name", folder], "row 0 has no caption in column 'text'"
    if kind == "one_column":
        only_images = datasets.Features({"image": datasets.Image()})
        datasets.Dataset.from_dict({"image": [good]}, features=only_images).save_to_disk(folder)
        return ["--dataset_name", folder], "needs an image column and a caption column"
    if kind == "no_such_folder":
        return ["--dataset_name", str(tmp_path / "nope" / "data")], "no such folder, and not a hub dataset id"
    if kind == "offline_hub_id":  # HF_HUB_OFFLINE=1 in the tests; the cache is empty
        return (["--dataset_name", "someone/paintings", "--cache_dir", str(tmp_path / "cache")],
                "'someone/paintings': the dataset is not in the local Hugging Face cache")  # fmt: skip
    raise AssertionError(kind)


@needs_datasets
@pytest.mark.parametrize(
    "kind", ["missing_column", "empty", "bad_image", "no_caption", "one_column", "no_such_folder", "offline_hub_id"]
)
def test_bad_datasets_are_one_line_before_training(tmp_path, tiny_model_dir, capsys, kind):
    args, needle = bad_dataset(tmp_path, kind)
    out = tmp_path / "out"
    assert T.main([*common(tiny_model_dir, out), *args]) == 2
    assert_one_line_error(capsys, needle)
    assert not out.exists()


@needs_datasets
def test_unreadable_row_is_a_named_error(tmp_path):
    args, _ = bad_dataset(tmp_path, "bad_image")
    examples = D.hub_dataset_examples(args[1])
    with pytest.raises(ImageReadError, match="row 1"):
        D.TrainingDataset(examples, 32)


def test_dataset_name_without_datasets_says_how_to_install(tmp_path, tiny_model_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now raises ImportError
    assert T.main([*common(tiny_model_dir, tmp_path / "out"), "--dataset_name", "someone/paintings"]) == 2
    assert_one_line_error(capsys, "pip install 'artshield[finetune]'")
