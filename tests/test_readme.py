"""The README opens with exactly two set-up commands, and CI runs the second one verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    head = text.split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", head)


def test_readme_opens_with_two_commands_main_job_then_tests():
    commands = setup_commands()
    assert len(commands) == 2
    assert "protect examples/painting.png" in commands[0] and "--model demo" in commands[0]
    assert "pytest" in commands[1]
    assert (ROOT / "examples" / "painting.png").is_file()


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text()
    match = re.search(r"TEST_COMMAND='(.+)'", ci)
    assert match and match.group(1) == setup_commands()[1]
