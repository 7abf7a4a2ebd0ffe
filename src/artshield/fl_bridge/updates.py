"""Model updates as vectors: one fixed order of a model's floating-point arrays, flattened and back.

Every attack and defense in fl_bridge works on a stacked update matrix (clients × parameters) rather than on
per-layer lists: distances, medians and projections are then one torch call each, which is what makes
robust aggregation at a million parameters cheap (see ``benchmarks/fl_aggregation.py``). A
:class:`ParameterLayout` records which arrays form the vector and where each one lives in it, so that a
vector can be turned back into named arrays (for Flower's ``ArrayRecord`` or ``torch.func.functional_call``)
and so that structure-aware methods (the pill's neurons, SkyMask's per-layer masks) can find layers.

Integer and boolean arrays (step counters, masks a model keeps as buffers) are not part of the update: they
are carried over unchanged from the global model.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InvalidArgumentError


@dataclass(frozen=True)
class LayoutEntry:
    """One array of the model: its name, shape and place in the flattened vector."""

    name: str
    shape: tuple[int, ...]
    start: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def stop(self) -> int:
        return self.start + self.size

    @property
    def span(self) -> slice:
        return slice(self.start, self.stop)


class ParameterLayout:
    """The floating-point arrays of a model, in order, and their slices of the flattened vector."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]]):
        entries, start = [], 0
        for name, shape in shapes.items():
            entry = LayoutEntry(str(name), tuple(int(s) for s in shape), start)
            entries.append(entry)
            start = entry.stop
        self.entries: tuple[LayoutEntry, ...] = tuple(entries)
        self.size = start
        self._by_name = {e.name: e for e in self.entries}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, torch.Tensor | np.ndarray]) -> ParameterLayout:
        """The layout of the floating-point entries of a state dict (or a mapping of NumPy arrays)."""
        return cls({name: tuple(a.shape) for name, a in arrays.items() if is_floating(a)})

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[LayoutEntry]:
        return iter(self.entries)

    def __getitem__(self, name: str) -> LayoutEntry:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def flatten(self, arrays: Mapping[str, torch.Tensor | np.ndarray]) -> torch.Tensor:
        """One float32 vector of the layout's arrays, in layout order; names a missing or misshapen array."""
        pieces = []
        for entry in self.entries:
            if entry.name not in arrays:
                raise InvalidArgumentError(f"the update has no array named {entry.name!r}")
            value = torch.as_tensor(arrays[entry.name])
            if tuple(value.shape) != entry.shape:
                raise InvalidArgumentError(
                    f"array {entry.name!r} has shape {tuple(value.shape)}, the model's is {entry.shape}")
            pieces.append(value.detach().reshape(-1).to(torch.float32))
        return torch.cat(pieces) if pieces else torch.zeros(0)

    def unflatten(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named views of `vector` (shape ``(size,)``) in the model's shapes; differentiable."""
        if vector.dim() != 1 or vector.numel() != self.size:
            raise InvalidArgumentError(f"a parameter vector must have shape ({self.size},), got {tuple(vector.shape)}")
        return {e.name: vector[e.span].view(e.shape) for e in self.entries}


def is_floating(array: torch.Tensor | np.ndarray) -> bool:
    if isinstance(array, torch.Tensor):
        return array.is_floating_point()
    return np.issubdtype(np.asarray(array).dtype, np.floating)
