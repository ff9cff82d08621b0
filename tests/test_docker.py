"""The Docker deployment files agree with each other, with the Compose Specification and with
the installed Flower CLI.

No Docker engine runs here, so nothing is started: docker/compose.yml is parsed with PyYAML and
validated against the Compose Specification's JSON schema (``jsonschema``); every service's
command is parsed by the *real* Flower argument parser of the binary its image runs (an
unknown, removed or deprecated flag fails), and every address a component dials is checked to
name a service of the file and a port that service listens on.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKER_DIR = REPO_ROOT / "docker"
COMPOSE_FILE = DOCKER_DIR / "compose.yml"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
COMPOSE_SPEC = REPO_ROOT / "tests" / "fixtures" / "compose-spec" / "compose-spec.json"

SUPERNODES = ("supernode-1", "supernode-2")
EXPECTED_SERVICES = {
    "superlink",
    "superexec-serverapp",
    *SUPERNODES,
    "superexec-clientapp-1",
    "superexec-clientapp-2",
}
FLWR_VERSION = importlib.metadata.version("flwr")
LISTEN_ANY = {"0.0.0.0", "::", "[::]"}


# --------------------------------------------------------------------------- helpers


def _parser(role: str) -> argparse.ArgumentParser:
    """The argument parser the named Flower binary really uses (flwr as installed)."""
    if role == "superlink":
        from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink

        return _parse_args_run_superlink()
    if role == "supernode":
        from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode

        return _parse_args_run_supernode()
    if role == "superexec":
        from flwr.supercore.cli.flower_superexec import _parse_args

        return _parse_args()
    raise AssertionError(f"unknown role {role}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), "no services"
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _compose_spec_errors(document: Any) -> list[str]:
    """Where ``document`` breaks the Compose Specification's own JSON schema (vendored in
    tests/fixtures/compose-spec with its licence): the format Docker Compose v2 reads."""
    schema = json.loads(COMPOSE_SPEC.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(document)]


def test_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    assert _compose_spec_errors(compose) == []
    # The schema is not a formality: misspelt keys are caught, at the service and in a port.
    broken = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    broken["services"]["superlink"]["comand"] = broken["services"]["superlink"].pop("command")
    broken["services"]["supernode-1"]["ports"] = [{"taget": 9094}]
    errors = _compose_spec_errors(broken)
    assert any(e.startswith("services/superlink: ") and "'comand'" in e for e in errors), errors
    assert any(e.startswith("services/supernode-1/ports/0") for e in errors), errors


def _role(name: str, svc: dict[str, Any]) -> str:
    """Which Flower binary a service runs: from its image, or the app image's ENTRYPOINT."""
    assert "entrypoint" not in svc, f"{name}: entrypoint overridden; the image's binary is assumed"
    image = str(svc.get("image", ""))
    if image.startswith("flwr/superlink:"):
        return "superlink"
    if image.startswith("flwr/supernode:"):
        return "supernode"
    if "build" in svc:
        entry = _dockerfile_entrypoint()
        assert entry in (None, "flower-superexec"), f"app image ENTRYPOINT is {entry}"
        return "superexec"  # FROM flwr/superexec, whose ENTRYPOINT is flower-superexec
    raise AssertionError(f"{name}: cannot tell which Flower component image {image!r} runs")


def _command(name: str, svc: dict[str, Any]) -> list[str]:
    cmd = svc.get("command")
    assert cmd, f"{name}: no command"
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def _parse(name: str, role: str, argv: list[str]) -> argparse.Namespace:
    parser = _parser(role)
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:  # argparse reports unknown/invalid flags by exiting
        raise AssertionError(f"{name}: flower-{role} rejects {argv}") from exc


@pytest.fixture(scope="module")
def parsed(services: dict[str, dict[str, Any]]) -> dict[str, tuple[str, argparse.Namespace]]:
    out = {}
    for name, svc in services.items():
        role = _role(name, svc)
        out[name] = (role, _parse(name, role, _command(name, svc)))
    return out


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    assert sep and host and port.isdigit(), f"address {address!r} is not host:port"
    return host.strip("[]"), int(port)


def _resolve_dockerfile_vars(text: str, defaults: dict[str, str]) -> str:
    return re.sub(
        r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?",
        lambda m: defaults.get(m.group(1), m.group(0)),
        text,
    )


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    if pending:
        lines.append(pending)
    out, args = [], {}
    for line in lines:
        instr, _, rest = line.partition(" ")
        instr = instr.upper()
        rest = rest.strip()
        if instr == "ARG":
            key, _, value = rest.partition("=")
            args[key.strip()] = value.strip().strip('"')
        out.append((instr, _resolve_dockerfile_vars(rest, args)))
    return out


def _dockerfile_entrypoint() -> str | None:
    entries = [rest for instr, rest in _dockerfile_instructions() if instr == "ENTRYPOINT"]
    if not entries:
        return None
    last = entries[-1]
    return yaml.safe_load(last)[0] if last.startswith("[") else shlex.split(last)[0]


# --------------------------------------------------------------------------- services


def test_expected_services_exist(services: dict[str, dict[str, Any]]) -> None:
    missing = EXPECTED_SERVICES - set(services)
    assert not missing, f"missing services: {sorted(missing)}"


def test_roles_and_images(services: dict[str, dict[str, Any]]) -> None:
    roles = {name: _role(name, svc) for name, svc in services.items()}
    assert roles["superlink"] == "superlink"
    for name in SUPERNODES:
        assert roles[name] == "supernode"
    for name in ("superexec-serverapp", "superexec-clientapp-1", "superexec-clientapp-2"):
        assert roles[name] == "superexec"
    # Flower's own images run the same Flower version as the app image and the CLI here.
    for name, svc in services.items():
        if roles[name] in ("superlink", "supernode"):
            assert svc["image"] == f"flwr/{roles[name]}:{FLWR_VERSION}", name


def test_commands_use_only_current_flags(services: dict[str, dict[str, Any]]) -> None:
    """Every flag exists in flwr as installed and is neither hidden nor deprecated."""
    for name, svc in services.items():
        role = _role(name, svc)
        parser = _parser(role)
        argv = _command(name, svc)
        _parse(name, role, argv)
        for token in argv:
            if not token.startswith("--"):
                continue
            flag = token.split("=", 1)[0]
            action = parser._option_string_actions.get(flag)  # noqa: SLF001
            assert action is not None, f"{name}: flower-{role} has no {flag}"
            assert action.help is not argparse.SUPPRESS, f"{name}: {flag} is a removed/hidden flag"
            assert "deprecated" not in (action.help or "").lower(), f"{name}: {flag} is deprecated"


def test_insecure_local_mode_and_process_isolation(parsed: dict[str, tuple[str, argparse.Namespace]]) -> None:
    for name, (role, args) in parsed.items():
        assert args.insecure, f"{name}: local compose runs without TLS (--insecure)"
        if role in ("superlink", "supernode"):
            # The apps run in the superexec-* services; with the default `subprocess` the
            # SuperLink/SuperNode would start their own SuperExec beside them.
            assert args.isolation == "process", f"{name}: needs --isolation process"


def test_every_address_points_to_a_listening_service(
    parsed: dict[str, tuple[str, argparse.Namespace]],
) -> None:
    """superexec -> Runtime API (SuperLink or its SuperNode); supernode -> SuperLink Fleet API."""
    from flwr.supercore.constant import (
        SUPERLINK_UVICORN_DEFAULT_PORT,
        SUPERNODE_UVICORN_DEFAULT_PORT,
    )

    defaults = {"superlink": SUPERLINK_UVICORN_DEFAULT_PORT, "supernode": SUPERNODE_UVICORN_DEFAULT_PORT}
    listening: dict[str, tuple[str, int]] = {}
    for name, (role, args) in parsed.items():
        if role in defaults:
            # argparse already filled in Flower's default when --port is absent
            listening[name] = (args.host, int(args.port or defaults[role]))
            assert args.host in LISTEN_ANY, (
                f"{name} listens on {args.host} only: other containers cannot reach it (--host 0.0.0.0)"
            )

    attached: dict[str, list[str]] = {}
    checked = 0
    for name, (role, args) in parsed.items():
        if role == "superexec":
            address, allowed = args.runtime_api_address, ("superlink", "supernode")
        elif role == "supernode":
            address, allowed = args.superlink, ("superlink",)
        else:
            continue
        host, port = _split_address(address)
        assert host in parsed, f"{name} dials {address}: no service named {host!r}"
        target_role = parsed[host][0]
        assert target_role in allowed, f"{name} dials {host}, a {target_role}"
        assert port == listening[host][1], (
            f"{name} dials {host}:{port}, but {host} listens on port {listening[host][1]}"
        )
        if role == "superexec":
            attached.setdefault(host, []).append(name)
        checked += 1
    assert checked == len(parsed) - 1, "every component but the SuperLink dials another"

    # One SuperExec on the SuperLink (ServerApps) and one per SuperNode (ClientApps).
    assert attached.get("superlink") == ["superexec-serverapp"]
    for node in SUPERNODES:
        assert len(attached.get(node, [])) == 1, f"{node} needs exactly one SuperExec: {attached.get(node)}"


def test_superlink_port_published_for_flwr_run(
    services: dict[str, dict[str, Any]], parsed: dict[str, tuple[str, argparse.Namespace]]
) -> None:
    port = int(parsed["superlink"][1].port)
    published = [str(p) for p in services["superlink"].get("ports", [])]
    container_ports = [int(p.rsplit(":", 1)[-1].split("/")[0]) for p in published]
    assert port in container_ports, f"SuperLink port {port} is not published: {published}"


def test_supernode_partitions(parsed: dict[str, tuple[str, argparse.Namespace]]) -> None:
    from flwr.common.config import parse_config_args

    configs = {}
    for name, (role, args) in parsed.items():
        if role == "supernode":
            assert args.node_config, f"{name}: no --node-config"
            configs[name] = parse_config_args([args.node_config])
    assert set(configs) == set(SUPERNODES)
    ids = [cfg["partition-id"] for cfg in configs.values()]
    totals = {cfg["num-partitions"] for cfg in configs.values()}
    assert all(isinstance(i, int) for i in ids), ids
    assert len(set(ids)) == len(ids), f"partition-ids not distinct: {ids}"
    assert totals == {len(configs)}, f"num-partitions {totals} != number of supernodes {len(configs)}"
    assert sorted(ids) == list(range(len(configs)))


def test_app_services_build_from_dockerfile(
    services: dict[str, dict[str, Any]], parsed: dict[str, tuple[str, argparse.Namespace]]
) -> None:
    app_services = [name for name, (role, _) in parsed.items() if role == "superexec"]
    assert len(app_services) == 3
    for name in app_services:
        build = services[name]["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        context_dir = (COMPOSE_FILE.parent / context).resolve()
        assert context_dir == REPO_ROOT, f"{name}: build context {context_dir} is not the repo root"
        assert (context_dir / dockerfile).resolve() == DOCKERFILE.resolve(), f"{name}: builds {dockerfile}"


def test_run_directory_survives(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    """The ServerApp's run store (output.dir, relative to the image's WORKDIR) is a volume."""
    from fedaudit.config import OutputConfig

    workdirs = [rest for instr, rest in _dockerfile_instructions() if instr == "WORKDIR"]
    assert workdirs, "Dockerfile sets no WORKDIR"
    runs_dir = (Path(workdirs[-1]) / OutputConfig().dir).as_posix()
    mounts = {}
    for vol in services["superexec-serverapp"].get("volumes", []):
        if isinstance(vol, str):
            source, target = vol.split(":")[:2]
        else:
            source, target = vol.get("source"), vol["target"]
        mounts[target] = source
    assert runs_dir in mounts, f"no volume on {runs_dir}: {mounts}"
    source = mounts[runs_dir]
    is_bind = source.startswith((".", "/", "~", "$"))
    assert is_bind or source in (compose.get("volumes") or {}), f"volume {source!r} is not declared"


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_from_matches_installed_flwr() -> None:
    froms = [rest.split()[0] for instr, rest in _dockerfile_instructions() if instr == "FROM"]
    assert froms, "Dockerfile has no FROM"
    image, _, tag = froms[-1].partition(":")
    assert image == "flwr/superexec", froms[-1]
    # tag convention: <version> or <version>-py3.X-<distro>
    assert tag.split("-", 1)[0] == FLWR_VERSION, f"FROM {froms[-1]} but flwr {FLWR_VERSION} is installed"


def test_dockerfile_installs_constraints() -> None:
    instructions = _dockerfile_instructions()
    copied = " ".join(rest for instr, rest in instructions if instr in ("COPY", "ADD"))
    assert "constraints.txt" in copied.split(), "constraints.txt is not copied into the image"
    runs = [rest for instr, rest in instructions if instr == "RUN"]
    pip_installs = [
        cmd.strip() for r in runs for cmd in re.split(r"&&|;|\bthen\b", r) if re.search(r"\bpip install\b", cmd)
    ]
    torch_cpu = [c for c in pip_installs if re.search(r"--index-url[ =]\S*download\.pytorch\.org/whl/cpu", c)]
    # torch from the CPU index (PyPI's torch pulls CUDA wheels), pinned to the constraints' version.
    assert torch_cpu and all("torch" in c for c in torch_cpu), "torch is not installed from the PyTorch CPU index"
    resolving = [c for c in pip_installs if c not in torch_cpu and "--no-deps" not in c.split()]
    assert resolving, "no pip install resolves the project's dependencies"
    for cmd in resolving:
        assert re.search(r"\s(-c|--constraint)[ =]\S*constraints\.txt", cmd), f"unconstrained: {cmd}"


def test_dockerignore_keeps_sources_and_drops_local_state() -> None:
    patterns = {
        line.strip().rstrip("/")
        for line in (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in (
        "pyproject.toml",
        "constraints.txt",
        "fedaudit",
        "clients",
        "server_strategies",
        "simulations",
        "*",
        "**",
        "docker/Dockerfile",
    ):
        assert needed not in patterns, f".dockerignore drops {needed}"
    for dropped in (".venv", ".git", "runs"):
        assert dropped in patterns, f".dockerignore keeps {dropped}"


# --------------------------------------------------------------------------- docker compose


def _docker_compose() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=120)
    return docker if probe.returncode == 0 else None


def test_docker_compose_config_validates() -> None:
    docker = _docker_compose()
    if docker is None:
        pytest.skip("docker compose CLI not installed")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
