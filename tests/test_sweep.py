"""``fedaudit sweep``: grid parsing, up-front validation, a real two-cell sweep's outputs, and the
cell locks that keep two sweeps from running one cell at once."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from fedaudit.config import ConfigError
from fedaudit.sweep import parse_grid, plan
from fedaudit.sweep_cells import LOCK_WRITE_SECONDS, acquire_lock, lock_holder
from tests.conftest import REPO_ROOT, run_cli

QUICK = ["--set", "federation.rounds=1", "--set", "federation.clients=2", "--set", "audit.attacks=['labels']"]


def test_grid_values_are_read_as_toml_and_split_at_top_level_commas() -> None:
    grid = parse_grid(
        [
            "defenses.dp_sgd.noise_multiplier=0,1e-4,0.1",
            "audit.attacks=['spear','labels'],['labels']",
            'defenses.quantize.format="fp16","int8"',
        ]
    )
    assert grid == {
        "defenses.dp_sgd.noise_multiplier": [0, 1e-4, 0.1],
        "audit.attacks": [["spear", "labels"], ["labels"]],
        "defenses.quantize.format": ["fp16", "int8"],
    }
    for bad in (["training.lr"], ["training.lr="], ["training.lr=1,,2"]):
        with pytest.raises(ConfigError, match="--grid"):
            parse_grid(bad)
    with pytest.raises(ConfigError, match="at least one --grid"):
        parse_grid([])


def test_every_cell_is_validated_before_anything_runs() -> None:
    scenario = REPO_ROOT / "simulations" / "digits_quick.toml"
    cells = plan(scenario, parse_grid(["training.lr=0.1,0.2", "federation.rounds=1,2"]), [])
    assert [c.settings for c in cells] == [
        {"training.lr": 0.1, "federation.rounds": 1},
        {"training.lr": 0.1, "federation.rounds": 2},
        {"training.lr": 0.2, "federation.rounds": 1},
        {"training.lr": 0.2, "federation.rounds": 2},
    ]
    with pytest.raises(ConfigError, match=r"grid cell lr=-1: training.lr = -1"):
        plan(scenario, parse_grid(["training.lr=0.1,-1"]), [])


def test_a_sweep_writes_csv_markdown_and_resumes(tmp_path, monkeypatch) -> None:
    out = tmp_path / "sweep"
    done = run_cli(
        "sweep",
        "simulations/digits_quick.toml",
        "--grid",
        "defenses.prune.fraction=0,0.9",
        "--set",
        "federation.rounds=1",
        "--set",
        "federation.clients=2",
        "--set",
        "audit.attacks=['labels']",
        "--out",
        str(out),
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    with (out / "sweep.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["defenses.prune.fraction"], r["attack"]) for r in rows] == [("0", "labels"), ("0.9", "labels")]
    for row in rows:
        assert row["audits"] == "2" and row["rounds"] == "1" and 0 <= float(row["accuracy"]) <= 1
        assert 0 <= float(row["label_accuracy"]) <= 1 and row["error"] == ""
    assert float(rows[0]["label_accuracy"]) == 1.0  # an unpruned FedSGD head gives every label away
    md = (out / "sweep.md").read_text()
    assert "| defenses.prune.fraction | attack |" in md and md.count("| labels |") == 2
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "cell 1 (fraction=0.9): done" in done.stdout

    # --resume keeps the two finished cells and runs only the value added to the grid
    again = run_cli(
        "sweep",
        "simulations/digits_quick.toml",
        "--grid",
        "defenses.prune.fraction=0,0.9,0.5",
        "--set",
        "federation.rounds=1",
        "--set",
        "federation.clients=2",
        "--set",
        "audit.attacks=['labels']",
        "--out",
        str(out),
        "--resume",
        timeout=900,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert "cell 2 (fraction=0.5): done" in again.stdout and "cell 0 " not in again.stdout
    assert len(list((out / "cell-00").glob("*/records.jsonl"))) == 1
    with (out / "sweep.csv").open() as fh:
        resumed = list(csv.DictReader(fh))
    assert [r["defenses.prune.fraction"] for r in resumed] == ["0", "0.9", "0.5"]
    assert resumed[:2] == rows  # kept as measured, times included

    # a cell whose run stopped before its last round is not finished: resume runs it again
    from fedaudit.sweep import Cell, _cell_overrides, finished_cell

    cell = Cell(0, {"defenses.prune.fraction": 0})
    sets = ["federation.rounds=1", "federation.clients=2", "audit.attacks=['labels']"]
    monkeypatch.chdir(REPO_ROOT)  # where the sweep ran, so relative paths resolve alike
    scenario_path = Path("simulations/digits_quick.toml")
    assert finished_cell(cell, scenario_path, sets, out, {}) is not None
    assert "cell-00" in _cell_overrides(cell, sets, out)[-1]
    records = next((out / "cell-00").glob("*/records.jsonl"))
    records.write_text(
        "".join(line for line in records.read_text().splitlines(keepends=True) if '"utility"' not in line)
    )
    assert finished_cell(cell, scenario_path, sets, out, {}) is None
    assert finished_cell(Cell(0, {"defenses.prune.fraction": 0.5}), scenario_path, sets, out, {}) is None


def test_resume_needs_an_existing_sweep_directory(tmp_path) -> None:
    done = run_cli(
        "sweep",
        "simulations/digits_quick.toml",
        "--grid",
        "defenses.prune.fraction=0,0.5",
        "--resume",
        "--out",
        str(tmp_path / "nothing-here"),
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "fedaudit: error: --resume needs --out naming an existing sweep directory"


def test_a_bad_grid_key_fails_with_one_line() -> None:
    done = run_cli("sweep", "simulations/digits_quick.toml", "--grid", "defenses.prune.fractio=0,0.5")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "fedaudit: error: grid cell fractio=0: unknown key 'defenses.prune.fractio'; "
        "allowed keys here: fraction, threshold"
    )


def _lock(pid: int, started: float) -> str:
    return json.dumps({"pid": pid, "sweep_pid": pid, "started": started, "sweep_started": started})


def _exited_pid() -> int:
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    return gone.pid


def test_a_lock_counts_while_its_process_runs_and_that_process_is_the_one_that_started(tmp_path) -> None:
    me = psutil.Process()
    lock = tmp_path / "cell-00.lock"
    assert acquire_lock(lock) is None
    assert lock.stat().st_mode & 0o777 == 0o600
    info = json.loads(lock.read_text())
    assert info["pid"] == info["sweep_pid"] == me.pid and info["started"] == me.create_time()
    assert acquire_lock(lock) == me.pid and lock_holder(lock) == me.pid  # held: a second acquire fails
    lock.write_text(_lock(me.pid, me.create_time() - 3600))  # this pid, but a process started earlier
    assert lock_holder(lock) is None
    lock.write_text(_lock(_exited_pid(), time.time()))
    assert lock_holder(lock) is None and acquire_lock(lock) is None  # stale: replaced
    assert json.loads(lock.read_text())["pid"] == me.pid
    lock.write_text("")  # just created, not yet written: held
    assert lock_holder(lock) == 0
    old = time.time() - LOCK_WRITE_SECONDS - 1
    os.utime(lock, (old, old))
    assert lock_holder(lock) is None
    assert lock_holder(tmp_path / "none.lock") is None


def test_resume_skips_a_cell_whose_lock_is_live_and_runs_one_whose_lock_is_stale(tmp_path) -> None:
    out = tmp_path / "sweep"
    out.mkdir()
    me = psutil.Process()
    (out / "cell-00.lock").write_text(_lock(_exited_pid(), time.time()))
    live = _lock(me.pid, me.create_time())  # as if this test process were running cell 1
    (out / "cell-01.lock").write_text(live)
    args = ["sweep", "simulations/digits_quick.toml", "--grid", "defenses.prune.fraction=0,0.9", *QUICK]
    done = run_cli(*args, "--out", str(out), "--resume", timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert "cell 0 (fraction=0): done" in done.stdout
    assert f"cell 1 (fraction=0.9): failed: running elsewhere (pid {me.pid})" in done.stdout
    assert len(list((out / "cell-00").glob("*/records.jsonl"))) == 1
    assert not (out / "cell-01").exists()  # no second run started in the cell
    assert not (out / "cell-00.lock").exists() and (out / "cell-01.lock").read_text() == live
    with (out / "sweep.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["cell"], r["error"]) for r in rows] == [("0", ""), ("1", f"running elsewhere (pid {me.pid})")]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no temporary file left
    assert all((out / name).stat().st_mode & 0o777 == 0o600 for name in ("sweep.csv", "sweep.md", "sweep.png"))
