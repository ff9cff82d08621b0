"""The Auditor: run each attack on an Observation within its budget, score it, record it.

An attack that raises, overruns its budget or returns something malformed becomes a record
(status ``error`` or ``timeout``); it never breaks the round.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psutil
import torch

from fedaudit.attacks import REGISTRY
from fedaudit.attacks.base import Attack, Budget, BudgetExceeded, Observation, Reconstruction
from fedaudit.audit.comparison import compare
from fedaudit.audit.plan import attack_options
from fedaudit.audit.records import AttackRecord
from fedaudit.audit.scoring import preview, score
from fedaudit.audit.truth import GroundTruth
from fedaudit.config import AuditConfig

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
    """Runs each attack on every observation it is given and hands each record to ``sink``.

    >>> auditor = Auditor.for_scenario(scenario.audit, sink=store.append)
    >>> records = auditor.audit(observation, truth)
    """

    def __init__(
        self,
        attacks: Sequence[Attack],
        budget_seconds: float,
        sink: Callable[[AttackRecord], None] | None = None,
        max_examples: int = 64,
    ) -> None:
        self.attacks = list(attacks)
        self.budget_seconds = budget_seconds
        self.sink = sink
        self.max_examples = max_examples
        """Examples a record keeps (recovered and compared): ``audit.max_examples_per_record``."""

    @classmethod
    def for_scenario(
        cls, audit: AuditConfig, sink: Callable[[AttackRecord], None] | None = None, names: Sequence[str] | None = None
    ) -> Auditor:
        """The attacks ``audit.attacks`` (or ``names``) names, with their ``[audit.<name>]`` options."""
        attacks = [REGISTRY.make(name, audit.device, attack_options(audit, name)) for name in (names or audit.attacks)]
        return cls(attacks, audit.budget_seconds, sink, audit.max_examples_per_record)

    def audit(
        self,
        observation: Observation,
        truth: GroundTruth | None = None,
        on_start: Callable[[str, float], None] | None = None,
    ) -> list[AttackRecord]:
        """One record per attack, each handed to ``sink``; ``on_start(attack name, budget seconds)``
        is called as each attack starts (live progress)."""
        records = []
        for attack in self.attacks:
            if on_start is not None:
                on_start(attack.name, self.budget_seconds)
            record = self._audit_one(attack, observation, truth)
            if self.sink is not None:
                self.sink(record)
            records.append(record)
        return records

    def _audit_one(self, attack: Attack, observation: Observation, truth: GroundTruth | None) -> AttackRecord:
        # The client's reported budget (epsilon, delta) goes with every audit of its update.
        record = AttackRecord(
            round=observation.round,
            client=observation.client,
            attack=attack.name,
            status="",
            diagnostics=dict(observation.privacy),
        )
        ok, why = attack.applicable(observation)
        if not ok:
            record.status, record.reason = "not_applicable", why
            return record
        budget = Budget(self.budget_seconds)
        start = time.perf_counter()
        with PeakMemory() as memory:
            outcome, value = _run_with_deadline(attack, observation, budget)
        record.seconds, record.peak_mem_mb = round(time.perf_counter() - start, 4), round(memory.peak_mb, 2)
        if outcome == "timeout" or isinstance(value, BudgetExceeded):
            record.status, record.reason = "timeout", f"exceeded its budget of {self.budget_seconds:g} s"
        elif outcome == "error":
            record.status, record.reason = "error", f"{type(value).__name__}: {value}"
        elif not isinstance(value, Reconstruction):
            record.status, record.reason = "error", f"returned {type(value).__name__}, not a Reconstruction"
        else:
            self._verdict(record, value, observation, truth)
        return record

    def _verdict(
        self, record: AttackRecord, rec: Reconstruction, observation: Observation, truth: GroundTruth | None
    ) -> None:
        """The attack's verdict, what it recovered and, with ground truth, its scores and the
        side-by-side comparison. Anything that fails here (a metric that cannot be computed)
        turns the record into an ``error`` with the reason: it never leaves the record."""
        record.status, record.reason = rec.status, rec.reason
        record.diagnostics.update(rec.diagnostics)
        prefix = image_prefix(record)
        try:
            record.reconstruction, record.images = preview(rec, observation.model, self.max_examples, prefix)
            if truth is not None:
                record.metrics = score(rec, truth, observation.model)
                record.comparison, originals = compare(rec, truth, observation.model, self.max_examples, prefix)
                record.images.update(originals)
        except Exception as err:  # noqa: BLE001 - e.g. more predictions than examples
            record.status, record.metrics, record.comparison, record.images = "error", {}, None, {}
            record.reason = f"unscorable reconstruction: {type(err).__name__}: {err}"


def image_prefix(record: AttackRecord) -> str:
    """Where a record's images go in the run directory; the client id is untrusted, so only
    safe characters of it are kept, with a digest when any were dropped."""
    client = re.sub(r"[^A-Za-z0-9_-]", "_", record.client)[:40]
    if client != record.client or not client:
        client += "-" + hashlib.sha256(record.client.encode("utf-8", "replace")).hexdigest()[:8]
    return f"images/round-{record.round:03d}/client-{client}-{record.attack}"
