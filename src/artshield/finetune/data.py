"""Training data of the fine-tuning trainer, in the two layouts diffusers' training examples read.

* **DreamBooth** (``train_dreambooth_lora.py``): a folder of instance images that all share one prompt
  (``--instance_data_dir``, ``--instance_prompt``), and optionally a folder of class images with their own
  prompt for prior preservation (``--class_data_dir``, ``--class_prompt``).
* **Text-to-image** (``train_text_to_image_lora.py``): a folder of captioned images (``--train_data_dir``).
  Captions come from a ``metadata.jsonl`` (or ``metadata.csv``) with a ``file_name`` column and a caption
  column (``--caption_column``, default ``text``), as the Hugging Face ``imagefolder`` format has it, or
  from a ``.txt`` file beside each image with the same stem (``cat.png`` + ``cat.txt``). A ``datasets``
  dataset (``--dataset_name``: a hub id, a local ``imagefolder`` or a ``save_to_disk`` folder) is read with
  the optional ``datasets`` package (``pip install 'artshield[finetune]'``).

Where examples come from is :mod:`.examples`. Every image is decoded once, through :func:`artshield.imageio.read_image` (EXIF orientation, greyscale,
palette, 16-bit and RGBA files all work), *before training starts*: a missing or empty folder, a corrupt
file, a file that is not an image or an image without a caption is a named error
(:class:`~artshield.errors.ImageReadError` / :class:`~artshield.errors.InvalidArgumentError`) that names the
file, not a crash twenty minutes into a run.

Random crops and flips are drawn from a generator seeded by ``(seed, epoch, index)``, not from the global
torch RNG: an example looks the same whether the data loader reaches it in an uninterrupted run or after
resuming from a checkpoint, which is what makes resumed runs end with the same weights.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import ArtshieldError, ImageReadError, InvalidArgumentError
from ..imageio import from_pil, iter_images, read_image
from .examples import (
    DatasetImage,
    Example,
    caption_folder_examples,
    decode_dataset_image,
    dreambooth_examples,
    hub_dataset_examples,
    select_examples,
)

logger = logging.getLogger(__name__)

#: Above this many images the decoded copies are not kept in memory (they are re-read from disk each time).
MAX_CACHED_IMAGES = 2000



# ------------------------------------------------------------------------------------------- image I/O
def load_image(source: Any, resolution: int, name: str | None = None) -> torch.Tensor:
    """Decode one image and resize it so its shorter side is `resolution`; returns uint8 (3, H, W).

    Greyscale becomes RGB; transparency is composited over white (an artwork's transparent background
    reads as paper, not as whatever colour values happen to hide under alpha 0).

    Raises:
        ImageReadError: the file (or dataset row) is missing, not an image, truncated or corrupt (the message
            names it).
    """
    where = name or "image"
    from_dataset = isinstance(source, DatasetImage)
    if from_dataset:
        source = decode_dataset_image(source, where)  # a PIL image, or the path of a local file
    if isinstance(source, (str, os.PathLike)):
        try:
            loaded = read_image(source)
        except ImageReadError as exc:
            if not from_dataset:
                raise
            raise ImageReadError(f"{where}: {exc}") from exc  # name the dataset row, not only the file
    else:
        try:
            loaded = from_pil(source, path=None)
        except ArtshieldError as exc:
            raise ImageReadError(f"{where}: {exc}") from exc
    rgb = loaded.rgb
    if rgb.shape[1] == 1:
        rgb = rgb.expand(-1, 3, -1, -1)
    if loaded.alpha is not None:
        rgb = rgb * loaded.alpha + (1.0 - loaded.alpha)
    height, width = rgb.shape[-2:]
    scale = resolution / min(height, width)
    size = (max(resolution, round(height * scale)), max(resolution, round(width * scale)))
    if size != (height, width):
        # Antialiased bilinear, as torchvision's Resize(BILINEAR) in diffusers' examples.
        rgb = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False, antialias=True)
    return (rgb[0].clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8)



# ------------------------------------------------------------------------------------------- dataset
class TrainingDataset(Dataset):
    """Images with captions, cropped to `resolution` squares, optionally paired with class images.

    Item *i* is a dict with ``pixel_values`` (float (3, R, R) in [0, 1]) and ``caption``, plus
    ``class_pixel_values`` and ``class_caption`` when class examples are given. As in diffusers'
    DreamBoothDataset, the length is the larger of the two lists and the shorter one cycles.

    Args:
        examples: the instance (or captioned) images.
        resolution: side of the square crops.
        center_crop: crop the centre instead of a random window.
        random_flip: flip horizontally with probability 0.5.
        class_examples: prior-preservation images, or None.
        seed: base seed of the crop/flip randomness (see :meth:`set_epoch`).

    Every image is decoded in the constructor, so a bad file fails here, before training.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        resolution: int,
        *,
        center_crop: bool = False,
        random_flip: bool = False,
        class_examples: Sequence[Example] | None = None,
        seed: int | None = 0,
    ) -> None:
        if int(resolution) < 8:
            raise InvalidArgumentError(f"--resolution must be at least 8, but is {resolution!r}.")
        self.examples = list(examples)
        self.class_examples = list(class_examples) if class_examples else []
        if not self.examples:
            raise InvalidArgumentError("there are no training images.")
        self.resolution = int(resolution)
        self.center_crop = center_crop
        self.random_flip = random_flip
        # Without a seed augmentation is still independent of the global RNG, just not repeatable across runs.
        self.seed = int(seed) if seed is not None else int(np.random.SeedSequence().entropy % (2**63))
        self.epoch = 0
        self._cache: dict[tuple[int, int], torch.Tensor] = {}
        self._decode(0, self.examples)
        self._decode(1, self.class_examples)

    def _decode(self, role: int, items: list[Example]) -> None:
        """Decode every image once (so a bad file fails before training), keeping them if there are few."""
        keep = len(self.examples) + len(self.class_examples) <= MAX_CACHED_IMAGES
        for index, example in enumerate(items):
            image = load_image(example.source, self.resolution, example.name)
            if keep:
                self._cache[(role, index)] = image

    def add_class_examples(self, class_examples: Sequence[Example]) -> None:
        """Pair every item with a prior-preservation (class) image from now on (decoded here)."""
        self.class_examples = list(class_examples)
        if not self.class_examples:
            raise InvalidArgumentError("there are no class images for prior preservation.")
        self._cache = {k: v for k, v in self._cache.items() if k[0] == 0}
        self._decode(1, self.class_examples)

    def __len__(self) -> int:
        return max(len(self.examples), len(self.class_examples))

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose crops/flips to draw (accelerate's data loaders call this each epoch)."""
        self.epoch = int(epoch)

    def _image(self, role: int, index: int) -> torch.Tensor:
        cached = self._cache.get((role, index))
        if cached is not None:
            return cached
        example = (self.examples, self.class_examples)[role][index]
        return load_image(example.source, self.resolution, example.name)

    def _augment(self, image: torch.Tensor, role: int, index: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(
            int(np.random.SeedSequence([self.seed, self.epoch, index, role]).generate_state(1, np.uint64)[0] >> 1)
        )
        size = self.resolution
        height, width = image.shape[-2:]
        if self.center_crop:
            top, left = (height - size) // 2, (width - size) // 2
        else:
            top = int(torch.randint(0, height - size + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - size + 1, (1,), generator=generator))
        image = image[:, top : top + size, left : left + size]
        if self.random_flip and bool(torch.rand((), generator=generator) < 0.5):
            image = image.flip(-1)
        return image.float() / 255.0

    def __getitem__(self, index: int) -> dict:
        i = index % len(self.examples)
        item = {"pixel_values": self._augment(self._image(0, i), 0, i), "caption": self.examples[i].caption}
        if self.class_examples:
            j = index % len(self.class_examples)
            item["class_pixel_values"] = self._augment(self._image(1, j), 1, j)
            item["class_caption"] = self.class_examples[j].caption
        return item

    def captions(self) -> list[str]:
        """Every distinct caption the dataset can produce (for pre-computed text embeddings)."""
        return sorted({e.caption for e in self.examples} | {e.caption for e in self.class_examples})


class Collator:
    """Batch items and tokenise their captions; with prior preservation, class examples are appended after
    the instance examples (one forward pass for both, as diffusers' ``collate_fn``)."""

    def __init__(self, tokenizer, with_prior_preservation: bool = False) -> None:
        self.tokenizer = tokenizer
        self.with_prior_preservation = with_prior_preservation

    def __call__(self, items: list[dict]) -> dict:
        pixels = [item["pixel_values"] for item in items]
        captions = [item["caption"] for item in items]
        if self.with_prior_preservation:
            pixels += [item["class_pixel_values"] for item in items]
            captions += [item["class_caption"] for item in items]
        input_ids = self.tokenizer(
            captions,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        return {"pixel_values": torch.stack(pixels).contiguous(), "input_ids": input_ids, "captions": captions}


# ------------------------------------------------------------------------------------------- from a config
def training_examples(config) -> list[Example]:
    """The instance / captioned examples a :class:`~artshield.finetune.config.TrainConfig` names (files are
    listed, not yet decoded), with ``max_train_samples`` applied."""
    if config.instance_data_dir:
        examples = dreambooth_examples(config.instance_data_dir, config.instance_prompt)
    elif config.train_data_dir:
        examples = caption_folder_examples(config.train_data_dir, caption_column=config.caption_column or "text")
    else:
        examples = hub_dataset_examples(
            config.dataset_name, config.dataset_config_name, config.image_column, config.caption_column,
            config.cache_dir,
        )
    return select_examples(examples, config.max_train_samples, config.seed)


def build_dataset(config) -> TrainingDataset:
    """List and decode the training images of a config: bad folders and files fail now, not mid-run."""
    return TrainingDataset(
        training_examples(config),
        config.resolution,
        center_crop=config.center_crop,
        random_flip=config.random_flip,
        seed=config.seed,
    )


# ------------------------------------------------------------------------------------------- prior preservation
def generate_class_images(model, config, device) -> int:
    """Fill ``config.class_data_dir`` up to ``config.num_class_images`` with images the model itself generates
    from ``config.class_prompt`` (diffusers' prior preservation), seeded, each written atomically; returns how
    many were made. The global RNG is left untouched (the training run depends on it)."""
    import contextlib
    import hashlib

    from ..imageio import write_png

    folder = Path(config.class_data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    existing = len(iter_images(folder).images)
    missing = config.num_class_images - existing
    if missing <= 0:
        return 0
    logger.info("Generating %d class images for %r into %s", missing, config.class_prompt, folder)
    pipeline = model.pipeline("text2img")
    precision = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.prior_generation_precision or "")
    device_type = torch.device(device).type
    autocast = torch.autocast(device_type, dtype=precision) if precision is not None else contextlib.nullcontext()
    seed = 0 if config.seed is None else config.seed
    with torch.random.fork_rng(devices=[]), torch.no_grad(), autocast:
        for start in range(0, missing, config.sample_batch_size):
            count = min(config.sample_batch_size, missing - start)
            generator = torch.Generator().manual_seed(seed + existing + start)
            images = pipeline(prompt=[config.class_prompt] * count, generator=generator, num_inference_steps=50).images
            for offset, image in enumerate(images):
                digest = hashlib.sha1(image.tobytes()).hexdigest()[:16]
                write_png(folder / f"{existing + start + offset:05d}-{digest}.png", from_pil(image).rgb)
    return missing


__all__ = [
    "Collator",
    "DatasetImage",
    "Example",
    "TrainingDataset",
    "build_dataset",
    "caption_folder_examples",
    "dreambooth_examples",
    "generate_class_images",
    "hub_dataset_examples",
    "load_image",
    "select_examples",
    "training_examples",
]
