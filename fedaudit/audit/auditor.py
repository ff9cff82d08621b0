"""The Auditor: hand each attack and Observation to a worker, score what comes back, record it.

Attacks run in worker processes or Ray actors (``fedaudit.audit.pool``); ground truth and
scoring stay here. An attack that raises, overruns its budget (its worker is then ended) or
returns something malformed becomes a record (status ``error`` or ``timeout``); it never breaks
the round. ``submit`` returns at once with one future per attack (``audit.workers`` audits run
at a time); each record is handed to ``sink`` as it is made.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from fedaudit.attacks import REGISTRY
from fedaudit.attacks.base import Attack, Observation, Reconstruction
from fedaudit.audit.comparison import compare
from fedaudit.audit.plan import attack_options
from fedaudit.audit.pool import AuditPool, ProcessPool
from fedaudit.audit.records import AttackRecord
from fedaudit.audit.scoring import preview, score
from fedaudit.audit.truth import GroundTruth
from fedaudit.audit.worker import Outcome
from fedaudit.config import AuditConfig
from fedaudit.config.audit import AttackResources

_DEFAULT_POOL: list[AuditPool] = []
#: The server's own tensor work (scoring here, evaluating the global model) runs one piece at a
#: time: torch splits a reduction by the threads it gets, so float results would otherwise
#: depend on what else runs (overlap and blocking would record different losses).
SERVER_WORK = threading.Lock()


def default_pool() -> AuditPool:
    """One worker process shared by the Auditors built without a pool (tests, ``fedaudit attack``)."""
    if not _DEFAULT_POOL:
        _DEFAULT_POOL.append(AuditPool(ProcessPool(1)))
    return _DEFAULT_POOL[0]


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
        pool: AuditPool | None = None,
        workers: int = 1,
        resources: Callable[[str], AttackResources] | None = None,
    ) -> None:
        self.attacks = list(attacks)
        self.budget_seconds = budget_seconds
        self.sink = sink
        self.max_examples = max_examples
        """Examples a record keeps (recovered and compared): ``audit.max_examples_per_record``."""
        self.pool = pool or default_pool()
        self.resources = resources or (lambda name: AttackResources())
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fedaudit-audit")
        self._sinking = threading.Lock()
        self.server_work = SERVER_WORK

    @classmethod
    def for_scenario(
        cls,
        audit: AuditConfig,
        sink: Callable[[AttackRecord], None] | None = None,
        names: Sequence[str] | None = None,
        pool: AuditPool | None = None,
    ) -> Auditor:
        """The attacks ``audit.attacks`` (or ``names``) names, with their ``[audit.<name>]`` options,
        on ``pool`` (default: one shared worker process) with ``audit.workers`` audits at a time."""
        attacks = [REGISTRY.make(name, audit.device, attack_options(audit, name)) for name in (names or audit.attacks)]
        return cls(
            attacks, audit.budget_seconds, sink, audit.max_examples_per_record, pool, audit.workers, audit.resources_for
        )

    def submit(
        self,
        observation: Observation,
        truth: GroundTruth | None = None,
        on_start: Callable[[str, float], None] | None = None,
    ) -> list[Future[AttackRecord]]:
        """One future record per attack, each handed to ``sink`` when made; ``on_start(attack
        name, budget seconds)`` is called as each attack starts (live progress)."""
        return [self._executor.submit(self._audit_one, a, observation, truth, on_start) for a in self.attacks]

    def audit(
        self,
        observation: Observation,
        truth: GroundTruth | None = None,
        on_start: Callable[[str, float], None] | None = None,
    ) -> list[AttackRecord]:
        """``submit``, waiting for the records."""
        return [future.result() for future in self.submit(observation, truth, on_start)]

    def close(self) -> None:
        """Wait for the audits submitted, then end this auditor's workers (unless shared)."""
        self._executor.shutdown(wait=True)
        if self.pool not in _DEFAULT_POOL:
            self.pool.close()

    def _audit_one(
        self,
        attack: Attack,
        observation: Observation,
        truth: GroundTruth | None,
        on_start: Callable[[str, float], None] | None,
    ) -> AttackRecord:
        # The client's reported budget (epsilon, delta) goes with every audit of its update.
        record = AttackRecord(
            round=observation.round,
            client=observation.client,
            attack=attack.name,
            status="",
            diagnostics=dict(observation.privacy),
        )
        if on_start is not None:
            on_start(attack.name, self.budget_seconds)
        try:
            outcome = self.pool.run(attack, observation, self.budget_seconds, self.resources(attack.name))
        except Exception as err:  # noqa: BLE001 - a record is never lost, even to a fault of the pool
            outcome = Outcome("error", reason=f"the audit pool failed: {type(err).__name__}: {err}")
        record.diagnostics.update(outcome.worker)
        if outcome.reconstruction is None:
            record.status, record.reason = outcome.kind, outcome.reason
        else:
            with self.server_work:
                self._verdict(record, outcome.reconstruction, observation, truth)
        if outcome.kind != "not_applicable":
            record.seconds, record.peak_mem_mb = round(outcome.seconds, 4), round(outcome.peak_mem_mb, 2)
        if self.sink is not None:
            with self._sinking:
                self.sink(record)
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
