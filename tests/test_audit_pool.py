"""The audit pool: attacks run in worker processes that the auditor ends at the deadline.

What an attack does in its worker (overrun, die, return junk) becomes a record, and the next
audit runs on a fresh worker; what several audits share crosses to a worker once.
"""

from __future__ import annotations

import os
import time

import psutil
import pytest
import torch

from fedaudit.attacks import REGISTRY, Budget, Observation, Reconstruction
from fedaudit.audit.auditor import Auditor
from fedaudit.audit.pool import GRACE_SECONDS, AuditPool, ProcessPool, ProcessWorker
from tests.conftest import TINY_GPT2
from tests.helpers import client_updates, scenario


class Spins:
    """Burns CPU in torch and never looks at its budget."""

    name = "spins"

    def applicable(self, observation: Observation) -> tuple[bool, str]:
        return True, ""

    def run(self, observation: Observation, budget: Budget) -> Reconstruction:
        x = torch.randn(256, 256)
        while True:
            x = torch.tanh(x @ x)


class Dies:
    name = "dies"

    def applicable(self, observation: Observation) -> tuple[bool, str]:
        return True, ""

    def run(self, observation: Observation, budget: Budget) -> Reconstruction:
        os._exit(7)


class Unsendable:
    name = "unsendable"

    def applicable(self, observation: Observation) -> tuple[bool, str]:
        return True, ""

    def run(self, observation: Observation, budget: Budget) -> Reconstruction:
        return Reconstruction("partial", diagnostics={"hook": lambda: None})


@pytest.fixture(scope="module")
def updates():
    return client_updates(scenario(*TINY_GPT2, "training.batch_size=2"), 3)


@pytest.fixture()
def pool():
    pool = AuditPool(ProcessPool(1))
    yield pool
    pool.close()


def _idle_after(pid: int) -> bool:
    """The process is gone, or uses no CPU over half a second."""
    try:
        return psutil.Process(pid).cpu_percent(interval=0.5) < 5.0
    except psutil.NoSuchProcess:
        return True


def test_a_dager_audit_past_its_budget_is_stopped_within_the_grace(cola_path) -> None:
    sc = scenario(
        f"data.source={cola_path}",
        "model.config={n_layer=3, n_embd=768, n_head=12}",
        "training.batch_size=32",  # about 6 s of DAGER on a quiet 2-core CPU (B = 8 can finish in 1 s)
        "audit.attacks=['dager']",
    )
    ((observation, truth),) = client_updates(sc, 1)
    auditor = Auditor([REGISTRY.make("dager", "cpu")], budget_seconds=1.0)
    started = time.monotonic()
    (record,) = auditor.audit(observation, truth)
    # Stopped by the pool, or DAGER noticed its budget itself: a timeout, or what it had verified by then.
    assert record.status == "timeout" or "time budget ran out" in record.reason, record.reason
    assert record.seconds <= 1.0 + 2.0 and time.monotonic() - started < 60
    assert _idle_after(record.diagnostics["worker_pid"])


def test_an_attack_that_ignores_its_budget_loses_its_worker(updates, pool) -> None:
    auditor = Auditor([Spins()], budget_seconds=0.5, pool=pool)
    (record,) = auditor.audit(*updates[0])
    assert record.status == "timeout" and "its worker was stopped" in record.reason
    assert 0.5 <= record.seconds <= 0.5 + GRACE_SECONDS + 1.0
    assert record.peak_mem_mb > 100  # what the worker held when it was stopped: torch and the model at least
    spun = record.diagnostics["worker_pid"]
    assert not psutil.pid_exists(spun) or psutil.Process(spun).status() == psutil.STATUS_ZOMBIE
    (after,) = Auditor([REGISTRY.make("embedding-rows")], budget_seconds=60, pool=pool).audit(*updates[1])
    assert after.status == "exact" and after.diagnostics["worker_pid"] != spun


def test_a_worker_that_dies_is_an_error_and_is_replaced(updates, pool) -> None:
    dead, unsent, fine = Auditor([Dies(), Unsendable(), REGISTRY.make("embedding-rows")], 60, pool=pool).audit(
        *updates[0]
    )
    assert dead.status == "error" and "exit code 7" in dead.reason
    assert unsent.status == "error" and "cannot leave the worker" in unsent.reason
    assert fine.status == "exact"


def test_what_audits_share_crosses_to_a_worker_once(updates, pool, monkeypatch) -> None:
    handed: list[str] = []
    put = ProcessWorker.put
    monkeypatch.setattr(ProcessWorker, "put", lambda self, key, *rest: handed.append(key) or put(self, key, *rest))
    auditor = Auditor([REGISTRY.make("embedding-rows"), REGISTRY.make("labels")], 60, pool=pool)
    # Three clients of one round: the same model and the same global weight tensors.
    for observation, truth in updates:
        rows, labels = auditor.audit(observation, truth)
        assert rows.status == "exact" and labels.status not in ("error", "timeout"), labels.reason
    assert sorted(k.split("-")[0] for k in handed) == ["attack", "attack", "model", "weights"]
    assert len(set(handed)) == len(handed)
    assert all(w is updates[0][0].global_weights[k] for k, w in updates[1][0].global_weights.items())


def test_a_ray_declaration_no_node_can_meet_is_named_at_once() -> None:
    from fedaudit.audit.pool import missing_resources
    from fedaudit.config.audit import AttackResources

    nodes = [
        {"Alive": True, "Resources": {"CPU": 8.0}},
        {"Alive": True, "Resources": {"CPU": 1.0, "audit": 2.0}},
        {"Alive": False, "Resources": {"CPU": 4.0, "GPU": 1.0, "audit": 1.0}},
    ]
    assert missing_resources(AttackResources(), nodes) == ""
    assert missing_resources(AttackResources(num_cpus=1), nodes) == ""
    assert missing_resources(AttackResources(num_cpus=2), nodes) == "CPU = 2, audit = 1"  # not on one node
    assert missing_resources(AttackResources(num_gpus=1), nodes) == "GPU = 1, audit = 1"  # the GPU node is dead
