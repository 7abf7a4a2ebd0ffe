"""The demo world's second style judge: colour-blind by construction, sees the artist in fresh renders, is
independent of the style metric where it should be, round-trips through safetensors, and scores in the harness."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from artshield.errors import ModelLoadError, ModelNotFoundError
from artshield.evaluate.harness import Scorer
from artshield.evaluate.mimicry import MimicryOutput
from artshield.models.demo.judge import StructureJudge, luminance_input, train_judge
from artshield.models.demo.world import ALL_STYLES, ARTIST_STYLE, make_dataset
from artshield.stats import roc_auc


@pytest.fixture(scope="module")
def judge():
    return StructureJudge.load_default()


@pytest.fixture(scope="module")
def renders():
    images, _, labels = make_dataset(4, ALL_STYLES, size=(128, 128), seed=4242)  # seen by neither judge
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return x, np.array([label == ARTIST_STYLE for label in labels])


def test_it_finds_the_artist_in_fresh_renders(judge, renders):
    x, is_artist = renders
    with torch.no_grad():
        scores = judge.artist_score(x).numpy()
        probabilities = judge.probabilities(x)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(len(x)), atol=1e-5)
    assert roc_auc(scores[is_artist], scores[~is_artist]) >= 0.95
    assert judge.styles == ALL_STYLES and judge.artist == ARTIST_STYLE


def test_brightness_contrast_and_size_carry_nothing(judge, renders):
    x, _ = renders
    with torch.no_grad():
        plain = judge.probabilities(x[:8])
        # A global affine change of every channel alike (kept inside [0, 1]) leaves the standardised luminance as it was.
        shifted = judge.probabilities(0.6 * x[:8] + 0.2)
    assert torch.allclose(plain, shifted, atol=1e-4)
    assert luminance_input(torch.rand(2, 3, 200, 90)).shape == (2, 1, 128, 128)


def test_it_disagrees_with_the_colour_statistics(judge, renders):
    """An artist render with its colour channels swapped keeps the artist's structure; a grey flat image in
    the artist's mean colour has none."""
    x, is_artist = renders
    artist = x[torch.from_numpy(is_artist)]
    flat = artist.mean(dim=(2, 3), keepdim=True).expand_as(artist).clone()
    with torch.no_grad():
        swapped = judge.artist_score(artist[:, [2, 0, 1]])
        blobs = judge.artist_score(flat + 0.01 * torch.randn(flat.shape, generator=torch.Generator().manual_seed(0)))
    assert float(swapped.mean()) > 0.5 > float(blobs.mean())


def test_save_load_round_trip_and_refusals(judge, tmp_path):
    judge.save(tmp_path / "j")
    again = StructureJudge.load(tmp_path / "j")
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(again.probabilities(x), judge.probabilities(x))
    config = json.loads((tmp_path / "j" / "config.json").read_text())
    (tmp_path / "j" / "config.json").write_text(json.dumps({**config, "judge_version": 0}))
    with pytest.raises(ModelLoadError, match="version"):
        StructureJudge.load(tmp_path / "j")
    with pytest.raises(ModelNotFoundError, match="structure judge"):
        StructureJudge.load(tmp_path / "missing")


def test_training_runs_and_says_what_it_did():
    small = train_judge(n_per_style=2, epochs=1, batch_size=8, seed=3)
    assert small.info["n_per_style"] == 2 and 0.0 <= small.info["train_accuracy_clean"] <= 1.0
    assert not small.training


def test_the_harness_scores_with_both_judges(judge, renders):
    x, _ = renders
    images = list(x[:3])
    scorer = Scorer(images, style_metric=None, use_clip=False, judge=judge)
    scores = scorer.item_scores(MimicryOutput(images, [""] * 3, ["a", "b", "c"]), None)
    assert scores["structure_score"].shape == (3,) and "artist_score" not in scores
    assert "structure_score" not in Scorer(images, use_clip=False).item_scores(MimicryOutput(images, [""] * 3, ["a", "b", "c"]), None)
