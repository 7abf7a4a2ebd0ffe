"""The lock: every install uses constraints.txt, which pins the whole tree exactly and honours pyproject's
ranges; an incompatible transformers/peft pair is one named error, before any work."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

from artshield import compat
from artshield.errors import DependencyError

ROOT = Path(__file__).resolve().parents[1]


def pins() -> dict[str, str]:
    found = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep, f"constraints.txt line {line!r} is not an exact pin"
        found[re.sub(r"[-_.]+", "-", name).lower()] = version
    return found


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        listed += extra
    return [Requirement(r) for r in listed]


def test_every_requirement_is_pinned_within_its_range():
    locked = pins()
    for requirement in requirements():
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in locked, f"{requirement.name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(locked[name], prereleases=True), (requirement, locked[name])


def test_readme_commands_and_ci_install_from_the_lock():
    readme = (ROOT / "README.md").read_text().split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.+?)\n```", readme)
    assert all("-c constraints.txt" in c for c in commands)
    assert "-c constraints.txt" in (ROOT / ".ci" / "run").read_text()
    assert (ROOT / "scripts" / "refresh_constraints.sh").is_file()


def test_installed_lora_stack_is_compatible():
    compat.check_lora_stack()  # the locked set must pass its own check


def test_incompatible_peft_is_one_named_error(monkeypatch):
    real = compat.installed_version
    monkeypatch.setattr(compat, "required_peft", lambda library: "99.0.0" if library == "transformers" else None)
    monkeypatch.setattr(compat, "installed_version", lambda d: "0.21.2" if d == "peft" else real(d))
    with pytest.raises(DependencyError) as info:
        compat.check_lora_stack()
    message = str(info.value)
    assert "peft >= 99.0.0" in message and "peft 0.21.2" in message and "transformers" in message
    assert "constraints.txt" in message and "\n" not in message
    compat.check_lora_stack(text_encoder=False)  # diffusers alone is satisfied


def test_missing_peft_is_named(monkeypatch):
    monkeypatch.setattr(compat, "installed_version", lambda d: None)
    with pytest.raises(DependencyError, match="peft package, which is not installed"):
        compat.check_lora_stack()
