"""What a federated task is: a labelled image dataset split into train and test, and a model to train on it.

Every task hands out images as float32 tensors in [0, 1] of shape (N, C, H, W) and labels as int64 (N,), so
that data-poisoning attacks (triggers, label flips) work on every task the same way, and builds its model
deterministically from a seed with no BatchNorm (a client's update must be a function of its data and the
global model only; running statistics would leak into the update and break robust aggregation's assumptions).
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ...errors import InvalidArgumentError


@dataclass
class Dataset:
    """Labelled images: ``images`` float32 (N, ...) and ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.labels.dim() != 1:
            raise InvalidArgumentError(f"dataset labels must have shape (N,), got {tuple(self.labels.shape)}")
        if self.images.shape[0] != self.labels.shape[0]:
            raise InvalidArgumentError(f"a dataset has {self.images.shape[0]} images but {self.labels.shape[0]} labels")
        if self.labels.dtype != torch.int64:
            self.labels = self.labels.to(torch.int64)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: torch.Tensor | list[int]) -> Dataset:
        """The samples at `indices` (a copy, in that order)."""
        index = torch.as_tensor(indices, dtype=torch.int64)
        return Dataset(self.images.index_select(0, index), self.labels.index_select(0, index))

    def to(self, device: torch.device | str) -> Dataset:
        return Dataset(self.images.to(device), self.labels.to(device))


class Task(ABC):
    """A dataset and a model family: what every client trains and the server evaluates."""

    name: ClassVar[str]
    num_classes: int
    input_shape: tuple[int, ...]  # (C, H, W) of one image

    @abstractmethod
    def build_model(self, seed: int) -> nn.Module:
        """A freshly initialised model; the same `seed` gives the same weights."""

    @abstractmethod
    def read_splits(self) -> tuple[Dataset, Dataset]:
        """(train, test) as the task reads, renders or downloads-from-disk them; called once per task."""

    def train_set(self) -> Dataset:
        """The training samples clients are partitioned from (read once, then cached)."""
        return self._splits()[0]

    def test_set(self) -> Dataset:
        """The held-out samples the global model is evaluated on."""
        return self._splits()[1]

    def _splits(self) -> tuple[Dataset, Dataset]:
        cached = self.__dict__.get("_cached_splits")
        if cached is None:
            cached = self.__dict__["_cached_splits"] = self.read_splits()
        return cached

    def config(self) -> dict[str, Any]:
        """The task's name and settings, for reports."""
        return {"name": self.name}


# ------------------------------------------------------------------------------------------- helpers
def seeded_model(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` with PyTorch's default initialisers drawing from `seed`, leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return build()


def cache_folder(root: str | os.PathLike | None = None) -> Path:
    """Where rendered or converted task data is cached: `root` if given, else ``$ARTSHIELD_CACHE/fl``, else
    ``~/.cache/artshield/fl``."""
    if root is not None:
        return Path(root).expanduser()
    base = os.environ.get("ARTSHIELD_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "artshield") / "fl"


def positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """`value` as an int >= `minimum`, else an error naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not float(value).is_integer():
        raise InvalidArgumentError(f"`{name}` must be an integer >= {minimum}, but is {value!r}.")
    if int(value) < minimum:
        raise InvalidArgumentError(f"`{name}` must be an integer >= {minimum}, but is {value!r}.")
    return int(value)


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"`{name}` must be true or false, but is {value!r}.")
    return value


def optional_count(name: str, value: Any) -> int | None:
    return None if value is None else positive_int(name, value)


def fraction(name: str, value: Any, *, low: float = 0.0, high: float = 1.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(float(value)) \
            or not low < float(value) < high:
        raise InvalidArgumentError(f"`{name}` must be a number in ({low:g}, {high:g}), but is {value!r}.")
    return float(value)


def seeded_subset(dataset: Dataset, count: int | None, seed: int) -> Dataset:
    """`count` samples of `dataset` drawn without replacement by `seed` (kept in dataset order); all if None."""
    if count is None or count >= len(dataset):
        return dataset
    generator = torch.Generator().manual_seed(int(seed))
    keep = torch.randperm(len(dataset), generator=generator)[:count].sort().values
    return dataset.subset(keep)


def small_cnn(in_channels: int, image_size: int, num_classes: int, widths: tuple[int, int] = (16, 32),
              hidden: int = 32) -> nn.Module:
    """Two strided convolutions (5x5 then 3x3, stride 2, ReLU) and two fully connected layers; no BatchNorm.

    At 32x32 RGB and the default widths this has 71,688 parameters. Strided convolutions instead of
    convolution + max-pooling cost a quarter of the arithmetic and learned the styles task as well (0.90 test
    accuracy after 8 epochs on 1,280 images either way), which matters when thousands of clients train on a CPU.
    """
    side = math.ceil(math.ceil(image_size / 2) / 2)
    return nn.Sequential(
        nn.Conv2d(in_channels, widths[0], 5, stride=2, padding=2), nn.ReLU(),
        nn.Conv2d(widths[0], widths[1], 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(widths[1] * side * side, hidden), nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )
