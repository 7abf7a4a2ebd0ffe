"""Splitting a training set among federated clients: IID, Dirichlet label skew, or label-sorted shards.

- ``iid``: a random permutation cut into `num_clients` nearly equal parts (sizes differ by at most one).
- ``dirichlet``: the standard non-IID split of Hsu et al. (2019) used by FLPoison, FedLab and most FL papers:
  for every class, client shares are drawn from Dirichlet(alpha, ..., alpha) and that class's samples are cut
  accordingly. Small alpha (0.1) gives each client few classes; large alpha (100) is close to IID.
- ``shards``: McMahan et al. (2017): sort the samples by label, cut them into ``num_clients * shards_per_client``
  equal shards and give every client `shards_per_client` random ones (two shards = at most two classes).

Every client gets at least one sample. A Dirichlet draw can leave a client empty; instead of redrawing until
it does not (which loops forever at tiny alpha), each empty client takes the last sample of the currently
largest client (lowest index on ties), which is deterministic and changes the draw as little as possible.
Randomness comes from ``numpy.random.default_rng(seed)`` only, so a seed gives the same split everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import InvalidArgumentError

SCHEMES: tuple[str, ...] = ("iid", "dirichlet", "shards")


def partition(labels: torch.Tensor | np.ndarray | Sequence[int], num_clients: int, scheme: str = "iid", *,
              alpha: float = 0.5, shards_per_client: int = 2, seed: int = 0) -> list[torch.Tensor]:
    """Sample indices of each client (int64 tensors, sorted), every client non-empty, deterministic in `seed`."""
    y = _labels(labels)
    n = len(y)
    if isinstance(num_clients, bool) or not isinstance(num_clients, int | np.integer) or num_clients < 1:
        raise InvalidArgumentError(f"`num_clients` must be a positive integer, but is {num_clients!r}.")
    num_clients = int(num_clients)
    if num_clients > n:
        raise InvalidArgumentError(f"`num_clients` ({num_clients}) is larger than the number of samples ({n}): "
                                   "every client needs at least one.")
    if scheme not in SCHEMES:
        raise InvalidArgumentError(f"`scheme` must be one of {', '.join(SCHEMES)}, but is {scheme!r}.")
    rng = np.random.default_rng(int(seed))
    if scheme == "iid":
        parts = np.array_split(rng.permutation(n), num_clients)
    elif scheme == "dirichlet":
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha) or alpha <= 0:
            raise InvalidArgumentError(f"`alpha` must be a positive finite number, but is {alpha!r}.")
        parts = _dirichlet(y, num_clients, float(alpha), rng)
    else:
        if isinstance(shards_per_client, bool) or not isinstance(shards_per_client, int) or shards_per_client < 1:
            raise InvalidArgumentError(
                f"`shards_per_client` must be a positive integer, but is {shards_per_client!r}.")
        if num_clients * shards_per_client > n:
            raise InvalidArgumentError(
                f"`shards_per_client` ({shards_per_client}) times `num_clients` ({num_clients}) exceeds the "
                f"number of samples ({n}).")
        order = np.argsort(y, kind="stable")
        shards = np.array_split(order, num_clients * shards_per_client)
        pick = rng.permutation(len(shards)).reshape(num_clients, shards_per_client)
        parts = [np.concatenate([shards[s] for s in row]) for row in pick]
    return [torch.from_numpy(np.sort(p).astype(np.int64)) for p in parts]


def _labels(labels: torch.Tensor | np.ndarray | Sequence[int]) -> np.ndarray:
    array = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if array.ndim != 1 or array.size == 0:
        raise InvalidArgumentError(f"`labels` must be a non-empty 1-D array, but has shape {array.shape}.")
    if not np.issubdtype(array.dtype, np.integer) or array.min() < 0:
        raise InvalidArgumentError("`labels` must be non-negative integers.")
    return array.astype(np.int64)


def _dirichlet(y: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    clients: list[list[int]] = [[] for _ in range(num_clients)]
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        shares = rng.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
        for k, piece in enumerate(np.split(members, cuts)):
            clients[k].extend(piece.tolist())
    # Repair: each empty client takes the last sample of the largest one (possible since num_clients <= n).
    while True:
        empty = [k for k, members in enumerate(clients) if not members]
        if not empty:
            break
        donor = max(range(num_clients), key=lambda k: (len(clients[k]), -k))
        clients[empty[0]].append(clients[donor].pop())
    return [np.asarray(members, dtype=np.int64) for members in clients]


def label_histogram(labels: torch.Tensor | np.ndarray, parts: Sequence[torch.Tensor],
                    num_classes: int | None = None) -> np.ndarray:
    """(clients, classes) counts of each client's labels: how skewed a split is, for reports and tests."""
    y = _labels(labels)
    classes = int(num_classes) if num_classes is not None else int(y.max()) + 1
    return np.stack([np.bincount(y[p.numpy()], minlength=classes) for p in parts])
