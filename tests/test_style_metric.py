"""The demo world's style metric (and the statistics helpers it is scored with)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from artshield.errors import InvalidArgumentError, ModelLoadError, ModelNotFoundError
from artshield.models.demo.style import FEATURE_NAMES, StyleMetric, image_features
from artshield.models.demo.world import ALL_STYLES, ARTIST_STYLE, make_dataset, render
from artshield.stats import average_ranks, bootstrap_ci, mean_interval, roc_auc


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


@pytest.fixture(scope="module")
def small_metric():
    """A metric fitted in about a second on a few small clean images (independent of the shipped one)."""
    images, _, labels = make_dataset(4, ALL_STYLES, (48, 48), seed=21)
    return StyleMetric.fit(images, labels, max_iter=100)


# ----------------------------------------------------------------------------------- stats
def test_roc_auc_matches_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    pos = rng.integers(0, 5, 40).astype(float)  # many ties on purpose
    neg = rng.integers(0, 4, 30).astype(float)
    pairwise = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert roc_auc(pos, neg) == pytest.approx(pairwise, abs=1e-12)
    assert roc_auc([1.0, 2.0], [0.0]) == 1.0
    assert roc_auc([0.0], [1.0, 2.0]) == 0.0
    assert roc_auc([1.0, 1.0], [1.0]) == 0.5
    assert roc_auc(torch.tensor([0.9, 0.8]), torch.tensor([0.1])) == 1.0
    np.testing.assert_array_equal(average_ranks(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1.0, 3.5, 2.0])


def test_roc_auc_rejects_empty_or_non_finite_scores():
    with pytest.raises(InvalidArgumentError, match="pos_scores"):
        roc_auc([], [1.0])
    with pytest.raises(InvalidArgumentError, match="neg_scores"):
        roc_auc([1.0], [float("nan")])


def test_bootstrap_ci_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(1)
    values = rng.normal(2.0, 1.0, 200)
    first = bootstrap_ci(values, np.mean, n=300, seed=4)
    assert first == bootstrap_ci(values, np.mean, n=300, seed=4)
    estimate, low, high = first
    assert low < estimate < high and low < 2.0 < high
    auc, auc_low, auc_high = bootstrap_ci((rng.normal(1, 1, 50), rng.normal(0, 1, 50)), roc_auc, n=200, seed=0)
    assert 0.0 <= auc_low <= auc <= auc_high <= 1.0
    with pytest.raises(InvalidArgumentError, match="alpha"):
        bootstrap_ci(values, np.mean, alpha=1.5)


def test_mean_interval_is_the_bootstrap_in_the_result_file_shape():
    values = np.random.default_rng(2).normal(5.0, 2.0, 40)
    estimate, low, high = bootstrap_ci(values, np.mean, seed=3)
    assert mean_interval(values, seed=3) == {"mean": estimate, "ci": [low, high], "n": 40}
    rounded = mean_interval(values, seed=3, digits=2)
    assert rounded["ci"] == [round(low, 2), round(high, 2)] and rounded["mean"] == round(estimate, 2)
    assert mean_interval(values, seed=4) != mean_interval(values, seed=3)  # the seed is the bootstrap's


# ----------------------------------------------------------------------------------- metric
def test_features_any_size_and_input_kind(small_metric):
    for shape in [(1, 3, 16, 16), (2, 3, 17, 40), (1, 3, 160, 224), (1, 3, 224, 96)]:
        x = torch.rand(*shape)
        assert small_metric.features(x).shape == (shape[0], len(FEATURE_NAMES))
        probs = small_metric.probabilities(x)
        assert probs.shape == (shape[0], len(ALL_STYLES))
        torch.testing.assert_close(probs.sum(dim=1), torch.ones(shape[0]))
    image = render("ink", "tree", (40, 56), seed=0)
    from_numpy = small_metric.probabilities(image)
    from_tensor = small_metric.probabilities(_to_tensor(image[None]))
    torch.testing.assert_close(from_numpy, from_tensor)
    assert small_metric.predict(image[None]) == small_metric.predict(_to_tensor(image[None]))


def test_bad_images_name_the_input(small_metric):
    with pytest.raises(InvalidArgumentError, match="at least 16"):
        small_metric.probabilities(torch.rand(1, 3, 8, 64))
    with pytest.raises(InvalidArgumentError, match="images"):
        small_metric.probabilities(torch.rand(1, 4, 32, 32))
    with pytest.raises(InvalidArgumentError, match="images"):
        small_metric.probabilities(np.zeros((2, 32, 32, 3), dtype=np.float32))
    with pytest.raises(InvalidArgumentError, match="labels"):
        StyleMetric.fit(torch.rand(2, 3, 32, 32), ["ink"])
    with pytest.raises(InvalidArgumentError, match="labels"):
        StyleMetric.fit(torch.rand(2, 3, 32, 32), ["ink", "cubism"])


def test_artist_score_is_differentiable(small_metric):
    x = _to_tensor(render(ARTIST_STYLE, "circle", (48, 64), seed=2)[None]).requires_grad_(True)
    score = small_metric.artist_score(x)
    assert score.shape == (1,)
    score.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert torch.isfinite(image_features(torch.zeros(1, 3, 16, 16))).all()  # flat images have finite features
    assert torch.isfinite(image_features(torch.ones(1, 3, 16, 16))).all()


def test_save_load_round_trip(small_metric, tmp_path):
    folder = small_metric.save(tmp_path / "metric")
    assert {p.name for p in folder.iterdir()} == {"style_metric.safetensors", "config.json"}
    loaded = StyleMetric.load(folder)
    assert loaded.styles == small_metric.styles and loaded.artist == small_metric.artist
    x = torch.rand(3, 3, 36, 52)
    torch.testing.assert_close(loaded.probabilities(x), small_metric.probabilities(x))
    assert loaded.info == small_metric.info


def test_load_errors(small_metric, tmp_path):
    with pytest.raises(ModelNotFoundError, match="style metric folder"):
        StyleMetric.load(tmp_path / "nowhere")
    folder = small_metric.save(tmp_path / "old")
    config = json.loads((folder / "config.json").read_text())
    config["feature_version"] = -1
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="version"):
        StyleMetric.load(folder)


def test_shipped_metric_tells_the_artist_from_other_styles_on_fresh_clean_images():
    metric = StyleMetric.load_default()
    assert metric.artist == ARTIST_STYLE and set(metric.styles) == set(ALL_STYLES)
    # Seeds the trainer never used, at the model's resolution and at the example painting's odd size.
    for size, seed in (((128, 128), 12345), ((160, 224), 777)):
        images, _, labels = make_dataset(6, ALL_STYLES, size, seed=seed)
        with torch.no_grad():
            scores = metric.artist_score(_to_tensor(images)).numpy()
        is_artist = np.array(labels) == ARTIST_STYLE
        assert roc_auc(scores[is_artist], scores[~is_artist]) >= 0.9
        accuracy = np.mean(np.array(metric.predict(images)) == np.array(labels))
        assert accuracy >= 0.8


def test_shipped_metric_scores_demo_vae_reconstructions_sensibly():
    """What mimicry outputs look like: images decoded by the demo VAE. The metric was fitted on such images too,
    so it must still separate the artist from the rest after a VAE round trip, and a reconstruction of an
    artist image must score above one of another style."""
    from artshield.models import load

    metric, model = StyleMetric.load_default(), load("demo", device="cpu")
    images, _, labels = make_dataset(4, ALL_STYLES, (128, 128), seed=4242)
    with torch.no_grad():
        x = _to_tensor(images)
        recon = model.decode(model.encode(x, mode="mean"))
        scores = metric.artist_score(recon).numpy()
    is_artist = np.array(labels) == ARTIST_STYLE
    assert roc_auc(scores[is_artist], scores[~is_artist]) >= 0.9
    assert scores[is_artist].mean() > 0.5 > scores[~is_artist].mean()
    # A round trip changes pixels (the VAE is lossy) but not which style the metric sees, for most images.
    assert float((recon - x).abs().mean()) > 0.01
    accuracy = np.mean(np.array(metric.predict(recon)) == np.array(labels))
    assert accuracy >= 0.7
