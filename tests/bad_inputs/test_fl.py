"""Bad inputs to ``artshield fl run|sweep|list``: a missing or malformed experiment file, a bad field, an unknown
attack or defense, an output folder that is (or would overwrite) the experiment file — each refused with exit
status 2, one line naming the culprit, and nothing written, before any federation runs."""

from __future__ import annotations

import pytest

from fl_fakes import install_registries

GOOD = """
[task]
name = "digits"
[federation]
clients = 10
rounds = 2
[attack]
name = "lie"
fraction = 0.2
[defense]
name = "median"
"""


@pytest.fixture(autouse=True)
def no_federation(monkeypatch):
    """Registries as fakes where the real ones are missing; running a federation fails the test."""
    import sys
    import types

    install_registries(monkeypatch)

    def forbidden(*args, **kwargs):
        raise AssertionError("a federation ran before the arguments were checked")

    fake = types.ModuleType("artshield.fl_bridge.federation")
    fake.run_federation = forbidden
    fake.FederationConfig = forbidden
    monkeypatch.setitem(sys.modules, "artshield.fl_bridge.federation", fake)


@pytest.fixture
def exp(tmp_path):
    (tmp_path / "exp.toml").write_text(GOOD)
    return "exp.toml"


def write(tmp_path, text: str, name: str = "bad.toml") -> str:
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text(text)
    return name


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_missing_experiment_file(refused, command):
    refused(["fl", command, "nowhere.toml", "--attacks", "lie", "--defenses", "fedavg"][: 3 if command == "run" else 7],
            "nowhere.toml", "no such experiment file")


def test_experiment_is_a_folder(refused, tmp_path):
    (tmp_path / "folder").mkdir()
    refused(["fl", "run", "folder"], "folder", "is a folder")


def test_bad_toml(refused, tmp_path):
    name = write(tmp_path, "[task\nname = 'digits'\n")
    refused(["fl", "run", name], name, "not valid TOML", "line 1")


def test_binary_file(refused, tmp_path):
    (tmp_path / "img.toml").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xff")
    refused(["fl", "run", "img.toml"], "img.toml", "not a text")


def test_unknown_attack(refused, tmp_path):
    name = write(tmp_path, GOOD.replace('name = "lie"', 'name = "lei"'))
    refused(["fl", "run", name], name, "[attack] name", "'lei'", "did you mean 'lie'")


def test_bad_fraction(refused, tmp_path):
    name = write(tmp_path, GOOD.replace("fraction = 0.2", "fraction = 1.5"))
    refused(["fl", "run", name], f"{name}: [attack] fraction must be in [0, 1), got 1.5")


def test_unknown_key(refused, tmp_path):
    name = write(tmp_path, GOOD.replace("rounds = 2", "rounds = 2\nround = 3"))
    refused(["fl", "run", name], "[federation] round", "did you mean 'rounds'")


def test_missing_task(refused, tmp_path):
    name = write(tmp_path, GOOD.replace('name = "digits"', 'root = "x"'))
    refused(["fl", "run", name], "[task] name is missing")


def test_bad_defense_parameter(refused, tmp_path):
    name = write(tmp_path, GOOD.replace('name = "median"', 'name = "median"\nbetta = 0.1'))
    refused(["fl", "run", name], "[defense]", "betta")


def test_output_folder_is_the_experiment_file(refused, exp):
    refused(["fl", "run", exp, "-o", exp], "--output", exp)


def test_output_folder_is_another_file(refused, exp, tmp_path):
    (tmp_path / "taken").write_text("keep me")
    refused(["fl", "sweep", exp, "--attacks", "lie", "--defenses", "fedavg", "-o", "taken"], "--output", "is a file")


def test_output_would_overwrite_the_experiment_file(refused, tmp_path):
    name = write(tmp_path, GOOD, "out/summary.json")
    refused(["fl", "run", name, "-o", "out"], "summary.json", "would be overwritten")


def test_output_under_a_file(refused, exp, tmp_path):
    (tmp_path / "plain").write_text("x")
    refused(["fl", "run", exp, "-o", "plain/sub"], "--output", "plain")


def test_unknown_engine(refused, exp):
    refused(["fl", "run", exp, "--engine", "spark"], "--engine", "spark")


def test_negative_seed(refused, exp):
    refused(["fl", "run", exp, "--seed", "-1"], "--seed")


def test_sweep_unknown_attack(refused, exp):
    refused(["fl", "sweep", exp, "--attacks", "lie,minmx", "--defenses", "fedavg"], "--attacks", "'minmx'",
            "did you mean 'minmax'")


def test_sweep_pill_of_an_unknown_base(refused, exp):
    refused(["fl", "sweep", exp, "--attacks", "pill+nothing", "--defenses", "fedavg"], "--attacks", "pill+nothing")


def test_sweep_unknown_defense(refused, exp):
    refused(["fl", "sweep", exp, "--attacks", "lie", "--defenses", "fedavg,krumm"], "--defenses", "'krumm'")


def test_sweep_repeated_defense(refused, exp):
    refused(["fl", "sweep", exp, "--attacks", "lie", "--defenses", "krum,krum"], "--defenses", "twice")


def test_sweep_bad_seeds(refused, exp):
    refused(["fl", "sweep", exp, "--attacks", "lie", "--defenses", "fedavg", "--seeds", "0,x"], "--seeds", "'x'")


def test_sweep_without_attacks(refused, exp):
    refused(["fl", "sweep", exp, "--defenses", "fedavg"], "--attacks", "[sweep]")


def test_sweep_with_too_few_clients_for_an_attacker(refused, tmp_path):
    name = write(tmp_path, GOOD.replace("clients = 10", "clients = 2").replace('name = "lie"\nfraction = 0.2\n',
                                                                            'name = "clean"\n'))
    refused(["fl", "sweep", name, "--attacks", "lie", "--defenses", "fedavg"], "--attacks", "no malicious client")


def test_no_subcommand(refused):
    refused(["fl"], "artshield fl")


def test_unknown_subcommand(refused):
    refused(["fl", "runn"], "runn")
