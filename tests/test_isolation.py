"""Attacks cannot reach ground truth: not by import, not through the Observation's object graph."""

from __future__ import annotations

import ast
import gc
import inspect
import os
import sys
from pathlib import Path

import torch

import fedaudit.attacks as attacks_pkg
from fedaudit.attacks import REGISTRY, Budget, Observation, Reconstruction
from fedaudit.audit.auditor import Auditor
from tests.conftest import TINY_GPT2
from tests.helpers import client_updates, scenario

ATTACKS_DIR = Path(attacks_pkg.__file__).parent


def _runtime_imports(tree: ast.Module) -> set[str]:
    """Modules imported outside ``if TYPE_CHECKING:`` blocks."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for n in ast.walk(node))
    names = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_attack_modules_import_neither_flwr_nor_the_audit_layer() -> None:
    for path in ATTACKS_DIR.rglob("*.py"):
        source = path.read_text()
        imported = _runtime_imports(ast.parse(source))
        assert not any(m == "flwr" or m.startswith("flwr.") for m in imported), path
        assert not any(m.startswith("fedaudit.audit") for m in imported), path
        assert "GroundTruth" not in source, path


def test_attack_entry_points_take_only_observation_and_budget() -> None:
    for cls in (REGISTRY[name] for name in REGISTRY.names()):
        assert list(inspect.signature(cls.run).parameters) == ["self", "observation", "budget"]
        assert list(inspect.signature(cls.applicable).parameters) == ["self", "observation"]


def test_observation_has_no_ground_truth_field() -> None:
    fields = set(Observation.__dataclass_fields__)
    assert fields == {"round", "client", "model", "global_weights", "update", "protocol", "privacy"}


def _reachable(root: object, limit: int = 200_000) -> set[int]:
    """ids of every object reachable from ``root`` (gc referents, plus tensors' own attributes)."""
    seen: set[int] = set()
    stack = [root]
    while stack and len(seen) < limit:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (type, type(gc))):
            continue
        seen.add(id(obj))
        stack.extend(gc.get_referents(obj))
        if isinstance(obj, torch.Tensor) and obj._base is not None:
            stack.append(obj._base)
    return seen


def ground_truth_in_reach() -> dict[str, int]:
    """Everything a hostile attack can find of a ``GroundTruth`` in its own process: objects on
    any thread's stack (``sys._current_frames()``, walking every caller) and on the heap (``gc``)."""
    in_frames = 0
    for frame in sys._current_frames().values():
        while frame is not None:
            values = list(frame.f_locals.values())
            in_frames += sum(type(v).__name__ == "GroundTruth" for v in values)
            in_frames += sum(type(v).__name__ == "GroundTruth" for x in values for v in gc.get_referents(x))
            frame = frame.f_back
    on_heap = sum(type(o).__name__ == "GroundTruth" for o in gc.get_objects())
    return {"in_frames": in_frames, "on_heap": on_heap}


class SpyAttack:
    """An attack that tries its hardest to find the ground truth: the Observation's object
    graph, every thread's stack and the whole heap of the process it runs in."""

    name = "spy"

    def applicable(self, observation: Observation) -> tuple[bool, str]:
        return True, ""

    def run(self, observation: Observation, budget: Budget) -> Reconstruction:
        graph = _reachable(observation) | _reachable(budget)
        in_graph = sum(type(o).__name__ == "GroundTruth" for o in gc.get_objects() if id(o) in graph)
        return Reconstruction("failed", "spy", diagnostics={"in_graph": in_graph, **ground_truth_in_reach()})


def test_a_frame_walking_attack_finds_no_ground_truth() -> None:
    ((obs, truth),) = client_updates(scenario(*TINY_GPT2, "training.batch_size=2"), 1)
    # The search works: in the auditor's own process it finds the truth the test holds.
    assert ground_truth_in_reach()["on_heap"] >= 1 and ground_truth_in_reach()["in_frames"] >= 1
    record = Auditor([SpyAttack()], budget_seconds=60).audit(obs, truth)[0]
    assert record.status == "failed", record.reason
    assert {k: record.diagnostics[k] for k in ("in_graph", "in_frames", "on_heap")} == {
        "in_graph": 0,
        "in_frames": 0,
        "on_heap": 0,
    }
    assert record.diagnostics["worker_pid"] != os.getpid()
