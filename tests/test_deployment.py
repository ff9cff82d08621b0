"""Flower's deployment engine for real, on loopback: a SuperLink, two SuperNodes and the
auditing ServerApp through ``flwr run . <connection>``. Nobody hands the server the clients'
data, so records hold what was reconstructed, unscored, and the report says so."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from markupsafe import escape

from tests.conftest import REPO_ROOT


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as server:
        return server.getsockname()[1]


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    # A session of its own: the SuperExec and app processes it spawns end with it.
    return subprocess.Popen(args, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def deployment(tmp_path: Path):
    """A SuperLink and two SuperNodes (partitions 0 and 1) on loopback, and a connection to them."""
    bin_dir = Path(sys.executable).parent
    link = _free_port()
    env = {
        **os.environ,
        "FLWR_HOME": str(tmp_path / "flwr"),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    superlink = [str(bin_dir / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(link)]
    procs = [_start([*superlink, "--database", str(tmp_path / "state.db")], env, tmp_path / "superlink.log")]
    for partition in (0, 1):
        node = [str(bin_dir / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{link}"]
        node += ["--node-config", f"partition-id={partition} num-partitions=2", "--port", str(_free_port())]
        procs.append(_start(node, env, tmp_path / f"supernode-{partition}.log"))
    (tmp_path / "flwr").mkdir()
    (tmp_path / "flwr" / "config.toml").write_text(
        f'[superlink.loopback]\naddress = "127.0.0.1:{link}"\ninsecure = true\n', encoding="utf-8"
    )
    try:
        yield env
    finally:
        _stop(procs)


def test_the_auditing_serverapp_on_flowers_deployment_engine(tmp_path: Path, deployment: dict[str, str]) -> None:
    runs = tmp_path / "runs"
    overrides = "audit.ground_truth=false;federation.clients=2;federation.rounds=1"
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "flwr"), "run", ".", "loopback", "--stream"]
        + ["--run-config", f'overrides="{overrides}" output-dir="{runs}"'],
        cwd=REPO_ROOT,
        env=deployment,
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    (run_dir,) = runs.iterdir()
    records = [json.loads(line) for line in (run_dir / "records.jsonl").read_text(encoding="utf-8").splitlines()]
    audits = [r for r in records if r["type"] == "attack"]
    assert sorted((r["client"], r["attack"]) for r in audits) == [
        ("0", "dager"),
        ("0", "embedding-rows"),
        ("1", "dager"),
        ("1", "embedding-rows"),
    ]
    for record in audits:
        # No ground truth: no scores and no comparison, but what the server reconstructed.
        assert record["metrics"] == {} and "comparison" not in record
        assert record["status"] == "exact", record["reason"]
        assert record["reconstruction"]["texts" if record["attack"] == "dager" else "tokens"]
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "No ground truth" in html
    for sentence in next(r for r in audits if r["attack"] == "dager")["reconstruction"]["texts"]:
        assert str(escape(sentence)) in html  # each recovered sentence, shown as text
