"""Mimicry attacks: what someone who wants to copy an artist does with the artist's (protected) images.

Each attack is a small object configured once and called on a set of images; it returns what the mimic
obtains, so the evaluation harness can score it. Randomness is fixed per output item (one seeded generator
per generated image), so the same attack called on clean and on protected images produces *paired*
outputs — same prompts, same seeds, same masks — and the difference between them is the protection's
effect alone.

=========  ===================================================================================================
name       what the mimic does
=========  ===================================================================================================
``lora``   fine-tunes a LoRA on the images (artshield's trainer, DreamBooth style with an instance prompt), once
           per training seed, then generates ``samples`` images for each prompt with the LoRA loaded the
           stock-diffusers way (also at ``checkpoints``: the score against training steps).
``sdedit`` img2img (SDEdit, Meng et al. 2022): noise each image to ``strength`` of the schedule and denoise with
           a prompt, ``samples`` seeds per image.
``inpaint`` repaints part of each image with an inpainting model (white mask = repainted), for each of the masks
           (by default the surroundings of a centred ellipse — DiffusionGuard's default editable region — and a
           seeded random rectangle), ``samples`` seeds each.
=========  ===================================================================================================

``external`` (:mod:`.external`) brings the mimic's own tool: a training command run once per training seed,
then generation as ``lora`` does (or by a generation command).

Images are cropped (never resized: resampling is itself a purification) to a multiple of the model's pixel
multiple before an image-to-image attack; LoRA training sees them at ``resolution`` as the trainer's data
pipeline prepares them (resize of the short side and centre crop, as diffusers' examples do).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..errors import ArtshieldError, InvalidArgumentError
from ..fileio import write_json_atomic, write_text_atomic
from ..imageio import as_rgb, quantize, read_image, write_png

logger = logging.getLogger(__name__)


@dataclass
class MimicryOutput:
    """What a mimicry attack produced.

    Attributes:
        images: the outputs, float (3, H, W) in [0, 1] each (sizes may differ between items).
        prompts: the prompt behind each output.
        sources: for image-to-image attacks, the index of the input image each output was made from.
        keys: a stable name per output ("p0-s1", "img3-mask1-s0"): outputs with the same key, made from clean
            and from protected images, are paired.
        info: what else a report should say (training time, LoRA location, ...).
        groups: for attacks that train several times (one run per training seed), the run each output came
            from; the harness's bootstrap then resamples runs, and outputs within runs. Empty: one run.
        stages: for attacks that generate at several points of their training (the checkpoint curve), the
            training step each output was made at; the harness scores the last step as the result and every
            step as the curve. Empty: one stage.
        seconds: how long making these outputs took (the harness records it; a reused cell keeps the time it
            was made in, so a report of reused cells still says what the evaluation cost).
    """

    images: list[torch.Tensor]
    prompts: list[str]
    keys: list[str]
    sources: list[int | None] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    groups: list[str] = field(default_factory=list)
    stages: list[int] = field(default_factory=list)
    seconds: float | None = None


def settings_digest(data: Any) -> str:
    """A short digest of JSON-able settings (what identifies a cached run)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def images_digest(images: Sequence[torch.Tensor]) -> str:
    """A digest of images as their 8-bit quantisation (what is on disk)."""
    hasher = hashlib.sha256()
    for image in images:
        hasher.update(str(tuple(image.shape)).encode())
        hasher.update(quantize(image).tobytes())
    return hasher.hexdigest()[:16]


class CellFailed(ArtshieldError):
    """One mimicry run on one input set failed for a reason outside artshield (an external training or generation
    command exited with an error, or wrote nothing artshield can load). The harness records it and goes on with
    the other cells; the CLI then exits with status 1."""


def item_generator(seed: int, key: str) -> torch.Generator:
    """A CPU generator for one output item, from the run's seed and the item's key (as purifications seed files)."""
    from .purify_base import image_seed

    return torch.Generator().manual_seed(image_seed(seed, key))


def crop_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Centre-crop (C, H, W) so H and W are multiples of `multiple` (cropping keeps every pixel's value)."""
    h, w = image.shape[-2:]
    nh, nw = h - h % multiple, w - w % multiple
    if nh == 0 or nw == 0:
        raise InvalidArgumentError(f"an image of {h}×{w} px is smaller than the model's pixel multiple {multiple}.")
    top, left = (h - nh) // 2, (w - nw) // 2
    return image[..., top : top + nh, left : left + nw]


class Mimicry:
    """Base class: ``attack(images, workdir) -> MimicryOutput``; ``config`` is what identifies a run."""

    name: ClassVar[str]
    summary: ClassVar[str]
    #: True when each output is an edit of one input (scored against the edit of the clean image with the same key).
    edits_inputs: ClassVar[bool] = False

    def __init__(self, model, *, prompts: list[str] | None = None, samples: int = 1, num_inference_steps: int = 20,
                 guidance_scale: float = 5.0, seed: int = 0, progress: bool = False):
        if int(samples) < 1:
            raise InvalidArgumentError(f"`samples` must be at least 1, but is {samples!r}.")
        if int(num_inference_steps) < 1:
            raise InvalidArgumentError(f"`num_inference_steps` must be at least 1, but is {num_inference_steps!r}.")
        self.model = model
        self.prompts = list(prompts) if prompts else [""]
        self.samples = int(samples)
        self.num_inference_steps = int(num_inference_steps)
        self.guidance_scale = float(guidance_scale)
        self.seed = int(seed)
        self.progress = bool(progress)  # show long inner loops' progress (the LoRA trainer's); not part of `config`

    @property
    def config(self) -> dict[str, Any]:
        return {"name": self.name, "model": str(self.model.source), "prompts": self.prompts, "samples": self.samples,
                "num_inference_steps": self.num_inference_steps, "guidance_scale": self.guidance_scale,
                "seed": self.seed}  # fmt: skip

    def __call__(self, images: list[torch.Tensor], workdir: Path) -> MimicryOutput:
        if not images:
            raise InvalidArgumentError(f"{self.name} mimicry needs at least one image.")
        return self._attack([im.float().cpu() for im in images], Path(workdir))

    def _attack(self, images: list[torch.Tensor], workdir: Path) -> MimicryOutput:
        raise NotImplementedError


@contextlib.contextmanager
def _tqdm_disabled(disabled: bool):
    """Silence the trainer's progress bar (tqdm reads ``TQDM_DISABLE`` when a bar is created)."""
    previous = os.environ.get("TQDM_DISABLE")
    if disabled:
        os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        if disabled:
            if previous is None:
                os.environ.pop("TQDM_DISABLE", None)
            else:
                os.environ["TQDM_DISABLE"] = previous


def parse_seeds(text: str, option: str = "--train-seeds") -> list[int]:
    """A comma list of distinct integers >= 0 (e.g. ``0,1,2``), as ``--train-seeds`` takes."""
    try:
        seeds = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise InvalidArgumentError(f"{option} {text!r}: expected a comma list of integers, e.g. 0,1,2.") from None
    if not seeds or any(seed < 0 for seed in seeds):
        raise InvalidArgumentError(f"{option} {text!r}: expected one or more integers >= 0, e.g. 0,1,2.")
    if len(set(seeds)) != len(seeds):
        raise InvalidArgumentError(f"{option} {text!r}: a seed is listed twice.")
    return seeds


@dataclass
class Generated:
    """What one training run produced at one point of its training: the generated images and how they were made."""

    images: list[torch.Tensor]
    prompts: list[str]
    keys: list[str]
    step: int | None = None  # the training step, when the attack generates at several steps
    info: dict[str, Any] = field(default_factory=dict)


class TextToImageMimicry(Mimicry):
    """Base of the mimicries that train a model on the images and then generate from prompts.

    A subclass trains once per seed in ``train_seeds`` (:meth:`train_and_generate`); the outputs carry their run
    (``groups``) so the harness's intervals cover training runs, not only generations, and, when a run generates
    at several training steps, their step (``stages``).
    """

    resolution: int
    train_seeds: list[int]

    def set_train_seeds(self, train_seeds: Iterable[int] | None) -> None:
        """One training run per seed (default: one run with the mimicry's ``seed``)."""
        seeds = [self.seed] if train_seeds is None else [int(seed) for seed in train_seeds]
        if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise InvalidArgumentError(f"`train_seeds` must be distinct integers >= 0, but is {train_seeds!r}.")
        self.train_seeds = seeds

    def generate(self, pipe, key_prefix: str = "", label: str = "") -> tuple[list[torch.Tensor], list[str], list[str]]:
        """``samples`` images per prompt from a text-to-image pipeline at ``resolution``, one seeded generator per
        item (key ``{key_prefix}p{prompt}-s{sample}``); returns (images, prompts, keys). A `label` goes into each
        returned key (``{key_prefix}{label}p{prompt}-s{sample}``) but not into the generator's seed, so the images
        of one run at different training steps start from the same noise (the curve compares like with like)."""
        outputs, prompts, keys = [], [], []
        for p, prompt in enumerate(self.prompts):
            for s in range(self.samples):
                key = f"{key_prefix}p{p}-s{s}"
                image = pipe(prompt=prompt, height=self.resolution, width=self.resolution,
                             num_inference_steps=self.num_inference_steps, guidance_scale=self.guidance_scale,
                             generator=item_generator(self.seed, key), output_type="pt").images[0]
                outputs.append(image.float().clamp(0, 1).cpu())
                prompts.append(prompt)
                keys.append(f"{key_prefix}{label}p{p}-s{s}")
        return outputs, prompts, keys

    def train_and_generate(self, images: list[torch.Tensor], run_dir: Path, seed: int, key_prefix: str) -> list[Generated]:
        """Train on `images` with training seed `seed` in `run_dir` (reusing a finished run) and generate."""
        raise NotImplementedError

    def _attack(self, images: list[torch.Tensor], workdir: Path) -> MimicryOutput:
        out = MimicryOutput([], [], [], [], {"runs": []})
        for seed in self.train_seeds:
            for made in self.train_and_generate(images, (workdir / f"seed{seed}").resolve(), seed, f"r{seed}-"):
                out.images += made.images
                out.prompts += made.prompts
                out.keys += made.keys
                out.groups += [f"seed{seed}"] * len(made.images)
                if made.step is not None:
                    out.stages += [made.step] * len(made.images)
                out.info["runs"].append({"seed": seed, **({"step": made.step} if made.step is not None else {}), **made.info})
        out.sources = [None] * len(out.images)
        return out


def parse_steps(text: str, option: str = "--lora-checkpoints") -> list[int]:
    """A comma list of distinct training steps >= 1, sorted (e.g. ``200,400,600``)."""
    try:
        steps = sorted(int(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise InvalidArgumentError(f"{option} {text!r}: expected a comma list of training steps, e.g. 200,400,600.") from None
    if not steps or steps[0] < 1 or len(set(steps)) != len(steps):
        raise InvalidArgumentError(f"{option} {text!r}: expected distinct training steps >= 1, e.g. 200,400,600.")
    return steps


#: The LoRA mimic's settings that change what training makes (the others only change generation).
TRAINING_SETTINGS = ("instance_prompt", "steps", "learning_rate", "rank", "batch_size", "train_text_encoder",
                     "resolution", "checkpoints")


class LoraMimicry(TextToImageMimicry):
    """LoRA fine-tuning on the images, then text-to-image generation (the main style-mimicry threat).

    Args:
        model: the base :class:`DiffusionModel` (its ``source`` is what the trainer loads).
        instance_prompt: the prompt the images are captioned with (default ``"a painting in sks style"``).
        prompts: generation prompts (default: the instance prompt); ``samples`` seeds each.
        steps, learning_rate, rank, batch_size, train_text_encoder, resolution: the LoRA recipe. Defaults are
            the recipe measured to learn the demo world's artist (``examples/lora_artist_mimicry.py``); for
            Stable Diffusion at 512 px the usual recipe is lr 1e-4, rank 4-16, 400-1000 steps.
        train_seeds: one training run per seed (default: one run with ``seed``); the harness bootstraps over runs.
        checkpoints: training steps below ``steps`` at which each run also generates (the checkpoint curve:
            the score against training steps). The run trains in stages, resuming its own checkpoint, so the
            curve costs generation only; the result is the last step's.
    """

    name = "lora"
    summary = "fine-tune a LoRA on the images (DreamBooth style), then generate from prompts"

    def __init__(self, model, *, instance_prompt: str = "a painting in sks style", steps: int = 800,
                 learning_rate: float = 3e-3, rank: int = 16, batch_size: int = 4, train_text_encoder: bool = True,
                 resolution: int | None = None, train_seeds: Iterable[int] | None = None,
                 checkpoints: Iterable[int] = (), **settings):
        super().__init__(model, **settings)
        if settings.get("prompts") is None:
            self.prompts = [instance_prompt]
        self.instance_prompt = instance_prompt
        self.steps, self.learning_rate, self.rank, self.batch_size = int(steps), float(learning_rate), int(rank), int(batch_size)
        self.train_text_encoder = bool(train_text_encoder)
        self.resolution = int(resolution or model.native_resolution)
        self.set_train_seeds(train_seeds)
        self.checkpoints = sorted({int(step) for step in checkpoints})
        if self.checkpoints and (self.checkpoints[0] < 1 or self.checkpoints[-1] >= self.steps):
            raise InvalidArgumentError(f"`checkpoints` must be training steps from 1 to below `steps` ({self.steps}), "
                                       f"but are {self.checkpoints}.")  # fmt: skip

    @property
    def stages(self) -> list[int]:
        """The training steps at which each run generates: the checkpoints, then the last step."""
        return [*self.checkpoints, self.steps]

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, "instance_prompt": self.instance_prompt, "steps": self.steps,
                "learning_rate": self.learning_rate, "rank": self.rank, "batch_size": self.batch_size,
                "train_text_encoder": self.train_text_encoder, "resolution": self.resolution,
                "train_seeds": self.train_seeds, "checkpoints": self.checkpoints}  # fmt: skip

    def trainer_config(self, data_dir: Path, output_dir: Path, seed: int | None = None, steps: int | None = None):
        """The trainer's :class:`~artshield.finetune.config.TrainConfig` for this recipe (training seed `seed`,
        stopping at `steps`: a stage of the checkpoint curve)."""
        from ..finetune.config import TrainConfig

        # A checkpoint at every stage's end (their greatest common divisor), so the next stage resumes there.
        every = math.gcd(*self.stages) if self.checkpoints else max(100, self.steps // 4)
        return TrainConfig(
            method="lora", pretrained_model_name_or_path=str(self.model.source), instance_data_dir=str(data_dir),
            instance_prompt=self.instance_prompt, output_dir=str(output_dir), resolution=self.resolution,
            random_flip=True, train_batch_size=self.batch_size, max_train_steps=steps or self.steps,
            learning_rate=self.learning_rate, rank=self.rank, lr_scheduler="constant",
            checkpointing_steps=every, checkpoints_total_limit=1, resume_from_checkpoint="latest",
            seed=self.seed if seed is None else seed, report_to="none", train_text_encoder=self.train_text_encoder,
        )  # fmt: skip

    def train_and_generate(self, images: list[torch.Tensor], run_dir: Path, seed: int, key_prefix: str) -> list[Generated]:
        import shutil
        import time

        from ..finetune.train import train

        # The run folder belongs to one training recipe: another recipe must not resume its checkpoints.
        training = settings_digest({"model": str(self.model.source), "seed": seed, "images": images_digest(images),
                                    **{k: v for k, v in self.config.items() if k in TRAINING_SETTINGS}})  # fmt: skip
        generation = settings_digest({k: v for k, v in self.config.items() if k not in (*TRAINING_SETTINGS, "train_seeds")})
        marker = run_dir / "training.txt"
        if run_dir.exists() and (not marker.is_file() or marker.read_text().strip() != training):
            shutil.rmtree(run_dir)
        data_dir, lora_dir = run_dir / "training_images", run_dir / "lora"
        for i, image in enumerate(images):
            write_png(data_dir / f"{i:03d}.png", image)
        write_text_atomic(marker, training + "\n")
        made = []
        for step in self.stages:
            # A stage already generated is read back: training would resume from a later checkpoint.
            stage_dir = run_dir / "generated" / f"step{step}"
            done = _read_stage(stage_dir, generation)
            if done is not None:
                made.append(done)
                continue
            config = self.trainer_config(data_dir, lora_dir, seed, step)
            logger.info("lora mimicry: training seed %d to step %d on %d images in %s", seed, step, len(images), run_dir)
            start = time.perf_counter()
            with _tqdm_disabled(not self.progress):
                result = train(config)
            seconds = time.perf_counter() - start
            pipe = self.model.pipeline("text2img")
            pipe.load_lora_weights(str(lora_dir))
            try:
                label = f"c{step}-" if self.checkpoints else ""
                outputs, prompts, keys = self.generate(pipe, key_prefix, label)
            finally:
                # The pipeline shares the handle's UNet and text encoder: take the adapters out again.
                pipe.unload_lora_weights()
            loss = result.loss if result.loss is not None and math.isfinite(result.loss) else None  # JSON has no NaN
            info = {"training_seconds": round(seconds, 1), "final_loss": loss, "steps": result.global_step,
                    "lora": str(lora_dir), "command": "python -m artshield.finetune.train " + shlex.join(config.to_argv())}  # fmt: skip
            made.append(_write_stage(stage_dir, generation, Generated(outputs, prompts, keys, step if self.checkpoints else None, info)))
        return made


def _write_stage(folder: Path, generation: str, made: Generated) -> Generated:
    """Save one stage's images (8-bit, as the harness keeps them) and, last, what they are."""
    for i, image in enumerate(made.images):
        write_png(folder / f"{i:04d}.png", image)
    write_json_atomic(folder / "stage.json", {"generation": generation, "prompts": made.prompts, "keys": made.keys,
                                              "step": made.step, "info": made.info})  # fmt: skip
    return made


def _read_stage(folder: Path, generation: str) -> Generated | None:
    """A stage saved by :func:`_write_stage` with the same generation settings, or None."""
    try:
        meta = json.loads((folder / "stage.json").read_text())
        if meta["generation"] != generation:
            return None
        images = [read_image(folder / f"{i:04d}.png").rgb[0] for i in range(len(meta["keys"]))]
    except (OSError, ValueError, KeyError, ArtshieldError):
        return None
    return Generated(images, meta["prompts"], meta["keys"], meta["step"], {**meta["info"], "reused": True})


class SDEditMimicry(Mimicry):
    """Img2img (SDEdit): partial noising to ``strength`` and denoising with a prompt; ``samples`` seeds per image."""

    name = "sdedit"
    summary = "img2img (SDEdit) each image at a strength, with a prompt"
    edits_inputs = True

    def __init__(self, model, *, strength: float = 0.5, **settings):
        super().__init__(model, **settings)
        if not 0.0 < float(strength) <= 1.0:
            raise InvalidArgumentError(f"`strength` must be in (0, 1], but is {strength!r}.")
        self.strength = float(strength)

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, "strength": self.strength}

    def _attack(self, images: list[torch.Tensor], workdir: Path) -> MimicryOutput:
        pipe = self.model.pipeline("img2img")
        out = MimicryOutput([], [], [], [])
        for i, image in enumerate(images):
            source = crop_to_multiple(as_rgb(image), self.model.pixel_multiple)
            for s in range(self.samples):
                prompt = self.prompts[(i * self.samples + s) % len(self.prompts)]
                key = f"img{i}-s{s}"
                result = pipe(prompt=prompt, image=source[None].to(self.model.device), strength=self.strength,
                              num_inference_steps=self.num_inference_steps, guidance_scale=self.guidance_scale,
                              generator=item_generator(self.seed, key), output_type="pt").images[0]
                out.images.append(result.float().clamp(0, 1).cpu())
                out.prompts.append(prompt)
                out.keys.append(key)
                out.sources.append(i)
        return out


def default_masks(height: int, width: int, count: int, seed: int) -> list[torch.Tensor]:
    """Inpainting masks (1, H, W), white = repainted: the outside of a centred ellipse (semi-axes 3/8 of the
    sides, DiffusionGuard's default), then seeded random rectangles covering 25-50 % of the image."""
    from ..masks import centre_ellipse_mask

    masks = [centre_ellipse_mask(torch.zeros(1, 3, height, width))[0]]
    generator = torch.Generator().manual_seed(int(seed))
    while len(masks) < count:
        area = 0.25 + 0.25 * float(torch.rand((), generator=generator))
        aspect = math.exp(float(torch.empty(()).uniform_(-0.7, 0.7, generator=generator)))
        h = min(height, max(1, round(math.sqrt(area * height * width / aspect))))
        w = min(width, max(1, round(area * height * width / h)))
        top = int(torch.randint(0, height - h + 1, (), generator=generator))
        left = int(torch.randint(0, width - w + 1, (), generator=generator))
        mask = torch.zeros(1, height, width)
        mask[:, top : top + h, left : left + w] = 1.0
        masks.append(mask)
    return masks[:count]


class InpaintMimicry(Mimicry):
    """Inpainting: repaint the white part of each mask, keeping the rest of the image.

    Args:
        model: an inpainting (9-channel) :class:`DiffusionModel` (``demo-inpaint`` for the demo world).
        masks (*optional*): one list of (1, H, W) masks per image (white = repainted); default
            :func:`default_masks` with ``num_masks`` masks per image.
        strength: 1.0 repaints from pure noise, as the inpainting pipeline does by default.
    """

    name = "inpaint"
    summary = "repaint masked regions with an inpainting model (varied masks)"
    edits_inputs = True

    def __init__(self, model, *, masks: list[list[torch.Tensor]] | None = None, num_masks: int = 2,
                 strength: float = 1.0, **settings):
        if not model.is_inpainting:
            raise InvalidArgumentError(
                f"inpaint mimicry needs an inpainting model, but {model.source} is text-to-image; pass --inpaint-model "
                "(demo-inpaint for the demo model, e.g. runwayml/stable-diffusion-inpainting for SD 1.5)."
            )
        super().__init__(model, **settings)
        if int(num_masks) < 1:
            raise InvalidArgumentError(f"`num_masks` must be at least 1, but is {num_masks!r}.")
        self.masks, self.num_masks, self.strength = masks, int(num_masks), float(strength)

    @property
    def config(self) -> dict[str, Any]:
        masks = "given" if self.masks is not None else f"default x{self.num_masks}"
        return {**super().config, "masks": masks, "strength": self.strength}

    def _attack(self, images: list[torch.Tensor], workdir: Path) -> MimicryOutput:
        pipe = self.model.pipeline("inpaint")
        multiple = self.model.pixel_multiple
        out = MimicryOutput([], [], [], [])
        for i, image in enumerate(images):
            source = crop_to_multiple(as_rgb(image), multiple)
            h, w = source.shape[-2:]
            if self.masks is not None:
                masks = [crop_to_multiple(m, multiple) for m in self.masks[i]]
                if any(m.shape[-2:] != (h, w) for m in masks):
                    raise InvalidArgumentError(f"inpaint mimicry: the masks of image {i} do not match its size {w}×{h}.")
            else:
                masks = default_masks(h, w, self.num_masks, self.seed + i)
            for k, mask in enumerate(masks):
                for s in range(self.samples):
                    prompt = self.prompts[(k * self.samples + s) % len(self.prompts)]
                    key = f"img{i}-mask{k}-s{s}"
                    result = pipe(prompt=prompt, image=source[None].to(self.model.device),
                                  mask_image=mask[None].to(self.model.device), height=h, width=w,
                                  strength=self.strength, num_inference_steps=self.num_inference_steps,
                                  guidance_scale=self.guidance_scale, generator=item_generator(self.seed, key),
                                  output_type="pt").images[0]
                    out.images.append(result.float().clamp(0, 1).cpu())
                    out.prompts.append(prompt)
                    out.keys.append(key)
                    out.sources.append(i)
        return out


MIMICRIES: dict[str, type[Mimicry]] = {cls.name: cls for cls in (LoraMimicry, SDEditMimicry, InpaintMimicry)}


def get_mimicry(name: str) -> type[Mimicry]:
    key = name.strip().lower()
    if key not in MIMICRIES:
        raise InvalidArgumentError(f"unknown mimicry {name!r}; choose from {', '.join(MIMICRIES)}.")
    return MIMICRIES[key]


__all__ = ["MIMICRIES", "CellFailed", "InpaintMimicry", "LoraMimicry", "Mimicry", "MimicryOutput", "SDEditMimicry",
           "TextToImageMimicry", "crop_to_multiple", "default_masks", "get_mimicry", "item_generator"]
