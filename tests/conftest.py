"""Shared fixtures: offline, CPU, tiny models built from configs (never downloaded)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models gain nothing from intra-op threads, and spinning OpenMP workers slow them down by an order
# of magnitude whenever the machine is busy; subprocesses inherit this too.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Hundreds of commands run in this one process: it keeps glibc malloc's defaults (tests/test_allocator.py checks
# the tuning the commands apply, in a subprocess).
os.environ.setdefault("ARTSHIELD_MALLOC", "default")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from artshield.models.demo.tokenizer import build_tokenizer

    return build_tokenizer(["a painting of a circle", "a photo of a house"], vocab_size=600, model_max_length=16)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A random-weight tiny Stable Diffusion saved in the diffusers folder layout."""
    from artshield.models.demo.architecture import build_components, save_components

    folder = tmp_path_factory.mktemp("tiny-sd")
    save_components(build_components("tiny", tiny_tokenizer, seed=0), str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_inpaint_dir(tmp_path_factory, tiny_tokenizer):
    """A random-weight tiny 9-channel inpainting model in the diffusers folder layout."""
    from artshield.models.demo.architecture import build_components, save_components

    folder = tmp_path_factory.mktemp("tiny-sd-inpaint")
    save_components(build_components("tiny", tiny_tokenizer, seed=1, inpainting=True), str(folder), inpainting=True)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    """The tiny model loaded through the public loader, on the CPU in fp32."""
    from artshield.models import load

    return load(str(tiny_model_dir), device="cpu", dtype="fp32")
