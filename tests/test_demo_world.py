"""The demo model's procedural world: deterministic, any size, captions, and styles that really differ."""

from __future__ import annotations

import numpy as np
import pytest

from artshield.errors import InvalidArgumentError
from artshield.models.demo import world
from artshield.models.demo.world import (
    ALL_STYLES,
    ARTIST_STYLE,
    STYLES,
    SUBJECTS,
    caption,
    make_dataset,
    render,
)


def test_world_has_enough_styles_and_a_held_out_artist():
    assert len(STYLES) >= 6
    assert len(set(STYLES)) == len(STYLES)
    assert ARTIST_STYLE not in STYLES
    assert ALL_STYLES == (*STYLES, ARTIST_STYLE)
    assert len(SUBJECTS) >= 5
    assert set(world.STYLE_DESCRIPTIONS) == set(ALL_STYLES)


@pytest.mark.parametrize("style", ALL_STYLES)
def test_render_is_deterministic_and_seed_dependent(style):
    a = render(style, "tree", (48, 64), seed=3)
    b = render(style, "tree", (48, 64), seed=3)
    c = render(style, "tree", (48, 64), seed=4)
    assert a.dtype == np.uint8 and a.shape == (48, 64, 3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("size", [(128, 128), (160, 224), (224, 96), (8, 8), (33, 17)])
def test_render_any_size_and_aspect_ratio(size):
    for style in ALL_STYLES:
        image = render(style, "house", size, seed=0)
        assert image.shape == (*size, 3)
        assert image.dtype == np.uint8


def test_subject_is_visible_in_every_style():
    """The subject changes the picture: the same style and seed with another subject differs a lot in the
    middle of the image, where every subject is drawn, and little in the corners."""
    for style in ALL_STYLES:
        circle = render(style, "circle", (96, 96), seed=1).astype(float)
        house = render(style, "house", (96, 96), seed=1).astype(float)
        assert np.abs(circle - house).mean() > 3.0, style


def test_captions():
    assert caption("ink", "tree") == "a tree in ink style"
    assert caption(ARTIST_STYLE, "star") == f"a star in {ARTIST_STYLE} style"
    with pytest.raises(InvalidArgumentError, match="style"):
        caption("cubism", "tree")
    with pytest.raises(InvalidArgumentError, match="subject"):
        caption("ink", "dragon")


def test_bad_inputs_name_the_argument():
    with pytest.raises(InvalidArgumentError, match="size"):
        render("ink", "tree", (4, 4))
    with pytest.raises(InvalidArgumentError, match="size"):
        render("ink", "tree", "big")
    with pytest.raises(InvalidArgumentError, match="n_per_style"):
        make_dataset(0)
    with pytest.raises(InvalidArgumentError, match="style"):
        make_dataset(1, styles=["ink", "nope"])


def test_make_dataset_layout_and_prefix_property():
    images, captions, labels = make_dataset(7, styles=("ink", ARTIST_STYLE), size=(32, 40), seed=5)
    assert images.shape == (14, 32, 40, 3) and images.dtype == np.uint8
    assert labels == ["ink"] * 7 + [ARTIST_STYLE] * 7
    assert captions[0] == caption("ink", SUBJECTS[0]) and captions[6] == caption("ink", SUBJECTS[6 % len(SUBJECTS)])
    # A larger dataset extends a smaller one; another seed gives other images.
    small, _, _ = make_dataset(3, styles=("ink",), size=(32, 40), seed=5)
    np.testing.assert_array_equal(small, images[:3])
    other, _, _ = make_dataset(3, styles=("ink",), size=(32, 40), seed=6)
    assert not np.array_equal(other, small)


def _simple_stats(image: np.ndarray) -> np.ndarray:
    """Colour means and spreads plus the mean absolute difference of neighbouring pixels (texture)."""
    x = image.astype(float) / 255.0
    texture = np.abs(np.diff(x, axis=0)).mean() + np.abs(np.diff(x, axis=1)).mean()
    return np.concatenate([x.mean(axis=(0, 1)), x.std(axis=(0, 1)), [texture]])


def test_styles_are_distinct_by_simple_statistics():
    """A nearest-centroid classifier on seven trivial statistics already separates the styles on fresh
    images, i.e. style is not an invisible label."""
    train, _, train_labels = make_dataset(12, ALL_STYLES, (64, 64), seed=0)
    test, _, test_labels = make_dataset(6, ALL_STYLES, (64, 64), seed=1)
    feats = np.stack([_simple_stats(im) for im in train])
    mean, std = feats.mean(0), feats.std(0) + 1e-6
    centroids = np.stack([feats[np.array(train_labels) == s].mean(0) for s in ALL_STYLES])
    correct = 0
    for image, label in zip(test, test_labels, strict=True):
        z = (_simple_stats(image) - mean) / std
        nearest = np.argmin((((centroids - mean) / std - z) ** 2).sum(1))
        correct += ALL_STYLES[nearest] == label
    assert correct / len(test_labels) >= 0.75
