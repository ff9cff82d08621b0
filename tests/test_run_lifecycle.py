"""A killed run loses nothing and leaves nothing behind: ``kill -9``, Ctrl-C and SIGTERM end
every process of the run within seconds, and ``--resume`` continues a killed run to the very
records an uninterrupted run writes."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from fedaudit.audit.records import read_records
from tests.conftest import REPO_ROOT, TINY_GPT2, run_cli
from tests.helpers import when_and_where_aside

FEDAUDIT = str(Path(sys.executable).parent / "fedaudit")


def _args(out: Path, cola_path: Path, rounds: int) -> list[str]:
    settings = [
        *TINY_GPT2,
        f"data.source={cola_path}",
        "federation.clients=2",
        f"federation.rounds={rounds}",
        "training.batch_size=4",
        "audit.attacks=['embedding-rows', 'labels']",
        f"output.dir={out}",
    ]
    return ["run", *(arg for s in settings for arg in ("--set", s))]


def _start(out: Path, cola_path: Path, rounds: int) -> subprocess.Popen:
    return subprocess.Popen(
        [FEDAUDIT, *_args(out, cola_path, rounds)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_round(proc: subprocess.Popen, out: Path, rnd: int, timeout: float = 300) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [p for p in out.iterdir() if (p / "records.jsonl").is_file()] if out.exists() else []
        if runs and any(r.type == "utility" and r.round >= rnd for r in read_records(runs[0])):
            return runs[0]
        assert proc.poll() is None, f"the run ended before round {rnd}: {proc.stdout.read()}"
        time.sleep(0.2)
    raise AssertionError(f"round {rnd} did not finish within {timeout} s")


def _tree(proc: subprocess.Popen) -> list[psutil.Process]:
    root = psutil.Process(proc.pid)
    return [root, *root.children(recursive=True)]


def _left_after(procs: list[psutil.Process], seconds: float) -> list[str]:
    deadline = time.monotonic() + seconds
    while True:
        alive = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive or time.monotonic() > deadline:
            return [f"{p.pid} {p.name()}" for p in alive]
        time.sleep(0.25)


def _comparable(records, rounds: set[int]) -> list[dict]:
    """Records of ``rounds`` as dicts without times, memory and workers, in a stable order."""
    out = []
    for r in records:
        if r.round in rounds:
            d = when_and_where_aside(dataclasses.asdict(r))
            out.append({"type": r.type, **d})
    return sorted(out, key=lambda d: (d["round"], d["type"], str(d.get("client")), str(d.get("attack"))))


def test_kill_9_then_resume_gives_the_records_of_an_uninterrupted_run(tmp_path: Path, cola_path: Path) -> None:
    whole = run_cli(*_args(tmp_path / "whole", cola_path, rounds=4), timeout=600)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    (reference_dir,) = [p for p in (tmp_path / "whole").iterdir() if p.is_dir()]

    proc = _start(tmp_path / "killed", cola_path, rounds=4)
    run_dir = _wait_for_round(proc, tmp_path / "killed", 2)
    tree = _tree(proc)
    assert len(tree) > 3  # the supervisor, the run and Ray's processes
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert _left_after(tree, 10) == []

    resumed = run_cli("run", "--resume", str(run_dir), timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Resuming" in resumed.stdout
    records = read_records(run_dir)
    assert sorted({r.round for r in records if r.type == "utility"}) == [0, 1, 2, 3, 4]
    assert _comparable(records, {3, 4}) == _comparable(read_records(reference_dir), {3, 4})
    assert len(_comparable(records, {3, 4})) == 2 * (2 * 2 + 1)  # 2 rounds x (2 clients x 2 attacks + utility)
    checkpoints = sorted(p.name for p in run_dir.glob("*.safetensors"))
    assert checkpoints == ["global-round-00004.safetensors"]
    assert all((run_dir / name).stat().st_mode & 0o777 == 0o600 for name in ("report.md", "records.jsonl"))

    again = run_cli("run", "--resume", str(run_dir), "--set", "training.lr=1", timeout=60)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "--resume" in again.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stopped_run_reports_what_finished_and_leaves_no_process(tmp_path: Path, cola_path: Path, sig) -> None:
    proc = _start(tmp_path, cola_path, rounds=50)
    run_dir = _wait_for_round(proc, tmp_path, 1)
    tree = _tree(proc)
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, output
    assert _left_after(tree, 10) == []
    tail = output[-3000:]
    assert "fedaudit run --resume" in output, tail
    assert "Traceback" not in output, output[output.index("Traceback") - 500 :][:3000]
    finished = max(r.round for r in read_records(run_dir) if r.type == "utility")
    assert f"Rounds completed: {finished} of 50" in (run_dir / "report.md").read_text()
