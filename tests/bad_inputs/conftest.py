"""The bad-input catalogue: each case runs one of the five tools (``protect``, ``artshield purify``,
``artshield evaluate``, ``artshield memorization``, ``artshield finetune``) in-process on a bad or awkward
input and asserts what a user must get: the exit status, exactly one line on stderr naming the culprit,
every file that existed before byte-identical, and no new file (partial output, temporary file) left.

Argument errors must be caught before a model loads, so these cases are fast.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from artshield.cli import main as artshield_main
from artshield.protect.cli import main as protect_main


@dataclass
class Outcome:
    status: int
    stdout: str
    stderr: str


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under `root`: relative path -> SHA-256 of its bytes ("dir" for folders)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.relpath(os.path.join(folder, name), root)] = "dir"
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as fh:
                found[os.path.relpath(path, root)] = hashlib.sha256(fh.read()).hexdigest()
    return found


def run_tool(argv: list[str]) -> int:
    """``protect ...`` runs the protect command; anything else is an ``artshield`` subcommand."""
    if argv and argv[0] == "protect":
        return protect_main(argv[1:])
    return artshield_main(argv)


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a model is loaded: argument and path errors must be caught before that."""
    import artshield.models

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(artshield.models, "load", forbidden)


@pytest.fixture
def refused(tmp_path, capsys, monkeypatch):
    """``refused(argv, *names, status=2)``: run the tool in `tmp_path` and assert a clean refusal."""
    monkeypatch.chdir(tmp_path)

    def check(argv: list[str], *names: str, status: int = 2, new_files: bool = False) -> Outcome:
        before = snapshot(tmp_path)
        capsys.readouterr()
        try:
            code = run_tool([str(a) for a in argv])
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == status, f"exit status {code}, expected {status}; stderr:\n{err}"
        assert "Traceback" not in err, err
        assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
        for name in names:
            assert str(name) in lines[0], f"{name!r} not named in: {lines[0]}"
        after = snapshot(tmp_path)
        changed = [p for p, digest in before.items() if after.get(p) != digest]
        assert not changed, f"pre-existing files changed or removed: {changed}"
        if not new_files:
            added = sorted(set(after) - set(before))
            assert not added, f"files left behind: {added}"
        return Outcome(code, out, lines[0])

    return check
