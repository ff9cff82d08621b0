"""A stopped sweep leaves no process behind: SIGTERM ends every running cell (and the cell's run
and Ray processes) within seconds and removes the cells' locks; ``kill -9`` of the sweep, which
no handler sees, still ends its cells through their parent-death signal."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from fedaudit.audit.records import read_records
from fedaudit.sweep_cells import lock_holder
from tests.conftest import REPO_ROOT

FEDAUDIT = str(Path(sys.executable).parent / "fedaudit")
#: Two digits cells that run far longer than the test waits; both run at once.
ARGS = ["simulations/digits_quick.toml", "--grid", "defenses.prune.fraction=0,0.9", "--workers", "2"]
ARGS += ["--set", "federation.rounds=1000", "--set", "federation.clients=2", "--set", "audit.attacks=['labels']"]


def _start(out: Path) -> subprocess.Popen:
    cmd = [FEDAUDIT, "sweep", *ARGS, "--out", str(out)]
    return subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _running(sweep: subprocess.Popen, out: Path, timeout: float = 300) -> list[psutil.Process]:
    """Once every cell's lock names its cell and the cell has finished a round: the cell pids
    from the locks, and every descendant of the sweep."""
    deadline = time.monotonic() + timeout
    locks = [out / "cell-00.lock", out / "cell-01.lock"]
    while time.monotonic() < deadline:
        assert sweep.poll() is None, sweep.stdout.read()
        pids = [json.loads(lock.read_text() or "{}").get("pid") if lock.exists() else None for lock in locks]
        rounds = [any(r.type == "utility" and r.round >= 1 for r in _records(out / f"cell-0{i}")) for i in (0, 1)]
        if all(rounds) and None not in pids and sweep.pid not in pids:
            tree = psutil.Process(sweep.pid).children(recursive=True)
            assert set(pids) <= {p.pid for p in tree}
            return tree
        time.sleep(0.25)
    raise AssertionError(f"the cells did not start within {timeout} s")


def _records(cell_dir: Path) -> list:
    runs = [p for p in cell_dir.iterdir() if (p / "records.jsonl").is_file()] if cell_dir.is_dir() else []
    return read_records(runs[0]) if runs else []


def _left_after(procs: list[psutil.Process], seconds: float) -> list[str]:
    deadline = time.monotonic() + seconds
    while True:
        alive = []
        for p in procs:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{p.pid} {p.name()} {' '.join(p.cmdline())[:100]}")
            except psutil.NoSuchProcess:
                continue
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.25)


def test_sigterm_ends_every_cell_and_its_ray_processes(tmp_path: Path) -> None:
    sweep = _start(tmp_path)
    try:
        tree = _running(sweep, tmp_path)
        assert len(tree) > 6  # per cell: the run's supervisor, the run, Ray's processes
        sweep.send_signal(signal.SIGTERM)
        assert _left_after(tree, 10) == []
        output, _ = sweep.communicate(timeout=30)
    finally:
        sweep.kill()
    assert sweep.returncode == 128 + signal.SIGTERM, output
    assert "stopped by SIGTERM" in output and "Traceback" not in output
    assert not list(tmp_path.glob("*.lock"))
    assert "stopped: the sweep got SIGTERM" in (tmp_path / "sweep.csv").read_text()


def test_kill_9_of_the_sweep_still_ends_its_cells(tmp_path: Path) -> None:
    sweep = _start(tmp_path)
    try:
        tree = _running(sweep, tmp_path)
        sweep.send_signal(signal.SIGKILL)
        sweep.wait(timeout=30)
        assert _left_after(tree, 15) == []
    finally:
        sweep.kill()
    assert [lock_holder(lock) for lock in sorted(tmp_path.glob("*.lock"))] == [None, None]  # left behind, stale
