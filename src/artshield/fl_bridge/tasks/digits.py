"""scikit-learn's handwritten digits: 1,797 8x8 greyscale images of 0-9, shipped with scikit-learn (offline).

The split is fixed and seed-free: every fifth image (index % 5 == 0) is a test image, 360 in all, the other
1,437 are for training. The model is a small MLP (64-32-10 by default, 2,410 parameters), small enough that
thousands of client updates per second fit on one CPU core; ``hidden=0`` makes it softmax regression.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ...errors import DependencyError
from .base import Dataset, Task, optional_count, positive_int, seeded_model


class DigitsTask(Task):
    name = "digits"
    num_classes = 10
    input_shape = (1, 8, 8)

    def __init__(self, root: str | None = None, *, hidden: int = 32, num_samples: int | None = None,
                 num_test: int | None = None) -> None:
        # `root` is accepted and ignored: scikit-learn ships the data.
        self.hidden = positive_int("hidden", hidden, minimum=0)
        self.num_samples = optional_count("num_samples", num_samples)
        self.num_test = optional_count("num_test", num_test)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "hidden": self.hidden, "num_samples": self.num_samples, "num_test": self.num_test}

    def build_model(self, seed: int) -> nn.Module:
        def build() -> nn.Module:
            if self.hidden == 0:
                return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
            return nn.Sequential(nn.Flatten(), nn.Linear(64, self.hidden), nn.ReLU(), nn.Linear(self.hidden, 10))

        return seeded_model(seed, build)

    def read_splits(self) -> tuple[Dataset, Dataset]:
        try:
            from sklearn.datasets import load_digits
        except ImportError as exc:  # pragma: no cover - scikit-learn is in the fl extra
            raise DependencyError("the digits task needs scikit-learn: pip install 'artshield[fl]'") from exc
        bunch = load_digits()
        images = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) / 16.0).unsqueeze(1)
        labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
        test = torch.arange(len(labels)) % 5 == 0
        train_set = Dataset(images[~test].contiguous(), labels[~test].contiguous())
        test_set = Dataset(images[test].contiguous(), labels[test].contiguous())
        # Caps keep the first samples: the fixed split stays seed-free.
        if self.num_samples is not None:
            train_set = train_set.subset(torch.arange(min(self.num_samples, len(train_set))))
        if self.num_test is not None:
            test_set = test_set.subset(torch.arange(min(self.num_test, len(test_set))))
        return train_set, test_set
