"""The default model: a complete SD checkpoint from the local Hugging Face cache, else the demo model with
a warning. Discovery only reads a fake cache folder laid out as the hub client lays it out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from artshield.models.defaults import (
    INPAINTING_REPOS,
    REQUIRED_FILES,
    TEXT_TO_IMAGE_REPOS,
    cached_snapshot,
    choose_default_model,
    hub_cache_dir,
)


def fake_snapshot(cache: Path, repo_id: str, revision: str = "0123456789abcdef", *, skip: str | None = None,
                  main: bool = True) -> Path:
    """A cache entry with every required file (empty placeholders, JSON where JSON is expected)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    folder = repo / "snapshots" / revision
    for name in REQUIRED_FILES:
        if name == skip:
            continue
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}) if name.endswith(".json") else "")
    if main:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(revision)
    return folder


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "hub"
    folder.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(folder))
    return folder


def test_empty_cache_gives_the_demo_model_with_a_warning(cache):
    choice = choose_default_model()
    assert choice.is_demo and choice.spec == "demo"
    assert "does NOT protect against real mimicry" in choice.notice and "hf download" in choice.notice
    inpaint = choose_default_model(inpainting=True)
    assert inpaint.is_demo and inpaint.spec == "demo-inpaint" and "stable-diffusion-inpainting" in inpaint.notice


def test_a_complete_cached_checkpoint_is_chosen_and_named(cache):
    folder = fake_snapshot(cache, "stabilityai/stable-diffusion-2-1-base")
    choice = choose_default_model()
    assert not choice.is_demo
    assert choice.name == "stabilityai/stable-diffusion-2-1-base" and Path(choice.spec) == folder
    assert "stabilityai/stable-diffusion-2-1-base" in choice.notice
    # SD 1.5 comes first when both are there.
    fake_snapshot(cache, TEXT_TO_IMAGE_REPOS[0])
    assert choose_default_model().name == TEXT_TO_IMAGE_REPOS[0]
    # A text-to-image checkpoint is not an inpainting one.
    assert choose_default_model(inpainting=True).is_demo
    fake_snapshot(cache, INPAINTING_REPOS[1])
    assert choose_default_model(inpainting=True).name == INPAINTING_REPOS[1]


def test_partial_downloads_are_ignored(cache):
    fake_snapshot(cache, TEXT_TO_IMAGE_REPOS[0], skip="unet/diffusion_pytorch_model.safetensors")
    assert cached_snapshot(TEXT_TO_IMAGE_REPOS[0]) is None
    assert choose_default_model().is_demo


def test_a_snapshot_without_refs_main_still_counts(cache):
    folder = fake_snapshot(cache, TEXT_TO_IMAGE_REPOS[1], main=False)
    assert cached_snapshot(TEXT_TO_IMAGE_REPOS[1]) == folder


def test_cache_location_follows_the_environment(tmp_path, monkeypatch):
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub_cache_dir() == tmp_path / "home" / "hub"
    fake_snapshot(tmp_path / "home" / "hub", TEXT_TO_IMAGE_REPOS[0])
    assert not choose_default_model().is_demo
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert hub_cache_dir() == tmp_path / "elsewhere"
    assert choose_default_model().is_demo
