"""Bring your own mimic (``--mimicry external``): a fake training tool run as a command, placeholders, what it
wrote loaded and generated from, failures confined to their cell, resume, runs in the bootstrap."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from artshield.errors import InvalidArgumentError
from artshield.evaluate.external import (
    TRAIN_PLACEHOLDERS,
    ExternalMimicry,
    check_commands,
    fill_template,
    parse_template,
)
from artshield.evaluate.harness import EvaluationSettings, bootstrap_conditions, evaluate, load_image_sets
from artshield.evaluate.mimicry import item_generator
from artshield.imageio import write_png
from artshield.models import load

PY = sys.executable
PROMPT = "a painting; in sks style"  # a space and a shell metacharacter: must stay one argument

# "Trains" by copying a LoRA or a pipeline into --out; records what it was given; fails on request.
TRAINER = r'''
import json, shutil, sys
from pathlib import Path
from PIL import Image

args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
data, out = Path(args["--data"]), Path(args["--out"])
with open(args["--count"], "a") as f:
    f.write(args["--seed"] + "\n")
first = sum(Image.open(data / "000.png").convert("RGB").tobytes())
if str(first) in Path(args["--fail-on"]).read_text().split():
    print("loading the base model")
    print("RuntimeError: CUDA out of memory (fake)", file=sys.stderr)
    sys.exit(3)
mode = args["--mode"]
if mode == "lora":
    shutil.copy(args["--lora"], out / "pytorch_lora_weights.safetensors")
elif mode == "kohya":  # kohya-ss writes <output_name>.safetensors with lora_unet_* keys
    shutil.copy(args["--lora"].replace(".safetensors", "_kohya.safetensors"), out / "mimic.safetensors")
elif mode == "pipeline":
    shutil.copytree(args["--pipeline"], out, dirs_exist_ok=True)
record = {"argv": sys.argv[1:], "files": sorted(p.name for p in data.iterdir()),
          "instance": sorted(p.name for p in Path(args["--instance"]).iterdir()),
          "kohya": {p.name: sorted(q.name for q in p.iterdir()) for p in Path(args["--kohya"]).iterdir()},
          "caption": next(Path(args["--kohya"]).glob("*/000.txt")).read_text(),
          "metadata": [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]}
(out / "record.json").write_text(json.dumps(record))
'''

# Writes `samples` PNGs of one colour (from the seed) into {output_dir}/samples.
GENERATOR = r'''
import sys
from pathlib import Path
from PIL import Image

model_dir, out, seed, prompt, samples = sys.argv[1:6]
assert (Path(model_dir) / "record.json").is_file(), "not the training output"
for i in range(int(samples) + 1):
    Image.new("RGB", (24, 24), (int(seed) * 40 % 256, 10 * i, len(prompt))).save(Path(out) / "samples" / f"{i:02d}.png")
'''


def _images(root, count=2, size=32):
    generator = torch.Generator().manual_seed(0)
    clean = [torch.rand(3, size, size, generator=generator) for _ in range(count)]
    for i, image in enumerate(clean):
        write_png(root / "clean" / f"{i:02d}.png", image)
        write_png(root / "prot" / f"{i:02d}.png", (image + 0.03).clamp(0, 1))
    return root / "clean", root / "prot"


def _pixel_sum(path) -> str:
    return str(sum(Image.open(path).convert("RGB").tobytes()))


def _save_as_kohya(lora, path):
    """The same LoRA with kohya-ss's key names (lora_unet_*, lora_down/lora_up, alpha = rank: scale 1)."""
    from safetensors.torch import load_file, save_file

    kohya = {}
    for key, value in load_file(str(lora)).items():
        module, kind = key.rsplit(".lora.", 1)
        prefix, rest = module.split(".", 1)
        name = ("lora_unet_" if prefix == "unet" else "lora_te_") + rest.replace(".", "_")
        kohya[f"{name}.lora_{kind}"] = value
        if kind.startswith("down"):
            kohya[f"{name}.alpha"] = torch.tensor(float(value.shape[0]))
    save_file(kohya, str(path))


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir):
    from tiny_lora import local_lora

    root = tmp_path_factory.mktemp("external")
    (root / "trainer.py").write_text(TRAINER)
    (root / "generator.py").write_text(GENERATOR)
    (root / "fail_on").write_text("")
    lora = local_lora(tiny_model_dir, root / "lora.safetensors", steps=2)
    _save_as_kohya(lora, root / "lora_kohya.safetensors")
    model = load(str(tiny_model_dir), device="cpu", dtype="fp32")
    return root, model, lora


def _command(root, lora, pipeline, mode="lora", extra=""):
    return (f"{PY} {root / 'trainer.py'} --data {{data_dir}} --out {{output_dir}} --seed {{seed}} --prompt {{prompt}} "
            f"--res {{resolution}} --model {{model}} --count {root / 'count'} --fail-on {root / 'fail_on'} "
            f"--mode {mode} --lora {lora} --pipeline {pipeline} --instance {{instance_dir}} --kohya {{kohya_dir}}{extra}")  # fmt: skip


def _run(root, model, train_command, out, *, seeds=(0, 1), generate_command=None, images=None):
    clean, prot = images or _images(root / "images")
    mimic = ExternalMimicry(model, train_command=train_command, generate_command=generate_command, train_seeds=seeds,
                            instance_prompt=PROMPT, resolution=32, samples=2, num_inference_steps=2, seed=0)  # fmt: skip
    settings = EvaluationSettings(mimicries=[mimic], purifications=["none"], style_metric=None, use_clip=False,
                                  headline="kid", bootstrap=50)  # fmt: skip
    return evaluate(load_image_sets(clean, {"prot": prot}), settings, out, quiet=True)


def _trainings(root) -> int:
    path = root / "count"
    return len(path.read_text().split()) if path.exists() else 0


# ------------------------------------------------------------------------------------------------ templates
def test_templates_are_split_without_a_shell_and_filled_word_by_word():
    words = parse_template(f"{PY} t.py --p {{prompt}} --o={{output_dir}} '{{data_dir}}/x y' {{{{literal}}}}",
                           "--train-command", TRAIN_PLACEHOLDERS, ["output_dir"])  # fmt: skip
    filled = fill_template(words, {"prompt": "a b; rm -rf ~", "output_dir": "/o", "data_dir": "/d"})
    assert filled == [PY, "t.py", "--p", "a b; rm -rf ~", "--o=/o", "/d/x y", "{literal}"]


@pytest.mark.parametrize(
    ("train", "generate", "culprit"),
    [
        ("python t.py {data_dir} {output_dir} {data_folder}", None, "{data_folder}"),
        ("python t.py {data_dir} {output_dir} {}", None, "{}"),
        ("python t.py {data_dir} {output_dir} {seed:03d}", None, "{seed}"),
        ("python t.py {data_dir}", None, "{output_dir} (where the tool writes"),
        ("python t.py {output_dir}", None, "{instance_dir} or {kohya_dir}"),
        ("python t.py '{data_dir} {output_dir}", None, "quot"),
        ("no-such-trainer-xyz {data_dir} {output_dir}", None, "no-such-trainer-xyz"),
        ("python t.py {data_dir} {output_dir}", "python g.py {model_dir}", "{output_dir}"),
        ("python t.py {data_dir} {output_dir}", "python g.py {model_dir} {output_dir} {data_dir}", "{data_dir}"),
    ],
)
def test_bad_templates_are_named(train, generate, culprit):
    with pytest.raises(InvalidArgumentError, match="placeholder|must contain|quot|not found") as info:
        check_commands(train, generate)
    assert culprit in str(info.value) and len(str(info.value).splitlines()) == 1


# ------------------------------------------------------------------------------------------------ end to end
def test_trains_once_per_seed_with_the_placeholders_filled_and_generates_with_the_lora(world, tiny_model_dir, tmp_path):
    root, model, lora = world
    before = _trainings(root)
    report = _run(root, model, _command(root, lora, tiny_model_dir), tmp_path / "eval")
    assert _trainings(root) - before == 4  # 2 seeds × (clean, prot)
    assert not report["failed"]
    entry = report["mimicry"]["external"]
    assert entry["keys"] == ["r0-p0-s0", "r0-p0-s1", "r1-p0-s0", "r1-p0-s1"] and entry["runs"] == ["seed0", "seed1"]
    assert entry["config"]["train_command"].startswith(PY)
    for seed in (0, 1):
        run = tmp_path / "eval" / "cells" / "external" / "clean+none" / "work" / f"seed{seed}"
        record = json.loads((run / "model" / "record.json").read_text())
        args = dict(zip(record["argv"][::2], record["argv"][1::2], strict=True))
        assert args["--seed"] == str(seed) and args["--prompt"] == PROMPT and args["--res"] == "32"
        assert args["--model"] == str(tiny_model_dir.resolve()) and args["--data"] == str(run / "data")
        assert record["files"] == ["000.png", "001.png", "metadata.jsonl"]
        assert record["metadata"] == [{"file_name": "000.png", "text": PROMPT}, {"file_name": "001.png", "text": PROMPT}]
        assert record["instance"] == ["000.png", "001.png"]  # no metadata.jsonl: DreamBooth scripts open every file
        assert record["kohya"] == {"1_a painting_ in sks style": ["000.caption", "000.png", "000.txt", "001.caption",
                                                                  "001.png", "001.txt"]}  # fmt: skip
        assert record["caption"] == PROMPT + "\n"
        assert (run / "train.log").read_text().startswith("$ " + PY)
        # The training images are exactly the clean ones.
        assert _pixel_sum(run / "data" / "000.png") == _pixel_sum(root / "images" / "clean" / "00.png")
    # Generated with the LoRA applied: differs from the base model with the same generator.
    from artshield.imageio import read_image

    made = read_image(tmp_path / "eval" / "cells" / "external" / "clean+none" / "images" / "0000.png").rgb[0]
    base = model.pipeline("text2img")(prompt=PROMPT, height=32, width=32, num_inference_steps=2, guidance_scale=5.0,
                                      generator=item_generator(0, "r0-p0-s0"), output_type="pt").images[0]  # fmt: skip
    assert (made - base.clamp(0, 1)).abs().max() > 2 / 255


def test_rerun_reuses_cells_and_finished_training_runs_and_a_new_template_retrains(world, tiny_model_dir, tmp_path):
    root, model, lora = world
    command = _command(root, lora, tiny_model_dir)
    first = _run(root, model, command, tmp_path / "eval", seeds=(0,))
    count = _trainings(root)
    second = _run(root, model, command, tmp_path / "eval", seeds=(0,))
    assert _trainings(root) == count
    assert all(cell["reused"] for cell in second["mimicry"]["external"]["conditions"].values())
    assert second["headline"] == first["headline"]
    # Interrupted after training, before the cell was stored: the run is not trained again, only generated.
    (tmp_path / "eval" / "cells" / "external" / "prot+none" / "cell.json").unlink()
    third = _run(root, model, command, tmp_path / "eval", seeds=(0,))
    assert _trainings(root) == count
    cell = third["mimicry"]["external"]["conditions"]["prot+none"]
    assert not cell["reused"] and cell["info"]["runs"][0]["reused"]
    # The cell key includes the template: a changed command retrains both cells.
    _run(root, model, command + " --extra 1", tmp_path / "eval", seeds=(0,))
    assert _trainings(root) == count + 2


def test_a_failing_command_fails_only_its_cell_with_the_log_tail(world, tiny_model_dir, tmp_path, capsys):
    from artshield.cli import main

    root, model, lora = world
    clean, prot = _images(tmp_path / "images")
    (root / "fail_on").write_text(_pixel_sum(prot / "00.png"))
    try:
        out = tmp_path / "eval"
        status = main(["evaluate", "--clean", str(clean), "--protected", f"prot={prot}", "--model", str(tiny_model_dir),
                       "--mimicry", "external,sdedit", "--train-command", _command(root, lora, tiny_model_dir),
                       "--train-seeds", "0", "--purify", "none", "--samples", "2", "--sampling-steps", "2",
                       "--resolution", "32", "--style-metric", "none", "--no-clip", "--bootstrap", "20",
                       "--output", str(out), "-q"])  # fmt: skip
    finally:
        (root / "fail_on").write_text("")
    assert status == 1
    err = capsys.readouterr().err
    failed = [line for line in err.splitlines() if line.startswith("failed:")]
    assert len(failed) == 1 and "external on prot+none" in failed[0]
    assert "status 3" in failed[0] and "CUDA out of memory (fake)" in failed[0] and "loading the base model" in failed[0]
    report = json.loads((out / "report.json").read_text())
    assert [(f["mimicry"], f["condition"]) for f in report["failed"]] == [("external", "prot+none")]
    assert set(report["mimicry"]["external"]["conditions"]) == {"clean+none"}
    assert set(report["mimicry"]["sdedit"]["conditions"]) == {"clean+none", "prot+none"}  # other cells went on
    assert "Failed cells" in (out / "report.html").read_text()
    assert (out / "cells" / "external" / "prot+none" / "work" / "seed0" / "train.log").is_file()


def test_a_diffusers_pipeline_folder_is_loaded_and_an_unloadable_output_is_named(world, tiny_model_dir, tmp_path):
    root, model, lora = world
    report = _run(root, model, _command(root, lora, tiny_model_dir, mode="pipeline"), tmp_path / "a", seeds=(0,))
    assert not report["failed"]
    assert report["mimicry"]["external"]["conditions"]["clean+none"]["info"]["runs"][0]["generated_from"].startswith("pipeline")
    report = _run(root, model, _command(root, lora, tiny_model_dir, mode="nothing"), tmp_path / "b", seeds=(0,))
    assert len(report["failed"]) == 2
    assert all("neither a LoRA" in f["error"] and "record.json" in f["error"] for f in report["failed"])


def test_a_kohya_lora_file_generates_what_the_same_lora_in_diffusers_layout_does(world, tiny_model_dir, tmp_path):
    from artshield.imageio import read_image

    root, model, lora = world
    images = _images(tmp_path / "images")
    cells = {}
    for mode in ("lora", "kohya"):
        report = _run(root, model, _command(root, lora, tiny_model_dir, mode=mode), tmp_path / mode, seeds=(0,), images=images)
        info = report["mimicry"]["external"]["conditions"]["clean+none"]["info"]["runs"][0]
        assert info["generated_from"].endswith("mimic.safetensors" if mode == "kohya" else "pytorch_lora_weights.safetensors")
        cells[mode] = [read_image(tmp_path / mode / "cells" / "external" / "clean+none" / "images" / f"{i:04d}.png").rgb[0]
                       for i in range(2)]  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(cells["lora"], cells["kohya"], strict=True))


def test_a_generate_command_makes_the_images_that_are_scored(world, tiny_model_dir, tmp_path):
    root, model, lora = world
    generate = f"{PY} {root / 'generator.py'} {{model_dir}} {{output_dir}} {{seed}} {{prompt}} {{samples}}"
    report = _run(root, model, _command(root, lora, tiny_model_dir), tmp_path / "eval", seeds=(0, 2),
                  generate_command=generate)  # fmt: skip
    assert not report["failed"]
    from artshield.imageio import read_image

    cell = tmp_path / "eval" / "cells" / "external" / "clean+none"
    # samples=2: the first two of the three PNGs it wrote, per run; seed = --seed (0), not the training seed.
    for i, green in ((0, 0), (1, 10), (2, 0), (3, 10)):
        image = read_image(cell / "images" / f"{i:04d}.png").rgb[0]
        assert torch.allclose(image[:, 0, 0], torch.tensor([0, green, len(PROMPT)]) / 255)
    assert report["mimicry"]["external"]["keys"] == ["r0-p0-s0", "r0-p0-s1", "r2-p0-s0", "r2-p0-s1"]


# ------------------------------------------------------------------------------------------------ statistics
def test_the_bootstrap_over_runs_widens_intervals_when_runs_disagree():
    values = np.array([0.0] * 10 + [1.0] * 10)
    data = {"clean+none": values}

    def stat(v, idx):
        return float(np.mean(v[idx]))

    _, items = bootstrap_conditions(data, stat, 400, 0)
    _, runs = bootstrap_conditions(data, stat, 400, 0, groups=["a"] * 10 + ["b"] * 10)
    width_items = np.subtract(*np.quantile(items[:, 0], [0.975, 0.025]))
    width_runs = np.subtract(*np.quantile(runs[:, 0], [0.975, 0.025]))
    assert width_runs > 2 * width_items
    assert set(np.round(runs[:, 0], 6)) <= {0.0, 0.5, 1.0}  # whole runs drawn, items within them
