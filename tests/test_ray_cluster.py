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
import threading
import time
from pathlib import Path

import psutil
import pytest

from fedaudit.ray_cluster import RayAddressError, ray_init_address
from tests.conftest import run_cli

QUICK = ["--set", "federation.rounds=1", "--set", "federation.clients=2", "--set", "audit.attacks=['embedding-rows']"]


def _answering(reply: bytes | None) -> tuple[socket.socket, threading.Thread]:
    """A loopback server that answers each connection's first bytes with ``reply`` (None: silence)."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.recv(64)
            if reply is not None:
                conn.sendall(reply)
            time.sleep(0.2 if reply is not None else 3.0)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


def test_the_address_ray_init_gets() -> None:
    assert ray_init_address(None) == "local"
    grpc, _ = _answering(bytes([0, 0, 0x18, 4, 0, 0, 0, 0, 0]))  # a gRPC server's first SETTINGS frame
    port = grpc.getsockname()[1]
    assert ray_init_address(f"127.0.0.1:{port}") == f"127.0.0.1:{port}"
    grpc.close()
    start = time.monotonic()
    with pytest.raises(RayAddressError, match=f"--ray-address 127.0.0.1:{port}: nothing listens there"):
        ray_init_address(f"127.0.0.1:{port}")  # closed: refused at once
    web, _ = _answering(b"HTTP/1.0 400 Bad Request\r\n\r\n")
    with pytest.raises(RayAddressError, match="something listens there, but not a Ray head"):
        ray_init_address(f"127.0.0.1:{web.getsockname()[1]}")
    with pytest.raises(RayAddressError, match="the host name does not resolve"):
        ray_init_address("nohost.invalid:6379", source="federation.ray_address =")
    assert time.monotonic() - start < 5
    silent, _ = _answering(None)
    with pytest.raises(RayAddressError, match="no Ray cluster answered in 1 s"):
        ray_init_address(f"127.0.0.1:{silent.getsockname()[1]}", wait=1.0)
    assert time.monotonic() - start < 10
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


def _ray_nodes(address: str, env: dict[str, str]) -> dict[str, dict]:
    """Node id -> resources of every alive node of the cluster at ``address``."""
    script = (
        f"import json, ray; ray.init(address={address!r}, logging_level='ERROR');"
        "print(json.dumps({n['NodeID']: n['Resources'] for n in ray.nodes() if n['Alive']}))"
    )
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_audits_run_on_the_ray_node_that_offers_the_audit_resource(tmp_path: Path) -> None:
    ray_tmpdir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    # Ray's memory monitor kills workers when the whole machine is nearly full, whoever fills it.
    env = {**os.environ, "RAY_TMPDIR": ray_tmpdir, "RAY_memory_monitor_refresh_ms": "0"}
    ray = str(Path(sys.executable).parent / "ray")
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
    address = f"127.0.0.1:{port}"
    common = ["--include-dashboard=false", "--disable-usage-stats"]
    try:
        head = [ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2"]
        subprocess.run([*head, *common], env=env, capture_output=True, timeout=180, check=True)
        worker = [ray, "start", "--address", address, "--num-cpus", "1", "--resources", '{"audit": 1}']
        subprocess.run([*worker, "--disable-usage-stats"], env=env, capture_output=True, timeout=180, check=True)
        nodes = _ray_nodes(address, env)
        (audit_node,) = [node for node, resources in nodes.items() if resources.get("audit")]
        assert len(nodes) == 2

        scenario = ["--set", "federation.clients=4", "--set", "federation.rounds=2", "--set", "audit.backend='ray'"]
        attacks = ["--set", "audit.attacks=['embedding-rows', 'labels']", "--set", f"output.dir={tmp_path}"]
        proc = run_cli("run", "--ray-address", address, *scenario, *attacks, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        (run_dir,) = tmp_path.iterdir()
        records = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]
        audits = [r for r in records if r["type"] == "attack"]
        assert len(audits) == 4 * 2 * 2
        assert {r["diagnostics"]["worker_node"] for r in audits} == {audit_node}
        assert {r["status"] for r in audits if r["attack"] == "embedding-rows"} == {"exact"}
    finally:
        for proc in psutil.process_iter(["cmdline"]):  # both nodes, by pid
            if any(ray_tmpdir in part for part in proc.info["cmdline"] or []):
                proc.kill()
        shutil.rmtree(ray_tmpdir, ignore_errors=True)
