"""CGI-DM on tiny models: masks, the constrained recovery on the inversion engine, the contrast objective,
shared noise, and the feature space."""

from __future__ import annotations

import math

import pytest
import torch

from artshield.authenticate.cgidm import CGIDM, CGIDMConfig, latent_keep_mask
from artshield.authenticate.features import FeatureSpace, max_cosine, paired_cosine
from artshield.errors import InvalidArgumentError
from tiny_lora import local_lora


@pytest.fixture(scope="module")
def lora_file(tiny_model_dir, tmp_path_factory):
    """A LoRA written by the project's LocalTrainer: a few high-learning-rate steps on two images."""
    folder = tmp_path_factory.mktemp("lora")
    local_lora(tiny_model_dir, folder / "pytorch_lora_weights.safetensors", steps=3)
    return folder


@pytest.fixture(scope="module")
def pair(tiny_model_dir, lora_file):
    from artshield.authenticate.pair import ModelPair

    return ModelPair.load(str(tiny_model_dir), lora=lora_file, prompt="sks", device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def images(pair):
    side = pair.base.native_resolution
    return torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(0))


def test_checkerboard_keeps_exactly_half_in_2x2_cells():
    mask = latent_keep_mask((2, 4, 8, 8), "checkerboard", cell=2)
    assert mask.shape == (2, 1, 8, 8) and mask.mean() == 0.5
    block = mask[0, 0, :4, :4]
    # Revelio: in every 4x4 block the top-left and bottom-right 2x2 cells are kept.
    assert block[:2, :2].eq(1).all() and block[2:, 2:].eq(1).all()
    assert block[:2, 2:].eq(0).all() and block[2:, :2].eq(0).all()


def test_blocks_mask_is_seeded_cellwise_and_never_trivial():
    a = latent_keep_mask((3, 4, 8, 8), "blocks", keep=0.3, cell=2, seed=1)
    b = latent_keep_mask((3, 4, 8, 8), "blocks", keep=0.3, cell=2, seed=1)
    assert torch.equal(a, b)
    cells = a[:, 0, ::2, ::2]
    assert torch.equal(a[:, 0], cells.repeat_interleave(2, 1).repeat_interleave(2, 2))  # constant per cell
    assert all(0 < float(m.mean()) < 1 for m in a)
    assert latent_keep_mask((1, 4, 8, 8), "blur").sum() == 0


def test_config_scales_revelio_budget_and_refuses_bad_values():
    eps, step = CGIDMConfig().scaled(4 * 64 * 64)
    assert (eps, step) == (70.0, 2.0)
    eps, step = CGIDMConfig().scaled(4 * 16 * 16)
    assert math.isclose(eps, 70 / 4) and math.isclose(step, 0.5)
    with pytest.raises(InvalidArgumentError, match="mask"):
        CGIDMConfig(mask="stripes")
    with pytest.raises(InvalidArgumentError, match="keep"):
        CGIDMConfig(keep=1.0)


def test_recovery_moves_only_removed_cells_within_the_l2_budget(pair, images):
    method = CGIDM(pair, steps=4, eps=0.5, step_size=0.3, seed=0)
    rec = method.recover(images)
    start, contrast, base = rec.latents["start"], rec.latents["contrast"], rec.latents["base"]
    keep = rec.keep_mask.expand_as(start).bool()
    for moved in (contrast, base):
        assert torch.equal(moved[keep], start[keep])  # pinned cells exactly
        assert (moved - start)[~keep].abs().max() > 0  # free cells did move
        assert ((moved - start).flatten(1).norm(dim=1) <= 0.5 + 1e-4).all()
    # The kept cells are the original latent, the start is not (it was re-encoded from the degraded image).
    assert torch.allclose(start[keep], rec.latents["original"][keep])
    for view in (rec.degraded, rec.base, rec.contrast):
        assert view.shape == images.shape and 0 <= view.min() and view.max() <= 1
    assert len(rec.contrast_losses) == 4 and rec.moved[0] <= 0.5 + 1e-4


def test_contrast_objective_increases(pair, images):
    """Several timesteps per step and a fixed evaluation draw: the objective at the end beats the start."""
    method = CGIDM(pair, steps=20, eps=2.0, step_size=0.2, timesteps_per_step=8, seed=0)
    rec = method.recover(images, base=False)

    def objective(latents):
        gen = torch.Generator().manual_seed(123)
        with torch.no_grad():
            return float(sum(method.contrast_loss(latents, gen).mean() for _ in range(16)))  # same draws for both

    assert objective(rec.latents["contrast"]) > objective(rec.latents["start"])


def test_shared_noise_reduces_gradient_variance_and_separate_noise_runs(pair, images):
    # Over the whole schedule the variance is dominated by which timesteps were drawn, and 6 draws cannot see
    # past it (the ratio swung 0.4-5 with the seed on this tiny pair); over a band of timesteps the noise is
    # what varies, and sharing it cancels most of the contrast's variance (ratio 1.6-6.5 over seeds 0-3).
    for seed in (0, 1):
        stats = CGIDM(pair, seed=seed, t_min=100, t_max=300).gradient_variance(images[:1], draws=6)
        assert stats["shared"] > 0 and stats["separate"] > 0
        assert stats["ratio"] > 1.0, stats
    rec = CGIDM(pair, steps=2, eps=0.5, step_size=0.3, shared_noise=False).recover(images[:1], base=False)
    assert rec.contrast.shape == images[:1].shape


def test_blur_mask_degrades_whole_image_and_frees_everything(pair, images):
    rec = CGIDM(pair, mask="blur", steps=1, eps=0.5, step_size=0.3).recover(images[:1], base=False)
    assert rec.keep_mask.sum() == 0
    assert not torch.equal(rec.latents["contrast"], rec.latents["start"])


def test_dct_features_tell_images_apart_and_score_both_ways(images):
    space = FeatureSpace("dct")
    assert space.name == "dct"
    a = space.embed(images)
    assert torch.allclose(a.norm(dim=1), torch.ones(2))
    same = paired_cosine(a, a)
    assert torch.allclose(same, torch.ones(2), atol=1e-5)
    noisy = space.embed((images + 0.02 * torch.randn_like(images)).clamp(0, 1))
    swapped = paired_cosine(noisy.flip(0), a)
    assert (paired_cosine(noisy, a) > swapped).all()
    assert torch.allclose(max_cosine(noisy, a), paired_cosine(noisy, a))


def _recovery(original, start, contrast, keep):
    from artshield.authenticate.cgidm import Recovery

    blank = torch.zeros(original.shape[0], 3, 8, 8)
    latents = {"original": original, "start": start, "contrast": contrast, "base": start.clone()}
    return Recovery(original=blank, degraded=blank, contrast=blank, base=blank, keep_mask=keep, latents=latents)


def test_latent_scores_measure_the_removed_cells_only_and_against_the_start():
    gen = torch.Generator().manual_seed(0)
    original = torch.randn(3, 4, 8, 8, generator=gen)
    keep = latent_keep_mask((3, 4, 8, 8), "checkerboard", cell=2)
    start = original * keep + torch.randn(3, 4, 8, 8, generator=gen) * (1 - keep)
    # image 0 recovered exactly, image 1 not moved, image 2 moved away from the original
    contrast = torch.stack([original[0], start[1], start[2] + 0.5 * (start[2] - original[2])])
    scores = _recovery(original, start, contrast, keep).latent_scores()
    d_start = ((start - original) * (1 - keep)).flatten(1).norm(dim=1)
    gain, align = scores["latent-gain"], scores["latent-align"]
    assert math.isclose(gain[0], float(d_start[0]), rel_tol=1e-5) and math.isclose(align[0], 1.0, rel_tol=1e-5)
    assert gain[1] == 0.0 and align[1] == 0.0
    assert math.isclose(gain[2], -0.5 * float(d_start[2]), rel_tol=1e-4) and math.isclose(align[2], -1.0, rel_tol=1e-5)
    # The kept (pinned) cells do not count: changing the original there changes nothing.
    shifted = original + 10 * keep
    again = _recovery(shifted, start, contrast, keep).latent_scores()
    for name, values in scores.items():
        assert again[name] == pytest.approx(values)
    assert _recovery(original, start, contrast, keep).latent_scores("base")["latent-gain"] == [0.0, 0.0, 0.0]
    with pytest.raises(InvalidArgumentError, match="which"):
        _recovery(original, start, contrast, keep).latent_scores("suspect")


def test_latent_scores_of_a_real_recovery(pair, images):
    rec = CGIDM(pair, steps=3, eps=0.5, step_size=0.3, t_max=200, seed=0).recover(images, base=False)
    scores = rec.latent_scores()
    assert set(scores) == {"latent-gain", "latent-align"}
    assert all(len(v) == 2 and all(math.isfinite(x) for x in v) for v in scores.values())
    assert all(-1.0 - 1e-6 <= x <= 1.0 + 1e-6 for x in scores["latent-align"])


def test_suspect_only_recovery_lowers_the_suspect_loss_and_is_scored(pair, images):
    method = CGIDM(pair, steps=15, eps=2.0, step_size=0.3, timesteps_per_step=4, t_max=200, seed=0)
    rec = method.recover(images, base=False, suspect=True)
    start, moved = rec.latents["start"], rec.latents["suspect"]
    keep = rec.keep_mask.expand_as(start).bool()
    assert torch.equal(moved[keep], start[keep]) and (moved - start)[~keep].abs().max() > 0
    assert ((moved - start).flatten(1).norm(dim=1) <= 2.0 + 1e-4).all()
    assert rec.suspect_image.shape == images.shape and len(rec.suspect_losses) == 15

    def suspect_loss(latents):
        gen = torch.Generator().manual_seed(5)
        with torch.no_grad():
            return float(sum(method.model_loss(latents, gen, "suspect").mean() for _ in range(16)))

    assert suspect_loss(moved) < suspect_loss(start)
    assert len(rec.latent_scores("suspect")["latent-align"]) == 2
    plain = method.recover(images[:1], base=False)
    assert plain.suspect_image is None and "suspect" not in plain.latents
    with pytest.raises(InvalidArgumentError, match="which"):
        method.model_loss(start, torch.Generator(), "other")
