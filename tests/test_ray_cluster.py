"""A run never hangs on a Ray cluster: it starts its own unless told to join one, and a named
cluster that does not answer is one error line."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from fedaudit.ray_cluster import RayAddressError, ray_init_address
from tests.conftest import run_cli

QUICK = ["--set", "federation.rounds=1", "--set", "federation.clients=2", "--set", "audit.attacks=['embedding-rows']"]


def test_the_address_ray_init_gets() -> None:
    assert ray_init_address(None) == "local"
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert ray_init_address(f"127.0.0.1:{port}") == f"127.0.0.1:{port}"
    start = time.monotonic()
    with pytest.raises(RayAddressError, match=f"--ray-address 127.0.0.1:{port}: nothing listens there"):
        ray_init_address(f"127.0.0.1:{port}")  # closed again: refused at once
    assert time.monotonic() - start < 5
    for bad in ("nonsense", "host:", ":6379", "host:99999"):
        with pytest.raises(RayAddressError, match="expected HOST:PORT"):
            ray_init_address(bad)


def test_an_unreachable_ray_address_is_one_line(tmp_path: Path) -> None:
    proc = run_cli("run", "--ray-address", "127.0.0.1:9", "--set", f"output.dir={tmp_path}", *QUICK, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "fedaudit: error: --ray-address 127.0.0.1:9: nothing listens there (connection refused)"
    ]
    assert not list(tmp_path.iterdir())  # nothing was started, no run directory


def _stale_ray_head(ray_tmpdir: str, env: dict[str, str]) -> tuple[str, int]:
    """Start a Ray head with ``ray start`` and kill -9 every process of it, as a crash would:
    Ray's temp dir still names it as "the current cluster"."""
    ray = str(Path(sys.executable).parent / "ray")
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
    args = [ray, "start", "--head", "--port", str(port), "--num-cpus", "1", "--include-dashboard=false"]
    subprocess.run([*args, "--disable-usage-stats"], env=env, capture_output=True, timeout=180, check=True)
    current = Path(ray_tmpdir, "ray", "ray_current_cluster").read_text().strip()
    for proc in psutil.process_iter(["cmdline"]):
        if any(ray_tmpdir in part for part in proc.info["cmdline"] or []):
            proc.kill()
    return current, port


def test_a_killed_ray_head_left_behind_does_not_hang_a_run(tmp_path: Path) -> None:
    # A short temp dir: Ray's Unix socket paths must stay under 108 characters.
    ray_tmpdir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmpdir}
    try:
        current, port = _stale_ray_head(ray_tmpdir, env)
        assert current.endswith(f":{port}")  # what a bare ray.init() would join
        proc = run_cli("run", "--set", f"output.dir={tmp_path}", *QUICK, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        (run_dir,) = tmp_path.iterdir()
        kinds = [json.loads(line)["type"] for line in (run_dir / "records.jsonl").read_text().splitlines()]
        assert kinds.count("attack") == 2 and kinds.count("utility") == 2
    finally:
        for proc in psutil.process_iter(["cmdline"]):
            if any(ray_tmpdir in part for part in proc.info["cmdline"] or []):
                proc.kill()
        shutil.rmtree(ray_tmpdir, ignore_errors=True)
