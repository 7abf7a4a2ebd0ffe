"""A CIFAR-like image task rendered offline from the demo model's world: its painting styles are the classes.

Every image is one of the world's subjects (circle, square, house, ...) painted in one style
(:mod:`artshield.models.demo.world`); the label is the style, so the classifier has to learn colour and texture
statistics rather than shapes. By default all eight styles are classes, the held-out "artist" style
(``velmora``) included, at 32x32 RGB like CIFAR-10: 4,000 training images (500 per class) and 800 test images.

Images are deterministic in ``seed``: training image *i* of a style is ``render(style, SUBJECTS[i % 6],
seed=(2 * seed) * 1_000_003 + i)`` and test images use world seed ``2 * seed + 1``, so the two sets never share
an image (the world's own ``make_dataset`` convention). Rendering takes about half a millisecond per 32x32
image; the arrays are cached as an ``.npz`` (uint8 images, int64 labels; read with ``allow_pickle=False``)
under :func:`~artshield.fl_bridge.tasks.base.cache_folder`, keyed on the settings and on a hash of the world's
source, so a changed world is re-rendered rather than read stale.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...errors import OutputWriteError
from ...fileio import atomic_write, sha256_file
from ...models.demo import world
from .base import Dataset, Task, boolean, cache_folder, positive_int, seeded_model, small_cnn

logger = logging.getLogger(__name__)


class StylesTask(Task):
    name = "styles"

    def __init__(self, root: str | None = None, *, num_samples: int = 4000, num_test: int = 800,
                 image_size: int = 32, seed: int = 0, include_artist: bool = True, cache: bool = True) -> None:
        self.num_samples = positive_int("num_samples", num_samples)
        self.num_test = positive_int("num_test", num_test)
        self.image_size = positive_int("image_size", image_size, minimum=8)
        self.seed = positive_int("seed", seed, minimum=0)
        self.include_artist = boolean("include_artist", include_artist)
        self.cache = boolean("cache", cache)
        self.root = root
        self.classes: tuple[str, ...] = world.ALL_STYLES if include_artist else world.STYLES
        self.num_classes = len(self.classes)
        self.input_shape = (3, self.image_size, self.image_size)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "num_samples": self.num_samples, "num_test": self.num_test,
                "image_size": self.image_size, "seed": self.seed, "include_artist": self.include_artist}

    def build_model(self, seed: int) -> nn.Module:
        return seeded_model(seed, lambda: small_cnn(3, self.image_size, self.num_classes))

    # ------------------------------------------------------------------------------------- data
    def _render(self, total: int, world_seed: int) -> tuple[np.ndarray, np.ndarray]:
        """`total` images spread evenly over the classes (the first classes get one more when it does not divide)."""
        size = (self.image_size, self.image_size)
        images = np.empty((total, *size, 3), dtype=np.uint8)
        labels = np.empty(total, dtype=np.int64)
        k = 0
        for c, style in enumerate(self.classes):
            count = total // self.num_classes + (c < total % self.num_classes)
            for i in range(count):
                subject = world.SUBJECTS[i % len(world.SUBJECTS)]
                images[k] = world.render(style, subject, size, seed=world_seed * 1_000_003 + i)
                labels[k] = c
                k += 1
        return images, labels

    def cache_path(self) -> Path:
        version = sha256_file(world.__file__)[:12]
        classes = len(self.classes)
        name = (f"styles-{self.image_size}px-{classes}c-n{self.num_samples}-t{self.num_test}-seed{self.seed}"
                f"-{version}.npz")
        return cache_folder(self.root) / name

    def _read_cache(self, path: Path) -> dict[str, np.ndarray] | None:
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in ("train_images", "train_labels", "test_images", "test_labels")}
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("ignoring the unreadable styles cache %s (%s); rendering again", path, exc)
            return None
        side = self.image_size
        expected = {"train_images": (self.num_samples, side, side, 3), "test_images": (self.num_test, side, side, 3),
                    "train_labels": (self.num_samples,), "test_labels": (self.num_test,)}
        if any(arrays[k].shape != shape for k, shape in expected.items()) \
                or arrays["train_images"].dtype != np.uint8 or arrays["test_images"].dtype != np.uint8:
            logger.warning("ignoring the styles cache %s: its arrays do not match the settings", path)
            return None
        return arrays

    def read_splits(self) -> tuple[Dataset, Dataset]:
        path = self.cache_path() if self.cache else None
        arrays = self._read_cache(path) if path is not None else None
        if arrays is None:
            train_images, train_labels = self._render(self.num_samples, 2 * self.seed)
            test_images, test_labels = self._render(self.num_test, 2 * self.seed + 1)
            arrays = {"train_images": train_images, "train_labels": train_labels,
                      "test_images": test_images, "test_labels": test_labels}
            if path is not None:
                try:
                    atomic_write(path, lambda fh: np.savez_compressed(fh, **arrays), what="styles cache")
                except OutputWriteError as exc:
                    logger.warning("could not cache the rendered styles task: %s", exc)

        def as_dataset(images: np.ndarray, labels: np.ndarray) -> Dataset:
            tensor = torch.from_numpy(images).permute(0, 3, 1, 2).to(torch.float32).div_(255.0).contiguous()
            return Dataset(tensor, torch.from_numpy(labels.astype(np.int64)))

        return (as_dataset(arrays["train_images"], arrays["train_labels"]),
                as_dataset(arrays["test_images"], arrays["test_labels"]))

