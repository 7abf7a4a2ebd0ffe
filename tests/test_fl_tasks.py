"""fl_bridge tasks: shapes and ranges, deterministic models, the styles task's rendering and cache, local roots."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from artshield.errors import InvalidArgumentError
from artshield.fl_bridge.tasks import TASKS, Dataset, Task, load_task
from artshield.models.demo import world


def _params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_digits_split_shapes_and_ranges():
    task = load_task("digits")
    assert isinstance(task, Task) and task.num_classes == 10
    train, test = task.train_set(), task.test_set()
    assert train.images.shape == (1437, 1, 8, 8) and test.images.shape == (360, 1, 8, 8)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert 0.0 <= float(train.images.min()) and float(train.images.max()) == 1.0
    assert set(test.labels.tolist()) == set(range(10))
    assert task.train_set() is train  # loaded once
    # The split is seed-free and disjoint: no test image appears in the training set.
    flat_train = {tuple(row) for row in train.images.reshape(len(train), -1).tolist()}
    overlap = sum(tuple(row) in flat_train for row in test.images.reshape(len(test), -1).tolist())
    assert overlap < 5  # sklearn's digits hold a handful of exact duplicates, not a shared split


def test_models_are_deterministic_in_the_seed_and_have_no_batchnorm(tmp_path, monkeypatch):
    monkeypatch.setenv("ARTSHIELD_CACHE", str(tmp_path))
    for task in (load_task("digits"), load_task("styles", num_samples=8, num_test=8)):
        a, b, c = task.build_model(1), task.build_model(1), task.build_model(2)
        assert torch.equal(_params(a), _params(b))
        assert not torch.equal(_params(a), _params(c))
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in a.modules())
        x = torch.rand(3, *task.input_shape)
        assert a(x).shape == (3, task.num_classes)
    # Building a model leaves the global RNG alone.
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    load_task("digits").build_model(7)
    assert torch.equal(torch.rand(3), expected)


def test_digits_softmax_and_caps():
    task = load_task("digits", hidden=0, num_samples=100, num_test=50)
    assert sum(p.numel() for p in task.build_model(0).parameters()) == 650
    assert len(task.train_set()) == 100 and len(task.test_set()) == 50
    assert sum(p.numel() for p in load_task("digits").build_model(0).parameters()) == 2410


def test_load_task_refuses_unknown_names_settings_and_values():
    with pytest.raises(InvalidArgumentError, match="svhn"):
        load_task("svhn")
    with pytest.raises(InvalidArgumentError, match="'width'"):
        load_task("digits", width=3)
    with pytest.raises(InvalidArgumentError, match="num_samples"):
        load_task("styles", num_samples=0)
    with pytest.raises(InvalidArgumentError, match="image_size"):
        load_task("styles", image_size=4)
    with pytest.raises(InvalidArgumentError, match="include_artist"):
        load_task("styles", include_artist="yes")
    assert TASKS == ("digits", "styles", "mnist", "fashion-mnist", "cifar10")


def test_styles_renders_the_world_caches_it_and_reads_it_back(tmp_path, monkeypatch):
    monkeypatch.setenv("ARTSHIELD_CACHE", str(tmp_path))
    task = load_task("styles", num_samples=20, num_test=10, image_size=16, seed=3)
    train, test = task.train_set(), task.test_set()
    assert task.classes == world.ALL_STYLES and task.num_classes == 8  # the artist's style is a class too
    assert train.images.shape == (20, 3, 16, 16) and test.images.shape == (10, 3, 16, 16)
    assert np.bincount(train.labels.numpy(), minlength=8).tolist() == [3, 3, 3, 3, 2, 2, 2, 2]
    assert 0.0 <= float(train.images.min()) and float(train.images.max()) <= 1.0
    # Image 0 of class 0 is the world's own rendering with the documented seed.
    expected = world.render(world.ALL_STYLES[0], world.SUBJECTS[0], (16, 16), seed=6 * 1_000_003)
    assert torch.equal((train.images[0].permute(1, 2, 0) * 255).round().to(torch.uint8), torch.from_numpy(expected))
    # Train and test never share an image.
    assert not any(torch.equal(a, b) for a in test.images for b in train.images)

    (cache,) = list((tmp_path / "fl").glob("styles-*.npz"))
    with np.load(cache, allow_pickle=False) as data:
        assert data["train_images"].dtype == np.uint8
    monkeypatch.setattr(world, "render", lambda *a, **k: pytest.fail("rendered again despite the cache"))
    again = load_task("styles", num_samples=20, num_test=10, image_size=16, seed=3)
    assert torch.equal(again.train_set().images, train.images)
    assert torch.equal(again.test_set().labels, test.labels)


def test_styles_seed_changes_images_and_a_bad_cache_is_rerendered(tmp_path, monkeypatch, caplog):
    other = load_task("styles", root=str(tmp_path), num_samples=8, num_test=8, image_size=16, seed=4)
    base = load_task("styles", root=str(tmp_path), num_samples=8, num_test=8, image_size=16, seed=3)
    assert not torch.equal(other.train_set().images, base.train_set().images)
    path = base.cache_path()
    assert path.parent == tmp_path and path.is_file()
    path.write_bytes(b"not an npz")
    fresh = load_task("styles", root=str(tmp_path), num_samples=8, num_test=8, image_size=16, seed=3)
    assert torch.equal(fresh.train_set().images, base.train_set().images)
    assert "unreadable" in caplog.text
    no_artist = load_task("styles", root=str(tmp_path), num_samples=7, num_test=7, image_size=16,
                          include_artist=False)
    assert no_artist.num_classes == 7 and int(no_artist.train_set().labels.max()) == 6


def test_styles_model_size():
    model = load_task("styles").build_model(0)
    assert 50_000 <= sum(p.numel() for p in model.parameters()) <= 100_000


@pytest.mark.parametrize("name, expected", [("mnist", "MNIST/raw"), ("fashion-mnist", "FashionMNIST/raw"),
                                            ("cifar10", "cifar-10-batches")])
def test_torchvision_tasks_name_the_root_and_the_files_they_expect(tmp_path, name, expected):
    with pytest.raises(InvalidArgumentError, match="root") as info:
        load_task(name)
    assert expected in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(InvalidArgumentError) as info:
        load_task(name, root=str(tmp_path))
    message = str(info.value)
    assert str(tmp_path) in message and expected in message and "\n" not in message


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_and_cifar_read_from_a_local_root(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    _write_idx(raw / "train-images-idx3-ubyte", rng.integers(0, 256, (30, 28, 28)))
    _write_idx(raw / "train-labels-idx1-ubyte", np.arange(30) % 10)
    _write_idx(raw / "t10k-images-idx3-ubyte", rng.integers(0, 256, (10, 28, 28)))
    _write_idx(raw / "t10k-labels-idx1-ubyte", np.arange(10))
    task = load_task("mnist", root=str(tmp_path), num_samples=20)
    train = task.train_set()
    assert train.images.shape == (20, 1, 28, 28) and train.labels.dtype == torch.int64
    assert float(train.images.max()) <= 1.0 and len(task.test_set()) == 10
    assert task.build_model(0)(train.images[:2]).shape == (2, 10)

    binary = tmp_path / "cifar-10-batches-bin"
    binary.mkdir()
    for i, count in enumerate((4, 4, 4, 4, 4, 6)):
        records = rng.integers(0, 256, (count, 3073)).astype(np.uint8)
        records[:, 0] = (np.arange(count) + i) % 10
        name = f"data_batch_{i + 1}.bin" if i < 5 else "test_batch.bin"
        records.tofile(binary / name)
    cifar = load_task("cifar10", root=str(tmp_path))
    assert cifar.train_set().images.shape == (20, 3, 32, 32) and len(cifar.test_set()) == 6
    assert cifar.test_set().labels.tolist() == [5, 6, 7, 8, 9, 0]
    assert cifar.build_model(0)(cifar.test_set().images).shape == (6, 10)


def test_dataset_subset_and_checks():
    data = Dataset(torch.arange(12, dtype=torch.float32).reshape(6, 2), torch.tensor([0, 1, 2, 0, 1, 2]))
    part = data.subset(torch.tensor([4, 1]))
    assert len(part) == 2 and part.labels.tolist() == [1, 1] and part.images[0].tolist() == [8.0, 9.0]
    with pytest.raises(InvalidArgumentError, match="labels"):
        Dataset(torch.zeros(3, 2), torch.zeros(2, dtype=torch.int64))
