"""MNIST, Fashion-MNIST and CIFAR-10 read from a local folder, never downloaded.

`root` follows torchvision's layout (what ``torchvision.datasets.MNIST(root, download=True)`` leaves behind):

- ``mnist``: ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``
- ``fashion-mnist``: ``<root>/FashionMNIST/raw/`` with the same four file names
- ``cifar10``: ``<root>/cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin`` (the binary release, read here
  with NumPy), or else ``<root>/cifar-10-batches-py/`` (the Python release, read by torchvision, which checks
  every file's MD5 against the official release before unpickling it)

A missing folder or file is an :class:`~artshield.errors.InvalidArgumentError` naming the root and the files
expected. Models: LeNet-5 (61,706 parameters) for the 28x28 greyscale sets, the small CNN of the styles task
(71,688 parameters at 32x32) for CIFAR-10; neither has BatchNorm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...errors import DependencyError, InvalidArgumentError
from .base import Dataset, Task, optional_count, positive_int, seeded_model, seeded_subset, small_cnn

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")
CIFAR_BIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)
CIFAR_PY = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")

# name -> (torchvision class, subfolder of root, expected files, channels, side)
SOURCES: dict[str, tuple[str, str, tuple[str, ...], int, int]] = {
    "mnist": ("MNIST", "MNIST/raw", MNIST_FILES, 1, 28),
    "fashion-mnist": ("FashionMNIST", "FashionMNIST/raw", MNIST_FILES, 1, 28),
    "cifar10": ("CIFAR10", "cifar-10-batches-py", CIFAR_PY, 3, 32),
}


def lenet5(num_classes: int = 10) -> nn.Module:
    """LeNet-5 for 28x28 greyscale images (ReLU and max-pooling, as is usual today)."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, num_classes),
    )


class TorchvisionTask(Task):
    """One of torchvision's small image datasets, from a local `root` only."""

    num_classes = 10

    def __init__(self, name: str, root: str | None = None, *, num_samples: int | None = None,
                 num_test: int | None = None, seed: int = 0) -> None:
        self.name = name  # type: ignore[misc] - one class serves three task names
        self.num_samples = optional_count("num_samples", num_samples)
        self.num_test = optional_count("num_test", num_test)
        self.seed = positive_int("seed", seed, minimum=0)
        _cls, _folder, _files, channels, side = SOURCES[name]
        self.input_shape = (channels, side, side)
        self.root = self._check_root(root)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "root": str(self.root), "num_samples": self.num_samples,
                "num_test": self.num_test, "seed": self.seed}

    def _check_root(self, root: str | None) -> Path:
        _cls, folder, files, _c, _s = SOURCES[self.name]
        expected = f"{folder}/{{{','.join(files)}}}"
        if self.name == "cifar10":
            expected = f"cifar-10-batches-bin/{{{','.join(CIFAR_BIN)}}} or {expected}"
        if root is None:
            raise InvalidArgumentError(
                f"task {self.name!r} reads its data from a local folder and never downloads it: pass `root`, "
                f"the folder holding {expected}")
        path = Path(root).expanduser()
        if self.name == "cifar10" and all((path / "cifar-10-batches-bin" / f).is_file() for f in CIFAR_BIN):
            return path
        missing = [f for f in files if not (path / folder / f).is_file()]
        if missing:
            raise InvalidArgumentError(
                f"task {self.name!r}: `root` {str(path)!r} lacks {folder}/{', '.join(missing)} "
                f"(expected {expected}, torchvision's layout; nothing is downloaded)")
        return path

    def build_model(self, seed: int) -> nn.Module:
        if self.name == "cifar10":
            return seeded_model(seed, lambda: small_cnn(3, 32, 10))
        return seeded_model(seed, lenet5)

    # ------------------------------------------------------------------------------------- data
    def _read(self, train: bool) -> Dataset:
        bin_folder = self.root / "cifar-10-batches-bin"
        if self.name == "cifar10" and all((bin_folder / f).is_file() for f in CIFAR_BIN):
            names = CIFAR_BIN[:5] if train else CIFAR_BIN[5:]
            records = np.concatenate([np.fromfile(bin_folder / n, dtype=np.uint8).reshape(-1, 3073) for n in names])
            labels = torch.from_numpy(records[:, 0].astype(np.int64))
            images = torch.from_numpy(records[:, 1:].reshape(-1, 3, 32, 32).copy())
            return Dataset(images.to(torch.float32).div_(255.0), labels)
        try:
            import torchvision.datasets as tvd
        except ImportError as exc:
            raise DependencyError(f"task {self.name!r} needs torchvision to read {self.root}: pip install torchvision") \
                from exc
        cls = getattr(tvd, SOURCES[self.name][0])
        try:
            source = cls(str(self.root), train=train, download=False)
        except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
            raise InvalidArgumentError(f"task {self.name!r}: the files under `root` {str(self.root)!r} "
                                       f"could not be read ({exc})") from exc
        data = torch.as_tensor(np.asarray(source.data))
        labels = torch.as_tensor(np.asarray(source.targets), dtype=torch.int64)
        images = data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)
        return Dataset(images.to(torch.float32).div_(255.0).contiguous(), labels)

    def read_splits(self) -> tuple[Dataset, Dataset]:
        return (seeded_subset(self._read(train=True), self.num_samples, self.seed),
                seeded_subset(self._read(train=False), self.num_test, self.seed + 1))
