"""The Auditor: run each attack on an Observation within its budget, score it, record it.

An attack that raises, overruns its budget or returns something malformed becomes a record
(status ``error`` or ``timeout``); it never breaks the round.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psutil
import torch

from fedaudit.attacks import Attack, BudgetExceeded, Reconstruction, make_attack
from fedaudit.attacks.base import Budget
from fedaudit.audit.observation import GroundTruth, Observation
from fedaudit.audit.scoring import preview, score

#: Extra wall time an attack gets past its budget to notice it (``Budget.check``) before the
#: auditor stops waiting for it.
GRACE_SECONDS = 5.0


class PeakMemory:
    """Peak memory above the starting point while a block runs: CUDA allocator peak when CUDA is
    in use, else the process's resident set sampled every 5 ms (whole process, so concurrent work
    counts too)."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        self._cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        if self._cuda:
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            self._proc = psutil.Process()
            self._base = self._peak = self._proc.memory_info().rss
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, self._proc.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        if self._cuda:
            peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, self._proc.memory_info().rss)
        self.peak_mb = max(0.0, (peak - self._base) / 2**20)


def _run_with_deadline(attack: Attack, observation: Observation, budget: Budget) -> tuple[str, Any]:
    """Run in a worker thread; ('ok', result) | ('error', exc) | ('timeout', None)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["ok"] = attack.run(observation, budget)
        except BaseException as err:  # noqa: BLE001 - everything an attack raises is recorded
            outcome["error"] = err

    worker = threading.Thread(target=target, name=f"attack-{attack.name}", daemon=True)
    worker.start()
    worker.join(budget.seconds + GRACE_SECONDS)
    if worker.is_alive():
        return "timeout", None
    if "error" in outcome:
        return "error", outcome["error"]
    return "ok", outcome["ok"]


class Auditor:
    """Runs the configured attacks on every observation and hands each record to ``sink``."""

    def __init__(self, attacks: list[str], budget_seconds: float,
                 sink: Callable[[dict[str, Any]], None] | None = None, device: str = "auto",
                 options: dict[str, dict[str, Any]] | None = None) -> None:
        self.attacks = [make_attack(name, device, (options or {}).get(name)) for name in attacks]
        self.budget_seconds = budget_seconds
        self.sink = sink

    def audit(self, observation: Observation, truth: GroundTruth | None = None) -> list[dict[str, Any]]:
        records = []
        for attack in self.attacks:
            record = self._audit_one(attack, observation, truth)
            if self.sink is not None:
                self.sink(record)
            records.append(record)
        return records

    def _audit_one(self, attack: Attack, observation: Observation, truth: GroundTruth | None) -> dict[str, Any]:
        record: dict[str, Any] = {
            "type": "attack", "round": observation.round, "client": observation.client, "attack": attack.name,
            "status": "", "reason": "", "metrics": {}, "seconds": 0.0, "peak_mem_mb": 0.0,
            "diagnostics": dict(observation.privacy),  # the client's reported budget (epsilon, delta)
        }
        ok, why = attack.applicable(observation)
        if not ok:
            record.update(status="not_applicable", reason=why)
            return record
        budget = Budget(self.budget_seconds)
        start = time.perf_counter()
        with PeakMemory() as memory:
            outcome, value = _run_with_deadline(attack, observation, budget)
        record.update(seconds=round(time.perf_counter() - start, 4), peak_mem_mb=round(memory.peak_mb, 2))
        if outcome == "timeout" or isinstance(value, BudgetExceeded):
            record.update(status="timeout", reason=f"exceeded its budget of {self.budget_seconds:g} s")
            return record
        if outcome == "error":
            record.update(status="error", reason=f"{type(value).__name__}: {value}")
            return record
        if not isinstance(value, Reconstruction):
            record.update(status="error", reason=f"returned {type(value).__name__}, not a Reconstruction")
            return record
        record.update(status=value.status, reason=value.reason, diagnostics={**record["diagnostics"], **value.diagnostics})
        record["reconstruction"] = preview(value, observation.model)
        if truth is not None:
            try:
                record["metrics"] = score(value, truth, observation.model)
            except ValueError as err:  # e.g. more predictions than examples
                record.update(status="error", reason=f"unscorable reconstruction: {err}", metrics={})
        return record
