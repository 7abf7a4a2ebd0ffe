"""Experiment files: a valid file parses into the experiment it says; every bad field is one line naming the
file, the section and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from artshield.errors import InvalidArgumentError
from artshield.fl_bridge.experiment import CLEAN, Experiment, check_grid, load_experiment, parse_experiment
from fl_fakes import FakeFederation, install_registries

ROOT = Path(__file__).resolve().parents[1]

VALID = """
name = "unit"
[task]
name = "digits"
[partition]
scheme = "dirichlet"
alpha = 0.5
[federation]
clients = 10
fraction = 0.5
rounds = 3
seed = 4
[training]
epochs = 2
lr = 0.1
batch_size = 16
momentum = 0.9
[attack]
name = "lie"
fraction = 0.2
z = 1.5
[defense]
name = "trimmedmean"
beta = 0.2
[sweep]
attacks = ["clean", "lie", "pill+lie"]
defenses = ["fedavg", "median"]
seeds = [0, 1]
"""


@pytest.fixture(autouse=True)
def registries(monkeypatch):
    install_registries(monkeypatch)


def edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def test_a_valid_file_parses_into_what_it_says():
    exp = parse_experiment(VALID, source="unit.toml")
    assert (exp.task, exp.partition, exp.alpha, exp.clients, exp.fraction, exp.rounds, exp.seed, exp.engine) == (
        "digits", "dirichlet", 0.5, 10, 0.5, 3, 4, "inprocess")
    assert dict(exp.training) == {"epochs": 2, "lr": 0.1, "batch_size": 16, "momentum": 0.9, "weight_decay": 0.0}
    assert (exp.attack, exp.attack_fraction, dict(exp.attack_params)) == ("lie", 0.2, {"z": 1.5})
    assert (exp.defense, dict(exp.defense_params)) == ("trimmedmean", {"beta": 0.2})
    assert exp.num_malicious == 2 and exp.clients_per_round == 5 and exp.root_size == 100
    assert exp.sweep_attacks == ("clean", "lie", "pill+lie") and exp.sweep_seeds == (0, 1)


def test_defaults_and_a_clean_run():
    exp = parse_experiment('[task]\nname = "digits"\n[federation]\nclients = 4\nrounds = 1\n')
    assert exp.attack == CLEAN and exp.num_malicious == 0 and exp.defense == "fedavg"
    assert exp.partition == "iid" and exp.fraction == 1.0 and exp.training["lr"] == 0.05


def test_the_shipped_examples_parse():
    quick = load_experiment(ROOT / "examples/fl/quickstart.toml")
    assert (quick.task, quick.clients, quick.attack, quick.defense) == ("digits", 10, "lie", "median")
    proof = load_experiment(ROOT / "examples/fl/proof.toml")
    assert proof.task == "styles" and proof.clients >= 20 and proof.attack_fraction == 0.2
    assert (proof.partition, proof.alpha) == ("dirichlet", 0.5)
    assert len(proof.sweep_seeds) >= 3 and "pill+lie" in proof.sweep_attacks


def test_relative_task_root_is_taken_from_the_files_folder(tmp_path):
    path = tmp_path / "sub" / "e.toml"
    path.parent.mkdir()
    path.write_text('[task]\nname = "mnist"\nroot = "data"\n[federation]\nclients = 4\nrounds = 1\n')
    assert load_experiment(path).task_root == str(tmp_path / "sub" / "data")


@pytest.mark.parametrize(("old", "new", "named"), [
    ("fraction = 0.2", "fraction = 1.5", "[attack] fraction must be in [0, 1), got 1.5"),
    ("fraction = 0.2", "fraction = 0.01", "[attack] fraction"),
    ("fraction = 0.5", "fraction = 0", "[federation] fraction must be in (0, 1], got 0"),
    ("clients = 10", "clients = 1", "[federation] clients must be >= 2, got 1"),
    ("clients = 10", "clients = 10.5", "[federation] clients must be a whole number"),
    ("rounds = 3", "rounds = true", "[federation] rounds must be a whole number, got true (a boolean)"),
    ("rounds = 3", "", "[federation] rounds is missing"),
    ("seed = 4", "seed = -1", "[federation] seed must be >= 0"),
    ("seed = 4", 'engine = "spark"', "[federation] engine must be one of inprocess, ray, got 'spark'"),
    ("alpha = 0.5", "alpha = 0", "[partition] alpha must be > 0, got 0"),
    ("alpha = 0.5", "alpha = inf", "[partition] alpha must be a finite number"),
    ('scheme = "dirichlet"', 'scheme = "dirichlett"', "did you mean 'dirichlet'?"),
    ("lr = 0.1", "lr = -0.1", "[training] lr must be > 0"),
    ("lr = 0.1", 'lr = "fast"', "[training] lr must be a number, got 'fast'"),
    ("momentum = 0.9", "momentum = 1.0", "[training] momentum must be in [0, 1)"),
    ("batch_size = 16", "batch_size = 0", "[training] batch_size must be >= 1"),
    ("epochs = 2", "epoch = 2", "[training] epoch is not a known key; did you mean 'epochs'?"),
    ("clients = 10", "clients = 10\nclient_fraction = 1", "[federation] client_fraction is not a known key; did you mean 'fraction'?"),
    ('name = "unit"', 'nmae = "unit"', "nmae is not a known key; did you mean 'name'?"),
    ('name = "digits"', 'name = "digitz"', "[task] name 'digitz' is not a known task; did you mean 'digits'?"),
    ('name = "digits"', 'dataset = "digits"', "[task] dataset is not a known key"),
    ('name = "lie"', 'name = "lei"', "[attack] name 'lei' is not a known attack; did you mean 'lie'?"),
    ('name = "lie"', 'name = "pill+lie"', "[attack] name 'pill+lie': in a file write name = \"pill\""),
    ("z = 1.5", "zz = 1.5", "zz"),
    ('name = "trimmedmean"', 'name = "krun"', "[defense] name 'krun' is not a known defense; did you mean 'krum'?"),
    ("beta = 0.2", "beta = 0.7", "beta"),
    ('attacks = ["clean", "lie", "pill+lie"]', 'attacks = ["lie", "pill+lei"]', "[sweep]"),
    ("seeds = [0, 1]", 'seeds = ["a"]', "[sweep] seeds must be a non-empty list of whole numbers"),
    ("[training]", "[training]\nepochs = 1", "not valid TOML"),
])
def test_each_bad_field_is_one_line_naming_the_file_and_the_field(old, new, named):
    with pytest.raises(InvalidArgumentError) as caught:
        parse_experiment(edit(VALID, old, new), source="experiment.toml")
    message = str(caught.value)
    assert message.startswith("experiment.toml"), message
    assert named in message, message
    assert "\n" not in message


def test_a_section_that_is_not_a_table():
    with pytest.raises(InvalidArgumentError, match=r"^e.toml: \[task\] must be a table \(\[task\]\), got 'digits'"):
        parse_experiment({"task": "digits", "federation": {"clients": 4, "rounds": 1}}, source="e.toml")


def test_bad_attack_and_defense_parameters_name_the_section():
    with pytest.raises(InvalidArgumentError, match=r"^e.toml: \[attack\] .*zz"):
        parse_experiment(edit(VALID, "z = 1.5", "zz = 1.5"), source="e.toml")
    with pytest.raises(InvalidArgumentError, match=r"^e.toml: \[defense\] .*beta"):
        parse_experiment(edit(VALID, "beta = 0.2", "beta = 0.7"), source="e.toml")


def test_missing_unreadable_and_folder_files(tmp_path):
    with pytest.raises(InvalidArgumentError, match="nowhere.toml: no such experiment file"):
        load_experiment(tmp_path / "nowhere.toml")
    with pytest.raises(InvalidArgumentError, match="is a folder"):
        load_experiment(tmp_path)
    binary = tmp_path / "b.toml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(InvalidArgumentError, match="b.toml: not a text"):
        load_experiment(binary)


def test_cells_change_attack_defense_and_seed_and_keep_the_files_parameters():
    exp = parse_experiment(VALID)
    cell = exp.cell("lie", "trimmedmean", 7)
    assert (cell.attack, dict(cell.attack_params), dict(cell.defense_params), cell.seed) == ("lie", {"z": 1.5}, {"beta": 0.2}, 7)
    pill = exp.cell("pill+minmax", "median", 0)
    assert (pill.attack, dict(pill.attack_params), pill.label, dict(pill.defense_params)) == (
        "pill", {"base": "minmax"}, "pill+minmax", {})
    clean = exp.cell("clean", "fedavg", 0)
    assert clean.attack == CLEAN and clean.num_malicious == 0 and clean.attack_fraction == 0.0


def test_config_hash_follows_what_changes_the_result():
    exp = parse_experiment(VALID)
    assert exp.config_hash() == parse_experiment(VALID).config_hash()
    assert exp.config_hash() == exp.replace(name="other", engine="ray", description="x").config_hash()
    changed = [exp.replace(rounds=4), exp.replace(seed=5), exp.cell("lie", "median", 4),
               exp.replace(training={**exp.training, "lr": 0.2}), exp.replace(attack_params={"z": 1.0})]
    assert len({exp.config_hash(), *(e.config_hash() for e in changed)}) == 1 + len(changed)


def test_flowers_own_strategies_are_defenses():
    exp = parse_experiment(edit(VALID, 'name = "trimmedmean"\nbeta = 0.2', 'name = "flower-krum"\nnum_malicious_nodes = 2'))
    assert exp.defense == "flower-krum" and dict(exp.defense_params) == {"num_malicious_nodes": 2}
    with pytest.raises(InvalidArgumentError, match=r"^e.toml: \[defense\] .*'nodes'"):
        parse_experiment(edit(VALID, 'name = "trimmedmean"\nbeta = 0.2', 'name = "flower-krum"\nnodes = 2'),
                         source="e.toml")
    check_grid(exp, ["lie"], ["flower-median", "median"])


def test_platform_options_reach_the_config(monkeypatch):
    FakeFederation().install(monkeypatch)
    text = edit(VALID, "seed = 4", "seed = 4\nmax_update_norm = 50.0\nroot_size = 64\nray_num_cpus = 2")
    exp = parse_experiment(text)
    config = exp.federation_config()
    assert (config.max_update_norm, config.root_size, config.ray_num_cpus) == (50.0, 64, 2)
    assert exp.config_hash() != parse_experiment(VALID).config_hash()
    assert exp.config_hash() == exp.replace(ray_num_cpus=None).config_hash()
    with pytest.raises(InvalidArgumentError, match=r"\[federation\] root_size must be >= 1"):
        parse_experiment(edit(VALID, "seed = 4", "root_size = 0"))


def test_check_grid_names_the_option():
    exp = parse_experiment(VALID)
    check_grid(exp, ["clean", "lie", "pill+lie", "dba"], ["fedavg", "krum"])
    with pytest.raises(InvalidArgumentError, match=r"^--attacks: 'pill\+pill' is not a known attack"):
        check_grid(exp, ["pill+pill"], ["fedavg"])
    with pytest.raises(InvalidArgumentError, match=r"^--defenses: 'meadian' .*did you mean 'median'"):
        check_grid(exp, ["lie"], ["meadian"])
    tiny = exp.replace(clients=2)
    with pytest.raises(InvalidArgumentError, match="no malicious client"):
        check_grid(tiny, ["lie"], ["fedavg"])


def test_federation_config_carries_every_field(monkeypatch):
    FakeFederation().install(monkeypatch)
    config = parse_experiment(VALID).federation_config()
    assert (config.task, config.num_clients, config.rounds, config.attack, config.defense, config.seed) == (
        "digits", 10, 3, "lie", "trimmedmean", 4)
    assert config.malicious_fraction == 0.2 and config.attack_params == {"z": 1.5}
    assert config.training.lr == 0.1 and config.training.momentum == 0.9
    assert isinstance(parse_experiment(VALID), Experiment)
