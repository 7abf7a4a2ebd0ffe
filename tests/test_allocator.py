"""keep_freed_memory: glibc keeps large freed blocks for reuse instead of unmapping them (checked in fresh
subprocesses: the setting is process-wide and the test process keeps glibc's defaults)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import sys
from artshield.allocator import keep_freed_memory
applied = keep_freed_memory()
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
import torch
before = rss_mb()
block = torch.ones(64 * 2**20, dtype=torch.float32)  # 256 MB, far above glibc's 32 MB mmap threshold
del block
print(applied, round(rss_mb() - before))
"""


def _run(setting: str) -> tuple[bool, int]:
    env = {**os.environ, "ARTSHIELD_MALLOC": setting}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
    applied, kept = out.stdout.split()
    return applied == "True", int(kept)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_freed_large_blocks_stay_for_reuse_only_when_tuned():
    applied, kept = _run("keep")
    assert applied and kept > 200  # the 256 MB stayed resident, ready for the next step
    applied, kept = _run("default")
    assert not applied and kept < 50  # glibc's default: unmapped at once


def test_commands_apply_it(monkeypatch):
    from artshield import cli_support

    calls = []
    monkeypatch.setattr(cli_support, "keep_freed_memory", lambda: calls.append(1) or True)
    parser = cli_support.ArgumentParser(prog="x")
    assert cli_support.run_cli("x", parser, [], lambda args: 0) == 0
    assert calls == [1]
