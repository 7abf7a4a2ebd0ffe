"""fl_bridge.partition: IID, Dirichlet and shard splits cover the data, skew as asked, never leave a client empty."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from artshield.errors import InvalidArgumentError
from artshield.fl_bridge.partition import label_histogram, partition

LABELS = torch.arange(1000) % 10  # 100 samples of each of 10 classes


def _check_cover(parts: list[torch.Tensor], n: int) -> None:
    everything = torch.cat(parts)
    assert everything.dtype == torch.int64
    assert sorted(everything.tolist()) == list(range(n))  # disjoint and complete
    assert all(len(p) >= 1 for p in parts)
    assert all(torch.equal(p, p.sort().values) for p in parts)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_every_scheme_covers_the_data_and_is_deterministic_in_the_seed(scheme):
    parts = partition(LABELS, 20, scheme, seed=1)
    assert len(parts) == 20
    _check_cover(parts, 1000)
    again = partition(LABELS.numpy(), 20, scheme, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition(LABELS, 20, scheme, seed=2)
    assert any(not torch.equal(a, b) for a, b in zip(parts, other, strict=True))


def test_iid_sizes_differ_by_at_most_one():
    sizes = [len(p) for p in partition(LABELS[:997], 10, "iid")]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 997


def test_dirichlet_skew_grows_as_alpha_shrinks():
    def skew(alpha: float) -> float:
        # Mean over clients and seeds of the share of a client's samples in its most common class.
        values = []
        for seed in range(3):
            hist = label_histogram(LABELS, partition(LABELS, 10, "dirichlet", alpha=alpha, seed=seed))
            values.append((hist.max(axis=1) / hist.sum(axis=1)).mean())
        return float(np.mean(values))

    near_iid, moderate, extreme = skew(100.0), skew(0.5), skew(0.05)
    assert near_iid < 0.2 < moderate < extreme
    assert extreme > 0.5


def test_dirichlet_repairs_empty_clients_deterministically():
    labels = torch.arange(60) % 3
    parts = partition(labels, 60, "dirichlet", alpha=0.01, seed=0)  # a draw leaves most clients empty
    _check_cover(parts, 60)
    assert all(len(p) == 1 for p in parts)
    parts = partition(labels, 25, "dirichlet", alpha=0.01, seed=4)
    _check_cover(parts, 60)
    assert all(torch.equal(a, b) for a, b in zip(parts, partition(labels, 25, "dirichlet", alpha=0.01, seed=4),
                                                 strict=True))


def test_shards_give_each_client_few_classes():
    labels = torch.arange(200) % 10  # 20 per class: 20 shards of 10 are each one class
    parts = partition(labels, 10, "shards", shards_per_client=2, seed=0)
    _check_cover(parts, 200)
    hist = label_histogram(labels, parts)
    assert ((hist > 0).sum(axis=1) <= 2).all() and (hist.sum(axis=1) == 20).all()


@pytest.mark.parametrize("kwargs, field", [
    ({"num_clients": 1001}, "num_clients"),
    ({"num_clients": 0}, "num_clients"),
    ({"num_clients": 5, "scheme": "pathological"}, "scheme"),
    ({"num_clients": 5, "scheme": "dirichlet", "alpha": 0.0}, "alpha"),
    ({"num_clients": 5, "scheme": "dirichlet", "alpha": float("nan")}, "alpha"),
    ({"num_clients": 5, "scheme": "shards", "shards_per_client": 0}, "shards_per_client"),
    ({"num_clients": 600, "scheme": "shards", "shards_per_client": 2}, "shards_per_client"),
])
def test_bad_arguments_name_the_field(kwargs, field):
    with pytest.raises(InvalidArgumentError, match=f"`{field}`") as info:
        partition(LABELS, **kwargs)
    assert "\n" not in str(info.value)


def test_bad_labels_are_refused():
    with pytest.raises(InvalidArgumentError, match="labels"):
        partition(torch.tensor([0.5, 1.0]), 1)
    with pytest.raises(InvalidArgumentError, match="labels"):
        partition(torch.zeros(0, dtype=torch.int64), 1)
