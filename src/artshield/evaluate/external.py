"""Bring your own mimic: train with the mimic's own tool (an external command), then generate and score.

``--mimicry external --train-command TEMPLATE`` runs a training command of your choice — diffusers'
``train_text_to_image_lora.py`` or ``train_dreambooth_lora.py``, a kohya-style trainer, artshield's own —
on the clean, protected or purified images, once per training seed, and generates from what it wrote with
the same prompts, samples, steps and guidance as the built-in LoRA mimic (or with ``--generate-command``).

Templates are split like a shell line (:func:`shlex.split`) but never run by a shell; each word may hold
placeholders, filled in per run (a value with spaces stays one argument):

=================  ============================================================================================
``{data_dir}``     the training images as PNGs plus ``metadata.jsonl`` (``file_name``, ``text`` = the instance
                   prompt): the imagefolder layout of ``--train_data_dir``
``{instance_dir}`` the same PNGs alone (DreamBooth scripts' ``--instance_data_dir`` opens every file there)
``{kohya_dir}``    kohya-ss layout: one subfolder ``1_<instance prompt>`` holding the PNGs and, per image, the
                   instance prompt as ``.txt`` and ``.caption`` (``--train_data_dir`` of kohya's scripts)
``{output_dir}``   the folder the tool writes its result into (generation: where ``samples/`` goes)
``{seed}``         the training seed of this run (generation: ``--seed``)
``{prompt}``       the instance prompt (generation: the prompt to generate from)
``{resolution}``   the training and generation resolution
``{model}``        the base model (``demo`` becomes the demo model's diffusers folder)
``{model_dir}``    generation only: what the training command wrote
``{samples}``, ``{steps}``, ``{guidance}``  generation only: images per prompt, denoising steps, guidance scale
=================  ============================================================================================

What the training command wrote is loaded as a diffusers pipeline folder (``model_index.json``: DreamBooth),
a LoRA (``pytorch_lora_weights.safetensors`` as diffusers' scripts and ``artshield finetune`` write it, or the
only ``.safetensors`` file in the folder) applied to the base model, or, with ``--generate-command``, not at
all: that command must write at least ``{samples}`` PNGs into ``{output_dir}/samples``.

A command that exits with an error fails its cell (:class:`~.mimicry.CellFailed`, quoting the last lines of
its log, kept in the cell folder); the harness goes on with the other cells. A finished training run is not
rerun: its folder carries a fingerprint of the command, the images, the seed and the settings.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import string
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import ArtshieldError, InvalidArgumentError
from ..fileio import write_json_atomic, write_text_atomic
from ..imageio import read_image, write_png
from .mimicry import (
    MIMICRIES,
    CellFailed,
    Generated,
    Mimicry,
    TextToImageMimicry,
    images_digest,
    settings_digest,
)

logger = logging.getLogger(__name__)

#: Placeholders of ``--train-command`` and what they become.
TRAIN_PLACEHOLDERS: dict[str, str] = {
    "data_dir": "the training images + metadata.jsonl (file_name, text)",
    "instance_dir": "the training images alone",
    "kohya_dir": "the training images in kohya's <repeats>_<concept> layout, with .txt/.caption captions",
    "output_dir": "where the tool writes the trained LoRA or pipeline",
    "seed": "the training seed",
    "prompt": "the instance prompt",
    "resolution": "the resolution",
    "model": "the base model",
}
#: Placeholders of ``--generate-command``.
GENERATE_PLACEHOLDERS: dict[str, str] = {
    "model_dir": "what the training command wrote",
    "output_dir": "write the images into {output_dir}/samples",
    "seed": "the generation seed",
    "prompt": "the prompt",
    "samples": "images per prompt",
    "steps": "denoising steps",
    "guidance": "guidance scale",
    "resolution": "the resolution",
    "model": "the base model",
}
#: The training command must use one of these (else it would not train on the images).
DATA_PLACEHOLDERS = ("data_dir", "instance_dir", "kohya_dir")
LORA_FILE = "pytorch_lora_weights.safetensors"
LOG_TAIL_LINES = 5


def parse_template(template: str, option: str, allowed: Mapping[str, str], required: Iterable[str] = (),
                   one_of: Iterable[str] = ()) -> list[str]:
    """Split `template` into words and check its placeholders; raises one-line :class:`InvalidArgumentError`
    naming `option` and the culprit (an unknown placeholder, a missing required one, bad quoting, a program
    that is not there). `allowed` maps each placeholder to what it stands for."""
    names = ", ".join("{" + name + "}" for name in allowed)
    try:
        words = shlex.split(template)
    except ValueError as exc:
        raise InvalidArgumentError(f"{option} {template!r}: {exc} (quote words like a shell line).") from exc
    if not words:
        raise InvalidArgumentError(f"{option} is empty; give the command to run, e.g. 'python train.py ...'.")
    used: set[str] = set()
    for word in words:
        try:
            fields = list(string.Formatter().parse(word))
        except ValueError as exc:
            raise InvalidArgumentError(f"{option}: {word!r}: {exc} (write a literal brace as {{{{ or }}}}).") from exc
        for _, name, spec, conversion in fields:
            if name is None:
                continue
            if name not in allowed:
                raise InvalidArgumentError(f"{option}: unknown placeholder {{{name}}}; use {names}.")
            if spec or conversion:
                raise InvalidArgumentError(f"{option}: placeholder {{{name}}} takes no format; write {{{name}}}.")
            used.add(name)
    for name in required:
        if name not in used:
            raise InvalidArgumentError(f"{option} must contain the placeholder {{{name}}} ({allowed[name]}).")
    one_of = ["{" + name + "}" for name in one_of]
    if one_of and not used.intersection(name[1:-1] for name in one_of):
        choices = one_of[0] if len(one_of) == 1 else ", ".join(one_of[:-1]) + " or " + one_of[-1]
        raise InvalidArgumentError(f"{option} must contain {choices} (the training images).")
    program = words[0]
    if "{" not in program and shutil.which(program) is None:
        raise InvalidArgumentError(f"{option}: program {program!r} not found (not on PATH and not an executable file).")
    return words


def check_commands(train_command: str, generate_command: str | None = None) -> tuple[list[str], list[str] | None]:
    """Check the two templates (:func:`parse_template`); returns their words (None for no generate command)."""
    train = parse_template(train_command, "--train-command", TRAIN_PLACEHOLDERS, ("output_dir",),
                           DATA_PLACEHOLDERS)  # fmt: skip
    if generate_command is None:
        return train, None
    return train, parse_template(generate_command, "--generate-command", GENERATE_PLACEHOLDERS, ("model_dir", "output_dir"))


def fill_template(words: list[str], values: Mapping[str, Any]) -> list[str]:
    """The command's argument list, each placeholder replaced by its value (one word stays one argument)."""
    return [word.format(**{k: str(v) for k, v in values.items()}) for word in words]


def model_path(spec: str) -> str:
    """What ``{model}`` becomes: the demo model's diffusers folder for ``demo``, an absolute path for a local
    folder or file, otherwise the spec unchanged (a hub id)."""
    if spec in ("demo", "demo-inpaint"):
        from ..models.demo import DEMO_WEIGHTS

        return str(DEMO_WEIGHTS)
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def _log_tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "(no log)"
    tail = [line.strip()[:300] for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(tail) if tail else "(the log is empty)"


def run_command(argv: list[str], log: Path, what: str) -> float:
    """Run `argv` (no shell), stdout and stderr to `log`; returns the seconds it took.

    Raises:
        CellFailed: the program could not be started, or exited with a non-zero status (quoting the log's tail).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "wb") as handle:
        handle.write(("$ " + shlex.join(argv) + "\n").encode())
        handle.flush()
        try:
            completed = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT, check=False)
        except OSError as exc:
            raise CellFailed(f"{what} could not start {argv[0]!r} ({exc.strerror or exc}).") from exc
    if completed.returncode != 0:
        raise CellFailed(f"{what} exited with status {completed.returncode}; last lines of {log}: {_log_tail(log)}")
    return time.perf_counter() - start


def find_trained(folder: Path) -> tuple[str, Path]:
    """What a training tool wrote: ``("pipeline", folder)`` for a diffusers pipeline (``model_index.json``),
    ``("lora", path)`` for a LoRA (``pytorch_lora_weights.safetensors``, or the folder's only ``.safetensors``).

    Raises:
        CellFailed: neither is there (the message lists what is).
    """
    if (folder / "model_index.json").is_file():
        return "pipeline", folder
    if (folder / LORA_FILE).is_file():
        return "lora", folder / LORA_FILE
    weights = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if len(weights) == 1:
        return "lora", weights[0]
    found = sorted(p.name for p in folder.iterdir())[:8] if folder.is_dir() else []
    raise CellFailed(
        f"the training command wrote neither a LoRA ({LORA_FILE} or one .safetensors file) nor a diffusers pipeline "
        f"(model_index.json) into {folder} (found: {', '.join(found) or 'nothing'}); point its output at {{output_dir}}, "
        "or pass --generate-command for a tool whose output artshield cannot load."
    )


class ExternalMimicry(TextToImageMimicry):
    """Train with an external command (one run per training seed), then generate from what it wrote.

    Args:
        model: the base :class:`DiffusionModel` (a LoRA the tool writes is applied to it; its ``source`` is
            ``{model}`` unless `model_spec` is given).
        train_command: the training command template (placeholders :data:`TRAIN_PLACEHOLDERS`; must use
            ``{output_dir}`` and one of :data:`DATA_PLACEHOLDERS`).
        generate_command (*optional*): a generation command template (:data:`GENERATE_PLACEHOLDERS`; must use
            ``{model_dir}`` and ``{output_dir}``), run once per prompt and training run.
        train_seeds: one training run per seed (default 0, 1, 2); outputs carry their run, so the harness's
            intervals cover training runs.
        instance_prompt, resolution: the caption of the training images and the resolution (default: the
            model's native resolution).
        prompts, samples, num_inference_steps, guidance_scale, seed: as for the built-in LoRA mimic.
    """

    name = "external"
    summary = "train with an external command (the mimic's own tool), once per training seed, then generate from prompts"

    def __init__(self, model, *, train_command: str, generate_command: str | None = None,
                 train_seeds: Iterable[int] = (0, 1, 2), instance_prompt: str = "a painting in sks style",
                 resolution: int | None = None, model_spec: str | None = None, **settings):
        super().__init__(model, **settings)
        if settings.get("prompts") is None:
            self.prompts = [instance_prompt]
        self.train_words, self.generate_words = check_commands(train_command, generate_command)
        self.train_command, self.generate_command = train_command, generate_command
        self.set_train_seeds(train_seeds)
        self.instance_prompt = instance_prompt
        self.resolution = int(resolution or model.native_resolution)
        self.model_spec = model_path(str(model_spec or model.source))

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, "train_command": self.train_command, "generate_command": self.generate_command,
                "train_seeds": self.train_seeds, "instance_prompt": self.instance_prompt,
                "resolution": self.resolution, "model_path": self.model_spec}  # fmt: skip

    # ------------------------------------------------------------------ training
    def _train(self, images: list[torch.Tensor], run_dir: Path, seed: int) -> tuple[Path, dict[str, Any]]:
        """Run the training command for one seed (or reuse a finished run); returns (its output folder, info)."""
        output_dir = run_dir / "model"
        values = {"data_dir": run_dir / "data", "instance_dir": run_dir / "instance", "kohya_dir": run_dir / "kohya",
                  "output_dir": output_dir,
                  "seed": seed, "prompt": self.instance_prompt, "resolution": self.resolution,
                  "model": self.model_spec}  # fmt: skip
        argv = fill_template(self.train_words, {k: os.fspath(v) if isinstance(v, Path) else v for k, v in values.items()})
        key = settings_digest({"argv": argv, "images": images_digest(images), "version": 1})
        marker = run_dir / "trained.json"
        try:
            done = json.loads(marker.read_text()) if marker.is_file() else None
        except (OSError, json.JSONDecodeError):
            done = None
        if done is not None and done.get("key") == key and output_dir.is_dir():
            logger.info("external mimicry: seed %d already trained in %s", seed, output_dir)
            return output_dir, {**done["info"], "reused": True}
        for folder in ("data", "instance", "kohya", "model"):
            shutil.rmtree(run_dir / folder, ignore_errors=True)
        marker.unlink(missing_ok=True)
        self._write_training_images(images, run_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        logger.info("external mimicry: training seed %d: %s", seed, shlex.join(argv))
        seconds = run_command(argv, run_dir / "train.log", f"the training command (seed {seed})")
        info = {"seed": seed, "training_seconds": round(seconds, 1), "command": shlex.join(argv),
                "log": str(run_dir / "train.log")}  # fmt: skip
        write_json_atomic(marker, {"key": key, "info": info})
        return output_dir, {**info, "reused": False}

    def _write_training_images(self, images: list[torch.Tensor], run_dir: Path) -> None:
        """Fill the data folders the training command names (:data:`DATA_PLACEHOLDERS`)."""
        used = {name for word in self.train_words for _, name, _, _ in string.Formatter().parse(word) if name}
        concept = re.sub(r"[^A-Za-z0-9 ._-]", "_", self.instance_prompt).strip(" .") or "instance"
        captions = []
        for i, image in enumerate(images):
            name = f"{i:03d}.png"
            captions.append(json.dumps({"file_name": name, "text": self.instance_prompt}))
            if "data_dir" in used:
                write_png(run_dir / "data" / name, image)
            if "instance_dir" in used:
                write_png(run_dir / "instance" / name, image)
            if "kohya_dir" in used:
                folder = run_dir / "kohya" / f"1_{concept}"
                write_png(folder / name, image)
                for suffix in (".txt", ".caption"):
                    write_text_atomic(folder / f"{i:03d}{suffix}", self.instance_prompt + "\n")
        if "data_dir" in used:
            write_text_atomic(run_dir / "data" / "metadata.jsonl", "\n".join(captions) + "\n")

    # ------------------------------------------------------------------ generation
    def _generate_builtin(self, model_dir: Path, prefix: str) -> tuple[list[torch.Tensor], list[str], list[str], str]:
        kind, path = find_trained(model_dir)
        try:
            if kind == "pipeline":
                from ..models import load

                trained = load(str(path), device=self.model.device, dtype=self.model.dtype)
            else:
                trained = self.model.with_lora(path)
        except ArtshieldError as exc:
            raise CellFailed(f"what the training command wrote in {model_dir} cannot be used: {exc}") from exc
        images, prompts, keys = self.generate(trained.pipeline("text2img"), prefix)
        return images, prompts, keys, f"{kind} {path}"

    def _generate_external(self, model_dir: Path, run_dir: Path, prefix: str) -> tuple[list[torch.Tensor], list[str], list[str], str]:
        images, prompts, keys = [], [], []
        for p, prompt in enumerate(self.prompts):
            out_dir = run_dir / "generated" / f"p{p}"
            shutil.rmtree(out_dir, ignore_errors=True)
            (out_dir / "samples").mkdir(parents=True)
            values = {"model_dir": os.fspath(model_dir), "output_dir": os.fspath(out_dir), "seed": self.seed,
                      "prompt": prompt, "samples": self.samples, "steps": self.num_inference_steps,
                      "guidance": self.guidance_scale, "resolution": self.resolution, "model": self.model_spec}  # fmt: skip
            argv = fill_template(self.generate_words, values)
            run_command(argv, run_dir / f"generate-p{p}.log", f"the generation command ({prefix}prompt {p})")
            files = sorted(f for f in (out_dir / "samples").iterdir() if f.suffix.lower() == ".png")
            if len(files) < self.samples:
                raise CellFailed(f"the generation command ({prefix}prompt {p}) wrote {len(files)} PNG(s) into "
                                 f"{out_dir / 'samples'}, fewer than --samples {self.samples}.")  # fmt: skip
            for s, file in enumerate(files[: self.samples]):
                try:
                    images.append(read_image(file).rgb[0])
                except ArtshieldError as exc:
                    raise CellFailed(f"the generation command wrote an unreadable image: {exc}") from exc
                prompts.append(prompt)
                keys.append(f"{prefix}p{p}-s{s}")
        return images, prompts, keys, "generate command"

    def train_and_generate(self, images: list[torch.Tensor], run_dir: Path, seed: int, key_prefix: str) -> list[Generated]:
        model_dir, info = self._train(images, run_dir, seed)
        if self.generate_words is None:
            generated, prompts, keys, loaded = self._generate_builtin(model_dir, key_prefix)
        else:
            generated, prompts, keys, loaded = self._generate_external(model_dir, run_dir, key_prefix)
        info = {key: value for key, value in info.items() if key != "seed"}
        return [Generated(generated, prompts, keys, None, {**info, "generated_from": loaded})]


#: Every mimicry kind ``artshield evaluate --mimicry`` accepts (the built-in ones and ``external``).
MIMICRY_KINDS: dict[str, type[Mimicry]] = {**MIMICRIES, ExternalMimicry.name: ExternalMimicry}


def mimicry_kind(name: str) -> type[Mimicry]:
    """The mimicry class for a ``--mimicry`` name (built-in or ``external``)."""
    key = name.strip().lower()
    if key not in MIMICRY_KINDS:
        raise InvalidArgumentError(f"unknown mimicry {name!r}; choose from {', '.join(MIMICRY_KINDS)}.")
    return MIMICRY_KINDS[key]


__all__ = ["DATA_PLACEHOLDERS", "GENERATE_PLACEHOLDERS", "MIMICRY_KINDS", "TRAIN_PLACEHOLDERS", "ExternalMimicry", "check_commands",
           "fill_template", "find_trained", "mimicry_kind", "model_path", "parse_template",
           "run_command"]
