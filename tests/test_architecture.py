"""The architecture holds: layered imports (import-linter contracts in pyproject.toml), no import
cycle anywhere, every package importable on its own, files and functions that fit on a screen."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

from tests.conftest import REPO_ROOT

PACKAGES = ("fedaudit", "server_strategies", "clients")
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def test_import_contracts_are_kept() -> None:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    done = subprocess.run([exe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "0 broken" in done.stdout


def test_no_import_cycle_between_any_two_modules() -> None:
    # TYPE_CHECKING imports count too: a cycle through annotations is still a cycle in the design.
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=False)
    cycles = {
        tuple(sorted((module, imported)))
        for module in graph.modules
        for imported in graph.find_modules_directly_imported_by(module)
        if graph.find_shortest_chain(importer=imported, imported=module)
    }
    assert not cycles


@pytest.mark.parametrize(
    "package",
    [
        "fedaudit.config",
        "fedaudit.models",
        "fedaudit.attacks.base",
        "fedaudit.attacks",
        "fedaudit.metrics",
        "fedaudit.data",
        "fedaudit.training",
        "fedaudit.defenses",
        "fedaudit.audit",
        "fedaudit.report",
        "fedaudit.federation",
        "fedaudit.scenario",
        "fedaudit.sweep",
        "fedaudit.cli",
        "server_strategies",
        "clients",
    ],
)
def test_each_package_imports_alone(package: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", f"import {package}"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_files_and_functions_fit_on_a_screen() -> None:
    too_long = []
    for path in (p for package in PACKAGES for p in (REPO_ROOT / package).rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        if len(source.splitlines()) > MAX_FILE_LINES:
            too_long.append(f"{path.relative_to(REPO_ROOT)}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.name}: {length} lines")
    assert not too_long
