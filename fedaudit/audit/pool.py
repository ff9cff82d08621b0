"""The audit pool: attacks run in worker processes (or Ray actors), never in the server's.

``ProcessPool`` keeps ``audit.workers`` processes started by ``forkserver``: a clean process,
not a fork of the server, so no ground truth or other client data is in its memory, and the
heavy imports are paid once (preloaded by the fork server). ``RayPool`` keeps Ray actors with
each attack's declared resources, on the run's own Ray or the cluster it joined. Either way:

* what jobs share crosses once per worker under a key (``Held``): the public model and each
  round's global weights (private copies, so a worker cannot write into the federation's
  tensors; process workers map them from shared memory, Ray actors read them from the object
  store), and the attack objects, whose own caches then last across a round's clients;
* the budget is enforced by ending the worker: a job not answered within its budget plus
  ``GRACE_SECONDS`` is a ``timeout`` with the real elapsed time, its process (and any GPU memory
  it held) is gone, and a fresh worker takes its place;
* a worker that dies mid-job (a crash, the OOM killer) is an ``error`` naming its exit code.

pebble's ProcessPool also kills a task past its timeout, but it does not say which process ran
a task, so a worker could not keep the model between jobs, nor a record name its worker.
"""

from __future__ import annotations

import copy
import itertools
import multiprocessing
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import psutil
import torch

from fedaudit.attacks.base import Attack, Observation
from fedaudit.audit.worker import Job, Outcome, RayWorker, serve
from fedaudit.config import AuditConfig
from fedaudit.config.audit import AttackResources

#: Past its budget, an attack's worker gets this long to answer before it is ended.
GRACE_SECONDS = 1.0
#: Time a worker gets to take the model or a round's weights (unpickling, object transfer).
HAND_OVER_SECONDS = 300.0
#: Models and rounds of weights a worker (and the server, for handing over) keeps at once.
HELD = 3
PRELOAD = ["torch", "transformers", "fedaudit.attacks", "fedaudit.audit.worker"]


class WorkerLost(RuntimeError):
    """A worker died or stopped answering while it was handed something."""


class Worker(Protocol):
    """One process that runs jobs: handed objects by key, then jobs with a deadline."""

    held: list[str]

    def put(self, key: str, value: Any, keep: list[str]) -> None: ...
    def run(self, job: Job, timeout: float) -> Outcome | None: ...  # None: past the deadline, ended
    def end(self) -> None: ...


class ProcessWorker:
    """A forkserver process running ``fedaudit.audit.worker.serve`` over a pipe."""

    def __init__(self, context: Any, threads: int) -> None:
        self.held: list[str] = []
        self.conn, child = context.Pipe()
        self.process = context.Process(target=serve, args=(child, threads), daemon=True, name="fedaudit-audit")
        self.process.start()
        child.close()

    def put(self, key: str, value: Any, keep: list[str]) -> None:
        self._send(("put", key, value, keep))
        if not self.conn.poll(HAND_OVER_SECONDS):
            raise WorkerLost(f"took more than {HAND_OVER_SECONDS:g} s to take {key}")
        self._receive()

    def run(self, job: Job, timeout: float) -> Outcome | None:
        self._send(("job", job))
        if not self.conn.poll(timeout):
            return None
        return self._receive()

    def _send(self, message: tuple) -> None:
        try:
            self.conn.send(message)
        except OSError:
            raise WorkerLost(self._death()) from None

    def _receive(self) -> Any:
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            raise WorkerLost(self._death()) from None

    def _death(self) -> str:
        self.process.join(5)
        return f"its worker process {self.process.pid} died (exit code {self.process.exitcode})"

    def end(self) -> None:
        self.process.kill()
        self.process.join(10)
        self.conn.close()


class ProcessPool:
    """``audit.workers`` forkserver processes on this machine (``audit.backend = "process"``)."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers
        self.threads = max(1, (os.cpu_count() or 1) // workers)
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(PRELOAD)

    def start_worker(self, resources: AttackResources) -> Worker:
        return ProcessWorker(self.context, self.threads)

    def share(self, value: Any) -> Any:
        return value

    def close(self) -> None:
        pass


class RayActor:
    """A ``RayWorker`` actor; ending it is ``ray.kill`` (its process, and its GPU memory, go)."""

    def __init__(self, actor: Any) -> None:
        self.held: list[str] = []
        self.actor = actor

    def put(self, key: str, value: Any, keep: list[str]) -> None:
        import ray

        try:
            ray.get(self.actor.put.remote(key, value, keep), timeout=HAND_OVER_SECONDS)
        except ray.exceptions.GetTimeoutError:
            raise WorkerLost(f"the Ray actor did not take {key} in {HAND_OVER_SECONDS:g} s") from None
        except ray.exceptions.RayError as err:
            raise WorkerLost(f"the Ray actor died ({type(err).__name__})") from None

    def run(self, job: Job, timeout: float) -> Outcome | None:
        import ray

        ref = self.actor.run.remote(job)
        ready, _ = ray.wait([ref], timeout=timeout)
        if not ready:
            return None
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as err:
            raise WorkerLost(f"the Ray actor died ({type(err).__name__})") from None

    def end(self) -> None:
        import ray

        ray.kill(self.actor, no_restart=True)


class RayPool:
    """Ray actors with each attack's declared resources (``audit.backend = "ray"``), on the Ray
    this process already runs (Flower's simulation engine starts it) or else one it starts: its
    own (declaring ``audit = workers``), or the cluster ``address`` names."""

    def __init__(self, workers: int = 1, address: str | None = None) -> None:
        self.workers = workers
        self.address = address

    def _connect(self) -> None:
        """Join the Ray this process runs, else start or join one; only when the first worker is
        needed, so that Flower's simulation engine has started its own by then."""
        import logging

        import ray

        from fedaudit.ray_cluster import ray_init_address

        if ray.is_initialized():
            return
        try:
            target = ray_init_address(self.address, source="federation.ray_address =")
            own = {"resources": {"audit": float(self.workers)}} if target == "local" else {}
            ray.init(target, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False, **own)
        except Exception as err:  # noqa: BLE001 - every audit of the run then says why
            raise WorkerLost(f"Ray could not be joined or started: {err}") from None

    def start_worker(self, resources: AttackResources) -> Worker:
        import ray

        self._connect()
        missing = missing_resources(resources, ray.nodes())
        if missing:
            raise WorkerLost(f"no node of the Ray cluster has {missing} (audit.resources)")
        threads = max(1, int(resources.num_cpus) or (os.cpu_count() or 1) // self.workers)
        options = {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus, "resources": resources.custom}
        return RayActor(ray.remote(RayWorker).options(**options).remote(threads))

    def share(self, value: Any) -> Any:
        import ray

        return ray.put(value)  # once per key: every actor then reads the same stored object

    def close(self) -> None:
        pass


def _resident_mb(pid: int | None) -> float:
    try:
        return psutil.Process(pid).memory_info().rss / 2**20 if pid else 0.0
    except psutil.Error:
        return 0.0


def missing_resources(resources: AttackResources, nodes: list[dict]) -> str:
    """What no single alive node of the cluster offers, or "" when one does (Ray would queue the
    actor forever: a named shortage now beats a hang)."""
    wanted = {"CPU": resources.num_cpus, "GPU": resources.num_gpus, **resources.custom}
    wanted = {k: v for k, v in wanted.items() if v > 0}
    for node in nodes:
        have = node.get("Resources") or {}
        if node.get("Alive", True) and all(have.get(k, 0.0) >= v for k, v in wanted.items()):
            return ""
    return ", ".join(f"{k} = {v:g}" for k, v in wanted.items())


class AuditPool:
    """Runs ``(attack, Observation)`` jobs on a backend's workers, at most ``workers`` per
    resource declaration, handing each worker what it lacks first.

    >>> outcome = pool.run(attack, observation, budget_seconds=60)
    """

    def __init__(self, backend: ProcessPool | RayPool) -> None:
        self.backend = backend
        self._lock = threading.Lock()
        self._idle: dict[str, queue.SimpleQueue] = {}
        self._started: dict[str, int] = {}
        self._everyone: list[Worker] = []
        self._shared: OrderedDict[tuple, tuple[str, list, Any]] = OrderedDict()
        self._serial = itertools.count()

    @classmethod
    def for_audit(cls, audit: AuditConfig, ray_address: str | None = None) -> AuditPool:
        if audit.backend == "ray":
            return cls(RayPool(audit.workers, ray_address))
        return cls(ProcessPool(audit.workers))

    def run(
        self, attack: Attack, observation: Observation, budget_seconds: float, resources: AttackResources | None = None
    ) -> Outcome:
        """The attack's Outcome on ``observation``; a worker past the budget is ended (``timeout``)."""
        resources = resources or AttackResources()
        kind = resources.model_dump_json()
        try:
            worker = self._acquire(kind, resources)
        except WorkerLost as err:
            return Outcome("error", reason=f"no audit worker: {err}")
        try:
            job = self._hand_over(worker, attack, observation, budget_seconds)
            start = time.perf_counter()
            outcome = worker.run(job, budget_seconds + GRACE_SECONDS)
        except WorkerLost as err:
            self._lost(kind, worker)
            return Outcome("error", reason=str(err))
        if outcome is None:
            elapsed = time.perf_counter() - start
            pid = getattr(getattr(worker, "process", None), "pid", None)
            memory = _resident_mb(pid)  # what the overrunning worker held when it was stopped
            self._lost(kind, worker)
            reason = f"exceeded its budget of {budget_seconds:g} s; its worker was stopped after {elapsed:.1f} s"
            where = {"worker_pid": pid} if pid else {}
            return Outcome("timeout", reason=reason, seconds=elapsed, peak_mem_mb=memory, worker=where)
        self._idle[kind].put(worker)
        return outcome

    def _acquire(self, kind: str, resources: AttackResources) -> Worker:
        with self._lock:
            idle = self._idle.setdefault(kind, queue.SimpleQueue())
            try:
                return idle.get_nowait()
            except queue.Empty:
                start = self._started.get(kind, 0) < self.backend.workers
                if start:
                    self._started[kind] = self._started.get(kind, 0) + 1
        if not start:
            return idle.get()
        try:
            worker = self.backend.start_worker(resources)
        except BaseException:
            with self._lock:
                self._started[kind] -= 1
            raise
        with self._lock:
            self._everyone.append(worker)
        return worker

    def _lost(self, kind: str, worker: Worker) -> None:
        worker.end()
        with self._lock:
            self._started[kind] -= 1
            self._everyone.remove(worker)

    def _hand_over(self, worker: Worker, attack: Attack, observation: Observation, budget: float) -> Job:
        """The job for ``worker``, after handing it the attack, model and weights it lacks."""
        needed = [
            self._key(("attack", id(attack)), [attack], lambda: attack),
            self._key(("model", id(observation.model)), [observation.model], lambda: copy.deepcopy(observation.model)),
            self._weights_key(observation.global_weights),
        ]
        for key, value in needed:
            if key not in worker.held:
                attacks = [k for k in worker.held if k.startswith("attack")]
                keep = list(dict.fromkeys([*attacks, *worker.held[-HELD:], *(k for k, _ in needed)]))
                worker.put(key, value, keep)
                worker.held = [k for k in keep if k in worker.held or k == key]
        return Job(
            attack_key=needed[0][0],
            model_key=needed[1][0],
            weights_key=needed[2][0],
            round=observation.round,
            client=observation.client,
            update=dict(observation.update),
            protocol=observation.protocol,
            privacy=dict(observation.privacy),
            budget_seconds=budget,
        )

    def _weights_key(self, weights: Mapping[str, torch.Tensor]) -> tuple[str, Any]:
        # The same tensors, unchanged in place (torch's version counter), are the same weights.
        identity = ("weights", *((id(t), t._version) for t in weights.values()))
        return self._key(identity, list(weights.values()), lambda: {k: t.clone() for k, t in weights.items()})

    def _key(self, identity: tuple, sources: list, make: Callable[[], Any]) -> tuple[str, Any]:
        """The key and shared form of the object ``identity`` names, made (a private copy, shared
        once) on first use; the sources stay referenced, so their ids are not reused meanwhile."""
        with self._lock:
            found = self._shared.get(identity)
            if found is None:
                name = f"{identity[0]}-{next(self._serial)}"
                found = (name, sources, self.backend.share(make()))
                self._shared[identity] = found
                while sum(1 for i in self._shared if i[0] != "attack") > HELD:
                    oldest = next(i for i in self._shared if i[0] != "attack")
                    del self._shared[oldest]
            self._shared.move_to_end(identity)
            return found[0], found[2]

    def close(self) -> None:
        """End every worker."""
        with self._lock:
            workers, self._everyone = self._everyone, []
            self._idle.clear()
            self._started.clear()
        for worker in workers:
            worker.end()
        self.backend.close()
