"""Federated tasks: a dataset, its train/test split and a small model family (see :mod:`.base`).

    >>> from artshield.fl_bridge.tasks import load_task
    >>> task = load_task("digits")                      # scikit-learn's 8x8 digits, a 64-32-10 MLP
    >>> task = load_task("styles", num_samples=2000)    # the demo world's styles as classes, 32x32 RGB, a small CNN
    >>> task = load_task("mnist", root="~/data")        # torchvision's layout under root; never downloads

Every task's images are float32 in [0, 1] of shape (N, C, H, W); labels are int64.
"""

from __future__ import annotations

import inspect
from typing import Any

from ...errors import InvalidArgumentError
from .base import Dataset, Task

TASKS: tuple[str, ...] = ("digits", "styles", "mnist", "fashion-mnist", "cifar10")
"""The names :func:`load_task` accepts."""


def _task_class(name: str) -> type[Task]:
    if name == "digits":
        from .digits import DigitsTask

        return DigitsTask
    if name == "styles":
        from .styles import StylesTask

        return StylesTask
    from .torchvision_data import TorchvisionTask

    return TorchvisionTask


def load_task(name: str, root: str | None = None, **params: Any) -> Task:
    """The task called `name` (one of :data:`TASKS`) with its optional settings.

    `root` is where the data lives for the torchvision tasks (required there), and the cache folder for
    ``styles``; ``digits`` ignores it. Unknown names and settings are an
    :class:`~artshield.errors.InvalidArgumentError` naming them.
    """
    key = str(name).strip().lower() if isinstance(name, str) else name
    if key not in TASKS:
        raise InvalidArgumentError(f"`task` must be one of {', '.join(TASKS)}, but is {name!r}.")
    cls = _task_class(key)
    accepted = [p.name for p in inspect.signature(cls.__init__).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY]
    for param in params:
        if param not in accepted:
            raise InvalidArgumentError(
                f"task {key!r} has no setting {param!r} (settings: {', '.join(accepted) or 'none'}).")
    if cls.__name__ == "TorchvisionTask":
        return cls(key, root, **params)
    return cls(root, **params)


__all__ = ["TASKS", "Dataset", "Task", "load_task"]
