"""Bad inputs to ``artshield fl leak`` and to a [leakage] table: an unknown attack or label strategy, a batch the
label strategy cannot handle, a batch larger than a client's data, a client that does not exist, an impossible
kind of update, a missing attack — each refused with exit status 2, one line naming the culprit, and nothing
written, before any attack runs."""

from __future__ import annotations

import sys
import types

import pytest

from artshield.fl_bridge.federation import run_federation as REAL_RUN_FEDERATION

GOOD = """
[task]
name = "digits"
[federation]
clients = 4
rounds = 2
[training]
batch_size = 8
"""
LEAKAGE = """
[leakage]
attack = "ig"
labels = "zero-shot"
clients = [1]
batch_size = 4
"""


@pytest.fixture(autouse=True)
def no_attack(monkeypatch):
    """Running an attack or a federation fails the test: every case must be refused before."""

    def forbidden(*args, **kwargs):
        raise AssertionError("an attack ran before the arguments were checked")

    for name in ("observe", "labels", "inversion", "assess"):
        module = types.ModuleType(f"artshield.fl_bridge.leakage.{name}")
        module.observation_from_delta = module.recover_labels = module.reconstruct = module.assess = forbidden
        monkeypatch.setitem(sys.modules, module.__name__, module)
    import artshield.fl_bridge.federation as federation

    monkeypatch.setattr(federation, "run_federation", forbidden)


def write(tmp_path, text: str, name: str = "exp.toml") -> str:
    (tmp_path / name).write_text(text)
    return name


def test_unknown_attack_option(refused, tmp_path):
    name = write(tmp_path, GOOD)
    refused(["fl", "leak", name, "--attack", "dlgg", "--labels", "known"], "--attack", "dlgg")


def test_unknown_labels_option(refused, tmp_path):
    name = write(tmp_path, GOOD)
    refused(["fl", "leak", name, "--attack", "ig", "--labels", "zeroshot"], "--labels", "zeroshot")


def test_unknown_attack_in_the_file(refused, tmp_path):
    name = write(tmp_path, GOOD + LEAKAGE.replace('"ig"', '"inverting"'))
    refused(["fl", "leak", name], f"{name}: [leakage] attack", "'inverting'")


def test_no_attack_anywhere(refused, tmp_path):
    name = write(tmp_path, GOOD)
    refused(["fl", "leak", name, "--labels", "known"], "--attack is missing", "no [leakage] attack")


def test_idlg_labels_with_a_batch(refused, tmp_path):
    name = write(tmp_path, GOOD)
    refused(["fl", "leak", name, "--attack", "idlg", "--labels", "idlg", "--batch-size", "4"],
            "--labels 'idlg' recovers a single label", "--batch-size = 1, got 4")


def test_joint_labels_with_idlg(refused, tmp_path):
    name = write(tmp_path, GOOD + LEAKAGE)
    refused(["fl", "leak", name, "--labels", "joint", "--attack", "idlg"], "--labels 'joint'",
            "does not go with --attack 'idlg'")


def test_analytic_labels_with_more_samples_than_classes(refused, tmp_path):
    name = write(tmp_path, GOOD + LEAKAGE)
    refused(["fl", "leak", name, "--labels", "analytic", "--batch-size", "11", "--kind", "fedavg"],
            "labels 'analytic' assumes distinct labels", "batch_size 11", "10 classes")


def test_batch_larger_than_the_clients_data(refused, tmp_path):
    name = write(tmp_path, GOOD + LEAKAGE)
    refused(["fl", "leak", name, "--batch-size", "5000", "--kind", "fedavg"], "[leakage] batch_size 5000",
            "larger than client 1's data", "--batch-size")


def test_batch_larger_than_the_clients_data_in_fl_run(refused, tmp_path, monkeypatch):
    """In a federation the attacked clients' data is cut to the batch before the first round: refused there."""
    import artshield.fl_bridge.federation as federation

    monkeypatch.setattr(federation, "run_federation", REAL_RUN_FEDERATION)
    name = write(tmp_path, GOOD + LEAKAGE.replace("batch_size = 4", "batch_size = 900\nkind = \"fedavg\""))
    refused(["fl", "run", name, "-q"], "[leakage] batch_size 900 is larger than client 1's data (359 samples)")


def test_a_client_that_does_not_exist(refused, tmp_path):
    name = write(tmp_path, GOOD)
    refused(["fl", "leak", name, "--attack", "ig", "--labels", "known", "--clients", "0,9"], "--clients",
            "partition ids in [0, 3], got 9")


def test_too_many_clients_by_count(refused, tmp_path):
    name = write(tmp_path, GOOD)
    refused(["fl", "leak", name, "--attack", "ig", "--labels", "known", "--clients", "5"], "--clients",
            "count must be in [1, 4]")


def test_malformed_clients(refused, tmp_path):
    name = write(tmp_path, GOOD)
    refused(["fl", "leak", name, "--attack", "ig", "--labels", "known", "--clients", "a,b"], "--clients", "'a,b'")


def test_fedsgd_with_several_local_steps(refused, tmp_path):
    name = write(tmp_path, GOOD)
    refused(["fl", "leak", name, "--attack", "ig", "--labels", "known", "--batch-size", "16", "--kind", "fedsgd"],
            "--kind 'fedsgd' needs one local step", "2 steps")


@pytest.mark.parametrize("option, value", [("--steps", "0"), ("--batch-size", "-1"), ("--restarts", "x"),
                                           ("--rounds-before", "-2"), ("--kind", "fedprox")])
def test_bad_numbers_and_kinds(refused, tmp_path, option, value):
    name = write(tmp_path, GOOD)
    refused(["fl", "leak", name, "--attack", "ig", "--labels", "known", option, value], option)


def test_output_is_the_experiment_file(refused, tmp_path):
    name = write(tmp_path, GOOD + LEAKAGE)
    refused(["fl", "leak", name, "-o", name], "--output", name)


def test_leak_json_would_overwrite_the_experiment_file(refused, tmp_path):
    (tmp_path / "out").mkdir()
    name = write(tmp_path, GOOD + LEAKAGE, "out/leak.json")
    refused(["fl", "leak", name, "-o", "out"], "leak.json", "would be overwritten")


def test_bad_leakage_field_in_fl_run(refused, tmp_path):
    name = write(tmp_path, GOOD + LEAKAGE.replace("clients = [1]", "clients = [1, 1]"))
    refused(["fl", "run", name], f"{name}: [leakage] clients names 1 twice")
