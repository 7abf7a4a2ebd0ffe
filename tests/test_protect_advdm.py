"""AdvDM on a tiny random-weight model: it raises its objective more than random noise of the same budget,
keeps the budget at any size, and is a configured object called on images."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from artshield.errors import InvalidArgumentError
from artshield.protect import STRENGTHS, AdvDM, get_method
from artshield.protect.tiling import FullResolutionObjective, plan_tiles, tile_starts


def test_advdm_raises_the_loss_more_than_random_noise_of_the_same_budget(tiny_model):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    eps = 16 / 255
    method = AdvDM(tiny_model, eps=eps, steps=40, step_size=2 / 255, seed=0)
    protected = method(images)
    noise = torch.randint(0, 2, images.shape, generator=torch.Generator().manual_seed(1)).float() * 2 - 1
    random = (images + eps * noise).clamp(0, 1)
    clean = method.evaluate(images, samples=64)
    gain_advdm = method.evaluate(protected, samples=64) - clean
    gain_random = method.evaluate(random, samples=64) - clean
    assert float(gain_advdm.mean()) > float(gain_random.mean())
    assert float(gain_advdm.mean()) > 0


def test_budget_and_size_hold_at_odd_sizes_and_greyscale(tiny_model):
    for shape in [(1, 3, 37, 53), (1, 1, 20, 70)]:
        images = torch.rand(shape)
        protected = AdvDM(tiny_model, eps=4 / 255, steps=3, seed=0)(images)
        assert protected.shape == images.shape
        assert float((protected - images).abs().max()) <= 4 / 255 + 1e-6
        assert protected.min() >= 0 and protected.max() <= 1


def test_same_seed_same_protection(tiny_model):
    images = torch.rand(1, 3, 32, 32)
    first = AdvDM(tiny_model, eps=8 / 255, steps=3, seed=5)(images)
    second = AdvDM(tiny_model, eps=8 / 255, steps=3, seed=5)(images)
    other = AdvDM(tiny_model, eps=8 / 255, steps=3, seed=6)(images)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_pil_in_pil_out(tiny_model):
    image = Image.new("RGB", (40, 24), (120, 60, 200))
    out = AdvDM(tiny_model, eps=8 / 255, steps=2, seed=0)(image)
    assert isinstance(out, Image.Image) and out.size == image.size


def test_config_is_json_and_names_everything(tiny_model):
    method = AdvDM.from_strength(tiny_model, "low", prompt="an oil painting", seed=1)
    config = json.loads(json.dumps(method.config))
    assert config["method"] == "advdm" and config["prompt"] == "an oil painting"
    eps, steps = STRENGTHS["low"]
    assert config["engine"]["eps"] == pytest.approx(eps) and config["engine"]["steps"] == steps
    assert get_method("ADVDM") is AdvDM


@pytest.mark.parametrize("kwargs, name", [({"latent": "mode"}, "latent"), ({"t_range": (500, 100)}, "t_range")])
def test_bad_hyperparameters_are_named(tiny_model, kwargs, name):
    with pytest.raises(InvalidArgumentError, match=name):
        AdvDM(tiny_model, **kwargs)


def test_unknown_method_is_named():
    with pytest.raises(InvalidArgumentError, match="list-methods"):
        get_method("glaze")


def test_tile_starts_cover_evenly():
    assert tile_starts(100, 128) == [0]
    assert tile_starts(512, 256) == [0, 256]
    starts = tile_starts(600, 256)
    assert starts[0] == 0 and starts[-1] == 600 - 256 and len(starts) == 3


def test_tiled_objective_gradient_is_the_mean_of_tile_gradients():
    """The surrogate the tiled objective returns has the mean tile loss as value and mean tile gradient."""
    weights = torch.randn(1, 3, 48, 80, generator=torch.Generator().manual_seed(0))

    def objective(images, generator):
        return (images * weights[..., : images.shape[-2], : images.shape[-1]]).flatten(1).sum(dim=1)

    tiled = FullResolutionObjective(objective, multiple=16, tile_size=32)
    boxes = tiled.boxes(48, 80)
    assert len(boxes) > 1
    images = torch.rand(1, 3, 48, 80, requires_grad=True)
    value = tiled(images, None)
    (grad,) = torch.autograd.grad(value.sum(), images)
    expected_grad = torch.zeros_like(images)
    expected_value = 0.0
    for top, left, h, w in boxes:
        expected_grad[..., top : top + h, left : left + w] += weights[..., :h, :w]
        expected_value += float((images.detach()[..., top : top + h, left : left + w] * weights[..., :h, :w]).sum())
    assert torch.allclose(grad, expected_grad / len(boxes), atol=1e-6)
    assert float(value.detach()) == pytest.approx(expected_value / len(boxes), rel=1e-5)


def test_large_images_are_tiled_and_keep_the_budget(tiny_model):
    images = torch.rand(1, 3, 70, 100)
    method = AdvDM(tiny_model, eps=8 / 255, steps=2, seed=0, tile_size=32)
    assert len(method.full_resolution_objective().boxes(70, 100)) > 1
    protected = method(images)
    assert protected.shape == images.shape
    assert float((protected - images).abs().max()) <= 8 / 255 + 1e-6


@pytest.mark.parametrize("height, width", [(100000, 3), (3, 100000), (5000, 100), (100, 600), (700, 900), (1, 1)])
def test_tiles_are_sized_by_area_and_cover_every_pixel(height, width):
    """Each pass holds at most tile_size² pixels once padded (strips as side-by-side segments), every pixel
    is covered, and thin strips cost about what their pixels cost, not one padded tile per 256 rows."""
    tile, multiple = 256, 32
    tiles = plan_tiles(height, width, tile, multiple)
    covered = torch.zeros(height, width, dtype=torch.bool)
    for t in tiles:
        view = t.view(torch.zeros(1, 1, height, width))
        padded = -(-view.shape[-2] // multiple) * multiple * (-(-view.shape[-1] // multiple) * multiple)
        assert padded <= tile * tile or len(t.boxes) == 1 and min(view.shape[-2:]) < multiple
        for top, left, h, w in t.boxes:
            covered[top : top + h, left : left + w] = True
    assert bool(covered.all())
    ideal = height * width / (tile * tile)
    assert len(tiles) <= max(1, 2 * math.ceil(ideal)), len(tiles)
    if (height, width) == (100000, 3):
        assert len(tiles) == 5  # 391 segments of 3×256, 85 side by side per 255×256 tile


def test_packed_strip_gradient_is_the_mean_over_tiles():
    """With segments of a strip laid side by side, each pixel's gradient is how often it is seen / tiles."""
    # multiple=1: no padding, so the sum sees each crop exactly once per tile
    tiled = FullResolutionObjective(lambda images, generator: images.flatten(1).sum(dim=1), multiple=1, tile_size=32)
    height, width = 1000, 3
    tiles = tiled.tiles(height, width)
    assert any(len(t.boxes) > 1 for t in tiles)
    images = torch.rand(1, 3, height, width, requires_grad=True)
    (grad,) = torch.autograd.grad(tiled(images, None).sum(), images)
    seen = torch.zeros(1, 3, height, width)
    for t in tiles:
        for top, left, h, w in t.boxes:
            seen[..., top : top + h, left : left + w] += 1
    assert bool((seen > 0).all())
    assert torch.allclose(grad, seen / len(tiles))
