"""The one CLIP loader (artshield.models.clip) and its three users, under a controlled Hugging Face cache.

Every test points the hub cache at a temporary folder, so the outcome is the same on a machine that has real
CLIP weights cached and on one that has none. Weights "present" are a tiny open_clip architecture (a model
config written to a temporary file) saved as safetensors / a state dict; downloads are made to fail loudly.
"""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from PIL import Image

open_clip = pytest.importorskip("open_clip")

from artshield.models import clip as C  # noqa: E402

TINY = "artshield-tiny-clip"
OTHER = "artshield-tiny-clip-wide"
REPO = "artshield-test/tiny-clip"
TAG = "tinytag"


def _config(width: int) -> dict:
    return {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": width, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": width, "heads": 2, "layers": 1},
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(open_clip model, its safetensors file, its .bin state dict) of a tiny registered architecture."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("tiny_clip")
    for name, width in ((TINY, 32), (OTHER, 48)):
        (root / f"{name}.json").write_text(json.dumps(_config(width)))
        open_clip.add_model_config(root / f"{name}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(TINY).eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(root / "tiny.safetensors"))
    torch.save(state, root / "tiny.bin")
    return model, root / "tiny.safetensors", root / "tiny.bin"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache, a registry entry mapping (TINY, TAG) to REPO, and no way to download."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    real = C.pretrained_config
    monkeypatch.setattr(C, "pretrained_config",
                        lambda arch, tag: {"hf_hub": f"{REPO}/"} if (arch, tag) == (TINY, TAG) else real(arch, tag))

    def no_download(*args, **kwargs):
        raise AssertionError("artshield must never download CLIP weights")

    import open_clip.pretrained as registry

    monkeypatch.setattr(registry, "hf_hub_download", no_download, raising=False)
    monkeypatch.setattr(registry, "download_pretrained_from_url", no_download)
    return cache


def put_in_cache(cache, source, filename: str, repo: str = REPO, revision: str = "0" * 40):
    """Lay `source` out as the hub client would have downloaded it."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(revision)
    snapshot = folder / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot / filename).write_bytes(source.read_bytes())
    return snapshot / filename


def same_text_embedding(loaded: C.ClipModel, model) -> bool:
    tokens = loaded.tokenizer(["a tree in ink style"])
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.encode_text(tokens).float(), dim=-1)
    return torch.allclose(loaded.embed_text(["a tree in ink style"]), expected, atol=1e-5)


# ------------------------------------------------------------------------------------------------ the loader
def test_weights_absent_from_the_cache_give_none_and_a_reason(hub):
    for arch, tag in ((TINY, TAG), ("ViT-B-32", "laion2b_s34b_b79k")):
        clip, reason = C.load_clip(arch, tag)
        assert clip is None and "not on disk" in reason and str(hub) in reason, reason
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in reason and "Hugging Face cache" in reason
    clip, reason = C.load_clip("ViT-B-32", "no-such-tag")
    assert clip is None and "not an open_clip" in reason


def test_weights_in_the_cache_load_and_safetensors_are_preferred(hub, tiny):
    model, safetensors_file, bin_file = tiny
    cached_bin = put_in_cache(hub, bin_file, "open_clip_pytorch_model.bin")
    clip, reason = C.load_clip(TINY, TAG)
    assert reason is None and clip.path == cached_bin  # only the state dict is there: read with weights_only
    cached = put_in_cache(hub, safetensors_file, "open_clip_model.safetensors")
    clip, reason = C.load_clip(TINY, TAG)
    assert reason is None and clip.path == cached and clip.describe() == f"{TINY} (open_clip_model.safetensors)"
    assert same_text_embedding(clip, model)
    images = torch.rand(2, 3, 40, 24)
    assert clip.embed_images(images).shape == (2, 16)
    assert torch.allclose(clip.embed_images(images).norm(dim=-1), torch.ones(2), atol=1e-5)
    # A greyscale batch is embedded as its RGB copy.
    grey = torch.rand(1, 1, 32, 32)
    assert torch.allclose(clip.embed_images(grey), clip.embed_images(grey.expand(-1, 3, -1, -1)), atol=1e-6)


def test_weight_files_given_directly(hub, tiny, tmp_path):
    model, safetensors_file, bin_file = tiny
    for path in (safetensors_file, bin_file):
        clip, reason = C.load_clip(TINY, str(path))
        assert reason is None and clip.path == path and same_text_embedding(clip, model)
    clip, reason = C.load_clip(TINY, str(tmp_path / "missing.safetensors"))
    assert clip is None and "no such file" in reason
    # A state dict of another architecture: a reason, not a crash.
    clip, reason = C.load_clip(OTHER, str(safetensors_file))
    assert clip is None and "failed" in reason and OTHER in reason


class Payload:
    """Anything a plain pickle could rebuild (and run code while doing so)."""


def test_pickles_are_never_loaded(hub, tiny, tmp_path):
    _, _, bin_file = tiny
    evil = tmp_path / "evil.bin"
    torch.save({"state": torch.load(bin_file, weights_only=True), "payload": Payload()}, evil)
    clip, reason = C.load_clip(TINY, str(evil))
    assert clip is None and "weights_only" in reason and "pickles are not loaded" in reason
    other = tmp_path / "weights.pkl"
    other.write_bytes(pickle.dumps({"a": 1}))
    clip, reason = C.load_clip(TINY, str(other))
    assert clip is None and "neither .safetensors" in reason
    # The same file reached through the cache is refused the same way.
    put_in_cache(hub, evil, "open_clip_pytorch_model.bin")
    clip, reason = C.load_clip(TINY, TAG)
    assert clip is None and "weights_only" in reason


# ------------------------------------------------------------------------------------------------ its users
def test_clip_score_follows_the_cache(hub, tiny, monkeypatch):
    from artshield.evaluate.clip_score import clip_score, clip_unavailable_reason

    images = torch.rand(2, 3, 32, 32)
    assert clip_score(images, ["a", "b"], TINY, TAG) is None
    assert clip_unavailable_reason(TINY, TAG).startswith("CLIP score is unavailable: ")
    filled = hub.parent / "filled"
    put_in_cache(filled, tiny[1], "open_clip_model.safetensors")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(filled))
    assert clip_unavailable_reason(TINY, TAG) is None
    score = clip_score(images, ["a tree", "a house"], TINY, TAG)
    assert score.shape == (2,) and bool(((score >= 0) & (score <= 100)).all())


def test_monitor_clip_i_present_and_absent(hub, tiny, tmp_path):
    from artshield.finetune.monitor import FidelityMonitor

    rng = torch.Generator().manual_seed(0)
    refs = [Image.fromarray((torch.rand(32, 32, 3, generator=rng) * 255).byte().numpy()) for _ in range(2)]
    monitor = FidelityMonitor(tmp_path / "a", reference_images=refs, clip_model=TINY, clip_pretrained=TAG,
                              use_lpips=False)
    assert "not on disk" in monitor.unavailable["clip_i"]
    assert "clip_i" not in monitor.scores(refs)
    monitor = FidelityMonitor(tmp_path / "b", reference_images=refs, clip_model=TINY,
                              clip_pretrained=str(tiny[1]), use_lpips=False)
    assert "clip_i" not in monitor.unavailable
    same = monitor.scores(refs[:1] * 2)["clip_i"]
    # One generation identical to one of the two references: its mean cosine is (1 + cos(ref0, ref1)) / 2.
    embeddings = C.load_clip(TINY, str(tiny[1]))[0].embed_pil(refs)
    assert same == pytest.approx(float((1 + embeddings[0] @ embeddings[1]) / 2), abs=1e-4)


def test_memorization_clip_scorer(hub, tiny, tmp_path):
    from artshield.errors import ModelLoadError, ModelNotFoundError
    from artshield.finetune.memorization import ClipScorer

    scorer = ClipScorer(tiny[1], TINY)
    cosines = scorer(torch.rand(3, 3, 32, 32), ["a", "b", "c"])
    assert cosines.shape == (3,) and bool((cosines.abs() <= 1 + 1e-5).all())
    with pytest.raises(ModelNotFoundError):
        ClipScorer(tmp_path / "missing.safetensors", TINY)
    with pytest.raises(ModelLoadError, match="failed"):
        ClipScorer(tiny[1], OTHER)
