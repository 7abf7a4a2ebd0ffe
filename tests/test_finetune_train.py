"""The fine-tuning trainer on the tiny model: LoRA, DreamBooth and full fine-tuning through `accelerate launch`,
outputs that load in stock diffusers, exact resume from a checkpoint, prior preservation, and named errors for
bad data and impossible flags (in-process, before any training)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from artshield.errors import ImageReadError, InvalidArgumentError
from artshield.finetune import data as D
from artshield.finetune import saving as S
from artshield.finetune import train as T

LORA_FILE = "pytorch_lora_weights.safetensors"
UNET_FILE = "unet/diffusion_pytorch_model.safetensors"


# ------------------------------------------------------------------------------------------- helpers
def write_images(folder: Path, captions: bool = False) -> list[Path]:
    """Three small images of different sizes and modes (RGB, RGBA, greyscale), optionally with .txt captions."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    specs = [("a.png", "RGB", (48, 40)), ("b.png", "RGBA", (36, 36)), ("c.jpg", "L", (34, 50))]
    paths = []
    for name, mode, (w, h) in specs:
        channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
        array = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
        image = Image.fromarray(array[..., 0] if channels == 1 else array, mode)
        image.save(folder / name)
        if captions:
            (folder / name).with_suffix(".txt").write_text(f"a painting of a circle {name[0]}\n")
        paths.append(folder / name)
    return paths


def launch(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`accelerate launch --cpu --num_processes 1 -m artshield.finetune.train ...` in a subprocess."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "artshield.finetune.train", *args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def assert_one_line_error(capsys, needle: str) -> None:
    """The CLI's contract for user errors: one `prog: error: ...` line naming the problem, no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"{T.PROG}: error:")]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err


def common(model_dir: Path, output_dir: Path) -> list[str]:
    return ["--pretrained_model_name_or_path", str(model_dir), "--output_dir", str(output_dir), "--resolution", "32",
            "--seed", "0", "--report_to", "none"]  # fmt: skip


@pytest.fixture
def fresh_accelerate():
    """accelerate keeps process-wide singletons; in-process runs each start from a clean state."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def run_in_process(argv: list[str]) -> dict:
    return T.train(T.parse_args(argv))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("finetune-data")
    write_images(root / "instance")
    write_images(root / "captioned", captions=True)
    meta = root / "metadata"
    files = write_images(meta / "imgs")
    rows = [{"file_name": f"imgs/{p.name}", "text": f"a photo of a house {i}"} for i, p in enumerate(files)]
    (meta / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"instance": root / "instance", "captioned": root / "captioned", "metadata": meta}


# ------------------------------------------------------------------------------------------- LoRA + resume
@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory, tiny_model_dir, data):
    """An uninterrupted LoRA run, and a run resumed from its mid-epoch checkpoint-3 (as an interrupted run
    leaves it): gradient accumulation, random flips, a warm-up + cosine schedule and text-encoder LoRA, so
    every piece of state that resuming must restore is in play."""
    root = tmp_path_factory.mktemp("lora-runs")
    full, resumed = root / "uninterrupted", root / "resumed"
    # 3 images, batch 1, accumulation 2: 2 updates per epoch, so step 3 is in the middle of epoch 1.
    args = ["--method", "lora", "--train_data_dir", str(data["captioned"]), "--train_text_encoder",
            "--train_batch_size", "1", "--gradient_accumulation_steps", "2", "--random_flip",
            "--max_train_steps", "5", "--checkpointing_steps", "3", "--learning_rate", "1e-2",
            "--lr_scheduler", "cosine", "--lr_warmup_steps", "1", "--rank", "2"]  # fmt: skip
    launch(*common(tiny_model_dir, full), *args)
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-3", resumed / "checkpoint-3")
    result = launch(*common(tiny_model_dir, resumed), *args, "--resume_from_checkpoint", "latest")
    return {"full": full, "resumed": resumed, "log": result.stderr}


def test_lora_resume_ends_with_the_uninterrupted_weights(lora_runs):
    full = load_file(str(lora_runs["full"] / LORA_FILE))
    resumed = load_file(str(lora_runs["resumed"] / LORA_FILE))
    at_checkpoint = load_file(str(lora_runs["full"] / "checkpoint-3" / LORA_FILE))
    assert "Resuming from checkpoint" in lora_runs["log"]
    assert max_difference(full, resumed) <= 1e-6
    assert max_difference(full, at_checkpoint) > 1e-4  # the resumed run did train after the checkpoint
    assert any(k.startswith("text_encoder.") for k in full) and any(k.startswith("unet.") for k in full)


def test_lora_output_loads_in_stock_diffusers_and_changes_generation(lora_runs, tiny_model_dir):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_model_dir), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)

    def generate():
        generator = torch.Generator().manual_seed(0)
        return pipe("a painting of a circle a", num_inference_steps=4, generator=generator, output_type="np").images

    before = generate()
    pipe.load_lora_weights(str(lora_runs["full"]))
    after = generate()
    assert before.shape == after.shape == (1, 32, 32, 3)
    assert np.abs(before - after).mean() > 1e-3


def test_lora_checkpoint_is_a_diffusers_lora_folder(lora_runs):
    checkpoint = lora_runs["full"] / "checkpoint-3"
    assert {"optimizer.bin", "scheduler.bin", "random_states_0.pkl", LORA_FILE} <= {p.name for p in checkpoint.iterdir()}
    assert not [p for p in lora_runs["full"].iterdir() if p.name.startswith(".tmp")]


# ------------------------------------------------------------------------------------------- DreamBooth
def test_dreambooth_with_prior_preservation_saves_a_loadable_pipeline(tmp_path, tiny_model_dir, data):
    from diffusers import StableDiffusionPipeline

    class_dir = tmp_path / "class"
    class_dir.mkdir()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(class_dir / "existing.png")
    out = tmp_path / "db"
    launch(
        *common(tiny_model_dir, out), "--method", "dreambooth", "--instance_data_dir", str(data["instance"]),
        "--instance_prompt", "a photo of sks house", "--with_prior_preservation", "--class_data_dir", str(class_dir),
        "--class_prompt", "a photo of a house", "--num_class_images", "3", "--train_text_encoder",
        "--train_batch_size", "2", "--max_train_steps", "2", "--learning_rate", "1e-3",
        "--validation_prompt", "a photo of sks house", "--num_validation_images", "1", "--validation_steps", "2",
        "--validation_inference_steps", "3",
    )  # fmt: skip
    # Two class images were missing and were generated by the model itself.
    assert len(D.dreambooth_examples(class_dir, "x")) == 3
    assert len(list((out / "validation").glob("*.png"))) == 1
    pipe = StableDiffusionPipeline.from_pretrained(str(out))
    base = load_file(str(tiny_model_dir / UNET_FILE))
    assert max_difference(load_file(str(out / UNET_FILE)), base) > 0
    te_file = "text_encoder/model.safetensors"
    assert max_difference(load_file(str(out / te_file)), load_file(str(tiny_model_dir / te_file))) > 0
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a photo of sks house", num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()


def test_dreambooth_resume_restores_full_weights_exactly(tmp_path, tiny_model_dir, data, fresh_accelerate):
    """In process (fast): the unet/ + text_encoder/ checkpoint hooks of full fine-tuning."""
    args = ["--method", "dreambooth", "--instance_data_dir", str(data["instance"]), "--instance_prompt", "sks",
            "--train_text_encoder", "--train_batch_size", "2", "--max_train_steps", "3", "--checkpointing_steps", "2",
            "--learning_rate", "1e-3", "--center_crop"]  # fmt: skip
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run_in_process([*common(tiny_model_dir, full), *args])
    assert {"unet", "text_encoder"} <= {p.name for p in (full / "checkpoint-2").iterdir()}
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-2", resumed / "checkpoint-2")
    summary = run_in_process([*common(tiny_model_dir, resumed), *args, "--resume_from_checkpoint", "checkpoint-2"])
    assert summary["global_step"] == 3
    for name in (UNET_FILE, "text_encoder/model.safetensors"):
        assert max_difference(load_file(str(full / name)), load_file(str(resumed / name))) <= 1e-6


# ------------------------------------------------------------------------------------------- full, text-to-image
def test_full_finetuning_on_metadata_jsonl(tmp_path, tiny_model_dir, data):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "full"
    launch(
        *common(tiny_model_dir, out), "--method", "full", "--train_data_dir", str(data["metadata"]),
        "--max_train_samples", "2", "--train_batch_size", "2", "--max_train_steps", "2", "--learning_rate", "1e-3",
        "--snr_gamma", "5.0", "--noise_offset", "0.05", "--prediction_type", "v_prediction", "--random_flip",
    )  # fmt: skip
    pipe = StableDiffusionPipeline.from_pretrained(str(out))
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert max_difference(load_file(str(out / UNET_FILE)), load_file(str(tiny_model_dir / UNET_FILE))) > 0


# ------------------------------------------------------------------------------------------- Bayesian hook
def test_bayesian_lora_checkpoints_keep_sigma_and_resume_exactly(tmp_path, tiny_model_dir, data, fresh_accelerate):
    pytest.importorskip("artshield.finetune.bayesian")
    args = ["--method", "lora", "--instance_data_dir", str(data["instance"]), "--instance_prompt", "sks",
            "--train_batch_size", "1", "--max_train_steps", "4", "--checkpointing_steps", "2",
            "--learning_rate", "1e-3", "--bayesian", "--bayes_kl_weight", "0.1"]  # fmt: skip
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run_in_process([*common(tiny_model_dir, full), *args])
    state = load_file(str(full / "checkpoint-2" / "model.safetensors"))
    assert any(k.endswith("sigma") for k in state)  # accelerate saved the whole Bayesian state
    final = load_file(str(full / LORA_FILE))
    assert not any("sigma" in k for k in final)  # the published LoRA holds plain weights (the means)
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-2", resumed / "checkpoint-2")
    run_in_process([*common(tiny_model_dir, resumed), *args, "--resume_from_checkpoint", "latest"])
    assert max_difference(final, load_file(str(resumed / LORA_FILE))) <= 1e-6


# ------------------------------------------------------------------------------------------- user errors
def bad_folder(tmp_path: Path, kind: str) -> tuple[list[str], str]:
    """Arguments naming a broken data folder, and a word the one-line error must contain."""
    folder = tmp_path / kind
    if kind == "missing":
        return ["--instance_data_dir", str(folder), "--instance_prompt", "x"], "no such folder"
    folder.mkdir()
    if kind == "empty":
        return ["--instance_data_dir", str(folder), "--instance_prompt", "x"], "holds no images"
    write_images(folder, captions=True)
    if kind == "corrupt":
        (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
        return ["--instance_data_dir", str(folder), "--instance_prompt", "x"], "broken.png"
    if kind == "truncated":
        png = (folder / "a.png").read_bytes()
        (folder / "a.png").write_bytes(png[: len(png) // 2])
        return ["--train_data_dir", str(folder)], "a.png"
    if kind == "not_image":
        (folder / "notes.md").write_text("my paintings")
        return ["--train_data_dir", str(folder)], "notes.md"
    if kind == "no_caption":
        (folder / "b.txt").unlink()
        return ["--train_data_dir", str(folder)], "b.png has no caption"
    if kind == "metadata_no_caption":
        (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "caption": "x"}) + "\n")
        return ["--train_data_dir", str(folder)], "no caption in column 'text'"
    if kind == "metadata_missing_file":
        (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "gone.png", "text": "x"}) + "\n")
        return ["--train_data_dir", str(folder)], "gone.png"
    raise AssertionError(kind)


BAD_KINDS = ["missing", "empty", "corrupt", "truncated", "not_image", "no_caption", "metadata_no_caption",
             "metadata_missing_file"]  # fmt: skip


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_data_is_one_line_before_training(tmp_path, tiny_model_dir, capsys, kind):
    args, needle = bad_folder(tmp_path, kind)
    out = tmp_path / "out"
    assert T.main([*common(tiny_model_dir, out), *args]) == 2
    assert_one_line_error(capsys, needle)
    assert not out.exists()  # nothing was started


def test_data_errors_are_named_exceptions(tmp_path):
    with pytest.raises(ImageReadError, match="no such folder"):
        D.dreambooth_examples(tmp_path / "nope", "x")
    args, _ = bad_folder(tmp_path, "truncated")
    examples = D.caption_folder_examples(args[1])
    with pytest.raises(ImageReadError, match="a.png"):
        D.TrainingDataset(examples, 32)
    args, _ = bad_folder(tmp_path, "no_caption")
    with pytest.raises(InvalidArgumentError, match="b.png"):
        D.caption_folder_examples(args[1])


def test_dataset_reads_any_image_mode_and_augments_deterministically(tmp_path):
    write_images(tmp_path / "i")
    examples = D.dreambooth_examples(tmp_path / "i", "sks")
    dataset = D.TrainingDataset(examples, 32, random_flip=True, seed=3)
    items = [dataset[i]["pixel_values"] for i in range(len(dataset))]
    assert all(x.shape == (3, 32, 32) and 0 <= x.min() and x.max() <= 1 for x in items)
    again = D.TrainingDataset(examples, 32, random_flip=True, seed=3)
    assert all(torch.equal(a, again[i]["pixel_values"]) for i, a in enumerate(items))
    dataset.set_epoch(1)
    assert any(not torch.equal(a, dataset[i]["pixel_values"]) for i, a in enumerate(items))


def test_impossible_flags_fail_with_one_line(tmp_path, tiny_model_dir, data, capsys, monkeypatch):
    base = [*common(tiny_model_dir, tmp_path / "out"), "--train_data_dir", str(data["captioned"])]
    cases = [
        (["--push_to_hub"], "--push_to_hub: the Hugging Face hub cannot be reached"),  # HF_HUB_OFFLINE=1
        (["--resume_from_checkpoint", str(tmp_path / "checkpoint-9")], "no such checkpoint"),
        (["--report_to", "nonsense"], "not a tracker"),
        (["--method", "dreambooth"], "--method dreambooth trains on --instance_data_dir"),
        (["--instance_data_dir", str(data["instance"])], "exactly one source"),
    ]
    if T.importlib.util.find_spec("bitsandbytes") is None:
        cases.append((["--use_8bit_adam"], "bitsandbytes"))
    if T.importlib.util.find_spec("wandb") is None:
        cases.append((["--report_to", "wandb"], "wandb package is not installed"))
    for extra, needle in cases:
        assert T.main([*base, *extra]) == 2, extra
        assert_one_line_error(capsys, needle)
    if T.importlib.util.find_spec("datasets") is None:
        argv = [*common(tiny_model_dir, tmp_path / "out"), "--dataset_name", "someone/paintings"]
        assert T.main(argv) == 2
        assert_one_line_error(capsys, "--dataset_name needs the `datasets` package")
    # The Bayesian extension is imported lazily: without it, --bayesian is refused clearly.
    monkeypatch.setitem(sys.modules, T.BAYESIAN_MODULE, None)
    assert T.main([*base, "--bayesian"]) == 2
    assert_one_line_error(capsys, "--bayesian needs artshield.finetune.bayesian")
    assert not (tmp_path / "out").exists()


def test_resolution_must_fit_the_model(tmp_path, tiny_model_dir, data, capsys, fresh_accelerate):
    args = [*common(tiny_model_dir, tmp_path / "out"), "--train_data_dir", str(data["captioned"])]
    args[args.index("--resolution") + 1] = "40"
    assert T.main(args) == 2
    assert_one_line_error(capsys, "--resolution must be a multiple of 16")


# ------------------------------------------------------------------------------------------- atomic outputs
class FakeAccelerator:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def save_state(self, folder: str) -> None:
        (Path(folder) / "state.bin").write_bytes(b"x")
        if self.fail:
            raise KeyboardInterrupt


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    for step in (2, 4, 6):
        S.save_checkpoint(FakeAccelerator(), tmp_path, step, total_limit=2)
    assert [p.name for p in S.list_checkpoints(tmp_path)] == ["checkpoint-4", "checkpoint-6"]
    with pytest.raises(KeyboardInterrupt):
        S.save_checkpoint(FakeAccelerator(fail=True), tmp_path, 8, total_limit=2)
    # The interrupted save left nothing behind and pruned nothing: "latest" is still the last good one.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-6"]
    assert S.resolve_checkpoint("latest", tmp_path).name == "checkpoint-6"
    assert S.resolve_checkpoint("latest", tmp_path / "none") is None


def test_interrupted_pipeline_save_leaves_the_previous_model(tmp_path, tiny_model):
    pipe = tiny_model.pipeline()
    S.publish_pipeline(tmp_path, pipe)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    class Interrupted:
        def save_pretrained(self, folder, **kwargs):
            pipe.save_pretrained(folder, **kwargs)
            raise KeyboardInterrupt  # e.g. Ctrl-C after the weights were staged

    with pytest.raises(KeyboardInterrupt):
        S.publish_pipeline(tmp_path, Interrupted())
    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # untouched, and no staging folder left


# ------------------------------------------------------------------------------------------- Python API
def test_config_checks_values_in_one_place_with_named_errors():
    from artshield.finetune import TrainConfig

    base = {"pretrained_model_name_or_path": "demo", "instance_data_dir": "imgs", "instance_prompt": "sks"}
    config = TrainConfig(**base, method="full", resolution="64", max_train_steps="3")
    assert (config.resolution, config.max_train_steps) == (64, 3)  # strings from a config file are converted
    assert config.learning_rate == 1e-5 and config.output_dir == "sd-model-finetuned"  # the method's defaults
    for change, flag in [({"learning_rate": float("nan")}, "--learning_rate"), ({"resolution": 30}, "--resolution"),
                         ({"rank": 0}, "--rank"), ({"method": "qlora"}, "--method"), ({"seed": -1}, "--seed"),
                         ({"random_flip": "yes"}, "--random_flip"), ({"lr_scheduler": None}, "--lr_scheduler"),
                         ({"use_ema": True}, "--use_ema")]:  # fmt: skip
        with pytest.raises(InvalidArgumentError, match=flag):
            TrainConfig(**base, **change)
    with pytest.raises(InvalidArgumentError, match="--bayes_init_sigma"):
        TrainConfig(**base, bayesian=True, bayes_init_sigma=0.5)  # above --bayes_max_sigma


def test_config_round_trips_through_the_command_line():
    from artshield.finetune import TrainConfig

    config = TrainConfig(pretrained_model_name_or_path="demo", train_data_dir="data dir", method="full",
                         snr_gamma=5.0, random_flip=True, resolution=64, bayesian=True, bayes_kl_weight=0.2,
                         validation_prompt="a painting", mixed_precision="no")  # fmt: skip
    argv = config.to_argv()
    assert T.parse_args(argv) == config
    assert "--random_flip" in argv and "--center_crop" not in argv
    assert config.replace(rank=8).rank == 8 and config.rank == 4


def test_python_api_trains_from_a_config(tmp_path, tiny_model_dir, data, fresh_accelerate):
    from artshield.finetune import TrainConfig

    config = TrainConfig(pretrained_model_name_or_path=str(tiny_model_dir), instance_data_dir=str(data["instance"]),
                         instance_prompt="sks", output_dir=str(tmp_path / "out"), resolution=32, train_batch_size=1,
                         max_train_steps=1, rank=2, seed=0, report_to="none")  # fmt: skip
    result = T.train(config)
    assert isinstance(result, T.TrainResult)
    assert result.global_step == 1 and np.isfinite(result.loss) and result.method == "lora"
    assert Path(result.weights) == tmp_path / "out" / LORA_FILE and Path(result.weights).is_file()
    assert result["global_step"] == 1 and "ema_steps" not in result  # still reads as the old summary dict
    assert config.max_train_steps == 1 and config.learning_rate == 1e-4  # the config was not changed


# ------------------------------------------------------------------------------------------- local steps (federated)
def local_images() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(3, 40, 36, generator=generator) for _ in range(3)]


@pytest.fixture
def fresh_model(tiny_model_dir):
    """A model of its own for each test: LocalTrainer adds adapters to the model it is given."""
    from artshield.models import load

    return lambda: load(str(tiny_model_dir), device="cpu", dtype="fp32")


def test_local_trainer_runs_steps_on_a_loaded_model_and_returns_the_lora(fresh_model, tiny_model_dir):
    from artshield.finetune import LocalTrainer

    model = fresh_model()
    base_weight = model.unet.conv_in.weight.detach().clone()
    trainer = LocalTrainer(model, rank=2, learning_rate=1e-2, resolution=32, batch_size=2, seed=1)
    start = trainer.state_dict()
    assert start and all(k.startswith("unet.") and ".lora" in k for k in start)
    update = trainer.train_steps(local_images(), steps=2, prompt="a painting of a circle")
    assert update.steps == 2 and len(update.losses) == 2 and all(np.isfinite(update.losses))
    assert update.num_examples == 3 and update.state_dict.keys() == start.keys()
    assert max_difference(update.state_dict, start) > 1e-4  # the adapters trained ...
    assert torch.equal(model.unet.conv_in.weight, base_weight)  # ... and nothing else did
    assert not any(p.requires_grad for n, p in model.unet.named_parameters() if "lora_" not in n)

    # A second client with the same seed, starting from the same weights, computes the same update.
    other = LocalTrainer(fresh_model(), rank=2, learning_rate=1e-2, resolution=32, batch_size=2, seed=1)
    other.load_state_dict(start)
    again = other.train_steps([(image, "a painting of a circle") for image in local_images()], steps=2)
    assert max_difference(again.state_dict, update.state_dict) == 0.0

    # The update is a diffusers LoRA state dict: stock diffusers loads it.
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_model_dir), safety_checker=None)
    pipe.load_lora_weights(dict(update.state_dict))
    assert any("lora" in name for name, _ in pipe.unet.named_parameters())


def test_local_trainer_refuses_mismatched_or_broken_states(fresh_model):
    from artshield.finetune import LocalTrainer, train_steps

    trainer = LocalTrainer(fresh_model(), rank=2, resolution=32)
    state = trainer.state_dict()
    with pytest.raises(InvalidArgumentError, match="does not match"):
        trainer.load_state_dict({k: v for k, v in list(state.items())[1:]})
    broken = dict(state)
    key = next(iter(broken))
    broken[key] = torch.full_like(broken[key], float("nan"))
    with pytest.raises(InvalidArgumentError, match="non-finite"):
        trainer.load_state_dict(broken)
    wider = LocalTrainer(fresh_model(), rank=4, resolution=32).state_dict()
    with pytest.raises(InvalidArgumentError, match="shape"):
        trainer.load_state_dict(wider)
    with pytest.raises(InvalidArgumentError, match="already has LoRA adapters of rank 2"):
        LocalTrainer(trainer.model, rank=4, resolution=32)
    with pytest.raises(InvalidArgumentError, match="`steps`"):
        trainer.train_steps(local_images(), steps=0, prompt="x")
    with pytest.raises(InvalidArgumentError, match="no caption"):
        trainer.train_steps(local_images(), steps=1)
    # The one-call form reuses the adapters already on the model and starts from the given state.
    result = train_steps(trainer.model, local_images()[:1], 1, state_dict=state, prompt="x", rank=2, resolution=32)
    assert result.steps == 1 and result.state_dict.keys() == state.keys()
