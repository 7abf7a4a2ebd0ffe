"""Bad model files through a command: each refused with one line naming the file, nothing left behind."""

from __future__ import annotations

import os

from PIL import Image


def test_garbage_ckpt_with_trust_pickle(refused, tmp_path):
    """A corrupt pickle, even when pickles are trusted, is one line naming it, and never torch's advice to
    re-run torch.load with weights_only=False."""
    Image.new("RGB", (32, 32), (120, 40, 200)).save(tmp_path / "art.png")
    (tmp_path / "garbage.ckpt").write_bytes(b"\x80\x02" + os.urandom(2048))
    outcome = refused(["protect", "art.png", "--model", "garbage.ckpt", "--trust-pickle"],
                      "garbage.ckpt", "truncated or corrupt")
    assert "weights_only" not in outcome.stderr and "trusted source" not in outcome.stderr


def test_ckpt_without_trust_pickle(refused, tmp_path):
    Image.new("RGB", (32, 32), (120, 40, 200)).save(tmp_path / "art.png")
    (tmp_path / "model.ckpt").write_bytes(b"\x80\x02" + os.urandom(64))
    refused(["protect", "art.png", "--model", "model.ckpt"], "model.ckpt", "--trust-pickle")
