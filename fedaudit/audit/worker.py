"""The worker side of the audit pool: one attack on one Observation, in a process that never
holds ground truth.

A worker process (``fedaudit.audit.pool``) or Ray actor keeps what several jobs share (the
public model, a round's global weights, the attack objects, whose own caches then last across
the clients of a round) under keys the server chooses, and runs jobs one at a time. Only the
Observation's parts and the attack cross over; the Reconstruction comes back. Ground truth and
scoring stay in the server process, so an attack cannot reach them by walking frames or the
heap: they are not in its process.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import psutil
import torch

from fedaudit.attacks.base import Attack, Budget, BudgetExceeded, Observation, Protocol, Reconstruction


@dataclass
class Job:
    """One audit as it crosses to a worker: the attack and the Observation's parts, with the
    keys of what the worker already holds (the model bundle, the round's global weights)."""

    attack_key: str
    model_key: str
    weights_key: str
    round: int
    client: str
    update: dict[str, torch.Tensor]
    protocol: Protocol
    privacy: dict[str, float]
    budget_seconds: float


@dataclass
class Outcome:
    """What came back: ``ok`` with the Reconstruction, or ``not_applicable`` / ``error`` /
    ``timeout`` with the reason."""

    kind: Literal["ok", "not_applicable", "error", "timeout"]
    reconstruction: Reconstruction | None = None
    reason: str = ""
    seconds: float = 0.0
    peak_mem_mb: float = 0.0
    worker: dict[str, Any] = field(default_factory=dict)
    """Where it ran: ``worker_pid`` and, on Ray, ``worker_node``."""


class PeakMemory:
    """The peak memory of this worker while a block runs: the CUDA allocator's peak when CUDA is
    in use, else the process's resident set sampled every 5 ms. Whole, not the growth over the
    block: a warm worker keeps what earlier jobs allocated, so growth would shrink job by job."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        self._cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        if self._cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            self._proc = psutil.Process()
            self._peak = self._proc.memory_info().rss
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
        self.peak_mb = peak / 2**20


class Held:
    """What a worker keeps between jobs, by key; ``keep`` drops every key the server no longer
    lists (the server mirrors it, so it knows what to send)."""

    def __init__(self) -> None:
        self.objects: dict[str, Any] = {}

    def put(self, key: str, value: Any, keep: list[str]) -> None:
        self.objects = {k: v for k, v in self.objects.items() if k in keep}
        self.objects[key] = value


def run_job(job: Job, held: Held) -> Outcome:
    """Run ``job`` with its budget; whatever the attack raises or returns becomes the Outcome."""
    attack: Attack = held.objects[job.attack_key]
    observation = Observation(
        round=job.round,
        client=job.client,
        model=held.objects[job.model_key],
        global_weights=held.objects[job.weights_key],
        update=job.update,
        protocol=job.protocol,
        privacy=job.privacy,
    )
    here = {"worker_pid": os.getpid()}
    try:
        applies, why = attack.applicable(observation)
    except Exception as err:  # noqa: BLE001 - recorded like a failing run
        return Outcome("error", reason=f"applicable() raised {type(err).__name__}: {err}", worker=here)
    if not applies:
        return Outcome("not_applicable", reason=why, worker=here)
    start = time.perf_counter()
    with PeakMemory() as memory:
        try:
            value: Any = attack.run(observation, Budget(job.budget_seconds))
            outcome = _judged(value)
        except BudgetExceeded as err:
            where = f" ({err.stage})" if err.stage else ""
            outcome = Outcome("timeout", reason=f"exceeded its budget of {job.budget_seconds:g} s{where}")
        except Exception as err:  # noqa: BLE001 - everything an attack raises is recorded
            outcome = Outcome("error", reason=f"{type(err).__name__}: {err}")
    outcome.seconds, outcome.peak_mem_mb = time.perf_counter() - start, memory.peak_mb
    outcome.worker = here
    return outcome


def _judged(value: Any) -> Outcome:
    if isinstance(value, Reconstruction):
        return Outcome("ok", reconstruction=value)
    return Outcome("error", reason=f"returned {type(value).__name__}, not a Reconstruction")


def serve(conn: Any, threads: int) -> None:
    """A worker process's loop: ``("put", key, value, keep)`` is acknowledged with ``"held"``,
    ``("job", job)`` answered with its Outcome, until the server closes the pipe."""
    torch.set_num_threads(threads)  # the pool's workers share the machine's cores
    held = Held()
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] == "put":
            held.put(*message[1:])
            conn.send("held")
            continue
        outcome = run_job(message[1], held)
        try:
            conn.send(outcome)
        except Exception as err:  # noqa: BLE001 - e.g. a reconstruction that cannot be pickled
            reason = f"its Reconstruction cannot leave the worker ({type(err).__name__}: {err})"
            conn.send(Outcome("error", reason=reason, seconds=outcome.seconds, worker=outcome.worker))


class RayWorker:
    """The same worker as a Ray actor (``audit.backend = "ray"``); ``fedaudit.audit.pool`` makes
    it remote with the attack's declared resources."""

    def __init__(self, threads: int) -> None:
        torch.set_num_threads(threads)
        self.held = Held()

    def put(self, key: str, value: Any, keep: list[str]) -> str:
        self.held.put(key, value, keep)
        return "held"

    def run(self, job: Job) -> Outcome:
        import ray

        outcome = run_job(job, self.held)
        outcome.worker["worker_node"] = ray.get_runtime_context().get_node_id()
        return outcome
