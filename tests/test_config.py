"""Scenario validation: defaults, overrides, and one-line errors with exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedaudit.config import ConfigError, Scenario, scenario_from_toml
from fedaudit.scenario import load_scenario
from tests.conftest import run_cli


def test_defaults_are_a_valid_scenario() -> None:
    sc = Scenario()
    assert sc.model.name == "gpt2-random"
    assert sc.training.mode == "fedsgd" and sc.training.batch_size == 8
    assert sc.audit.attacks == ["embedding-rows", "labels"]


def test_quickstart_loads_and_round_trips() -> None:
    sc = load_scenario()
    assert sc.name == "quickstart"
    assert sc.model.config == {"n_layer": 3, "n_embd": 384, "n_head": 6}
    assert sc.audit.attacks == ["dager", "embedding-rows"]
    assert scenario_from_toml(sc.to_toml()) == sc


def test_overrides_reach_nested_keys_and_parse_toml_values() -> None:
    sc = load_scenario(
        None,
        [
            "training.batch_size=16",
            "model.config.n_layer=4",
            "training.lr=5e-4",
            "data.source=glue/cola",
            "audit.attacks=['labels']",
            "audit.ground_truth=false",
        ],
    )
    assert sc.training.batch_size == 16
    assert sc.model.config["n_layer"] == 4 and sc.model.config["n_embd"] == 384
    assert sc.training.lr == pytest.approx(5e-4)
    assert sc.data.source == "glue/cola"
    assert sc.audit.attacks == ["labels"] and sc.audit.ground_truth is False


def test_a_file_states_only_what_differs(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text("[training]\nbatch_size = 2\n")
    sc = load_scenario(path)
    assert sc.name == "mine" and sc.training.batch_size == 2 and sc.federation.clients == 4


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["training.batchsize=3"], "unknown key 'training.batchsize'; allowed keys here: mode, batch_size"),
        (["training.batch_size=0"], "training.batch_size = 0: Input should be greater than or equal to 1"),
        (["training.mode=sgd"], "training.mode = 'sgd': Input should be 'fedsgd' or 'fedavg'"),
        (["federation.partition=skewed"], "federation.partition = 'skewed': Input should be 'iid' or 'dirichlet'"),
        (
            ["audit.attacks=['dager-x']"],
            "audit.attacks = ['dager-x']: unknown attack 'dager-x'; "
            "allowed: dager, dlg, embedding-rows, idlg, ig, labels, spear, tag",
        ),
        (["nonsense"], "--set 'nonsense': expected KEY=VALUE"),
        (["training.mode=fedavg", "training.mini_batch_size=16"], "training.mini_batch_size = 16: must be <="),
        (["audit.backend=threads"], "audit.backend = 'threads': Input should be 'process' or 'ray'"),
        (["audit.workers=0"], "audit.workers = 0: Input should be greater than or equal to 1"),
        (["audit.clients=1.5"], 'audit.clients = 1.5: must be "all", a fraction in (0, 1] or a list'),
        (["audit.clients=[9]"], "audit.clients = [9]: partition ids are 0..3"),
        (["audit.rounds='each 2'"], 'audit.rounds = \'each 2\': must be "all", "every N"'),
        (["audit.resources.dager={num_gpus=1}"], "audit.resources: Ray resources apply only with audit.backend"),
        (["audit.backend='ray'", "audit.resources.dagr={}"], "audit.resources.dagr: not an attack of audit.attacks"),
    ],
)
def test_bad_values_give_one_precise_line(overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_scenario(None, overrides)
    message = str(err.value)
    assert expected in message
    assert "\n" not in message


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="scenario file not found"):
        load_scenario(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[training\nbatch_size = 2\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_scenario(bad)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--set", "training.batchsize=3"], "unknown key 'training.batchsize'"),
        (["run", "--set", "federation.rounds=-1"], "federation.rounds = -1"),
        (["run", "does/not/exist.toml"], "scenario file not found: does/not/exist.toml"),
        (["run", "--set", "data.source=/no/such/file.tsv"], "data.source: file not found: /no/such/file.tsv"),
        (["attack", "no-such-attack"], "unknown attack 'no-such-attack'"),
        (["report", "/no/such/run"], "not a run directory"),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(args: list[str], needle: str) -> None:
    proc = run_cli(*args, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("fedaudit: error: ") and needle in lines[0]


@pytest.mark.parametrize(
    "path", sorted(Path(__file__).resolve().parent.parent.glob("simulations/*.toml")), ids=lambda p: p.name
)
def test_every_ready_scenario_validates(path: Path) -> None:
    sc = load_scenario(path)
    assert sc.name == path.stem
