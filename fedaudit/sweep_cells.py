"""The cell subprocesses of ``fedaudit sweep``: one lock per running cell, process groups that end
with the sweep, and SIGTERM/Ctrl-C turned into an orderly stop.

* A running cell holds ``<sweep>/cell-NN.lock``, created with ``O_EXCL`` (mode 0600), holding the
  pid and start time (psutil's ``create_time``) of the cell process and of the sweep. The lock is
  live while either process runs; the start time makes a reused pid not count. A stale lock is
  removed and the cell runs; a live one means another sweep runs that cell, so it is skipped.
* Each cell leads its own process group (``start_new_session``), so the sweep can end it whole,
  and gets SIGTERM when the sweep dies (``PR_SET_PDEATHSIG``), so even ``kill -9`` of the sweep
  ends its cells (a cell's ``fedaudit run`` stops its own run and Ray on SIGTERM).
* ``stop_on_signals`` turns SIGTERM and SIGINT into ``Stopped`` in the main thread; ``Cells.stop``
  then ends every running cell: SIGTERM to its group, SIGKILL after a grace period, and SIGKILL
  for its descendants still alive then (a cell's run and Ray lead process groups of their own).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import psutil

from fedaudit import processes
from fedaudit.safety import write_private

#: Seconds a stopped cell gets between SIGTERM and SIGKILL: a cell's run writes its records and
#: report and ends Ray within ~3-6 s on 2 busy cores; 8 s keeps a whole stop within 10 s.
STOP_GRACE_SECONDS = 8.0
#: A lock younger than this that holds no JSON yet is still being written by its creator.
LOCK_WRITE_SECONDS = 10.0


def _alive(pid: Any, started: Any) -> bool:
    """``pid`` runs and started at ``started``: a reused pid does not count (1 s: psutil's boot
    time, from which it derives create_time, can drift when the clock is adjusted)."""
    try:
        proc = psutil.Process(int(pid))
        return abs(proc.create_time() - float(started)) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, TypeError, ValueError):
        return False


def lock_holder(lock: Path) -> int | None:
    """The pid of the live cell (or sweep) holding ``lock``; None when there is none or it is stale
    (0: a lock created so recently that its creator has not written it yet)."""
    try:
        text, age = lock.read_text(encoding="utf-8"), time.time() - lock.stat().st_mtime
        info = json.loads(text)
    except FileNotFoundError:
        return None
    except ValueError:
        return 0 if age < LOCK_WRITE_SECONDS else None
    for pid, started in (("pid", "started"), ("sweep_pid", "sweep_started")):
        if isinstance(info, dict) and _alive(info.get(pid), info.get(started)):
            return int(info[pid])
    return None


def lock_info(pid: int) -> str:
    """The lock's JSON for cell process ``pid`` (this sweep's pid until the cell has started)."""
    me = psutil.Process()
    started = me.create_time() if pid == me.pid else psutil.Process(pid).create_time()
    return json.dumps({"pid": pid, "sweep_pid": me.pid, "started": started, "sweep_started": me.create_time()})


def acquire_lock(lock: Path) -> int | None:
    """Create ``lock`` for this sweep (removing a stale one); None, or the pid of its live holder."""
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            holder = lock_holder(lock)
            if holder is not None:
                return holder
            lock.unlink(missing_ok=True)  # stale: whoever held it is gone
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(lock_info(os.getpid()))
        return None
    return lock_holder(lock) or 0  # another sweep took it between our unlink and our create


class Cells:
    """The cell subprocesses running now, so that a signal to the sweep can end them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: dict[int, subprocess.Popen] = {}
        self.stopped = ""
        """Why the sweep is stopping ("" while it is not): no cell starts then."""

    def run(self, index: int, cmd: list[str], log: IO[str], lock: Path) -> int | None:
        """Run ``cmd`` as cell ``index`` (holding ``lock``, which then names it); its exit status,
        or None when the sweep is stopping."""
        with self._lock:
            if self.stopped:
                return None
            # PR_SET_PDEATHSIG fires when the forking *thread* ends. Cells start on the workers of
            # the sweep's ThreadPoolExecutor, which live until the pool shuts down, after every cell.
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=processes.die_with_parent(signal.SIGTERM),
            )
            self._procs[index] = proc
        try:
            with contextlib.suppress(psutil.Error):  # psutil.Error: the cell has already ended
                write_private(lock, lock_info(proc.pid))
            return proc.wait()
        finally:
            with self._lock:
                self._procs.pop(index, None)

    def stop(self, reason: str) -> None:
        """Start no more cells and end the running ones."""
        with self._lock:
            self.stopped = reason
            procs = list(self._procs.values())
        end_cells(procs)


def end_cells(procs: list[subprocess.Popen], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM each cell's process group, SIGKILL it after ``grace`` seconds, then SIGKILL the
    cells' descendants still alive (collected first: once a cell dies they are no longer its)."""
    tree: list[psutil.Process] = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            tree += psutil.Process(proc.pid).children(recursive=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    for child in list(tree):  # and what they started during the grace period
        with contextlib.suppress(psutil.Error):
            tree += child.children(recursive=True) if child.is_running() else []
    for child in tree:
        with contextlib.suppress(psutil.Error):
            child.kill()  # psutil checks the start time first: a reused pid is left alone
    psutil.wait_procs(tree, timeout=5.0)


class Stopped(Exception):
    """The sweep got SIGTERM or SIGINT."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGINT raise ``Stopped`` in the main thread, once: later ones are dropped while
    the sweep ends its cells. Outside the main thread (a library caller) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame: object) -> None:
        for sig in previous:
            signal.signal(sig, lambda *_: None)  # not SIG_IGN, which a cell started meanwhile would inherit
        raise Stopped(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
