"""Process hygiene: a run leaves no process behind, however it ends.

Flower's simulation engine starts Ray in the run's process: a GCS server, a raylet, agents and
one worker per virtual client, all in the run's process group. A plain ``kill -9`` of the run
orphans them (Ray's dashboard and runtime-env agents outlive their driver for minutes). So
``fedaudit run`` is a thin supervisor: it starts the real run as a child that leads a new
process group (``start_new_session``), forwards Ctrl-C and SIGTERM to it (``FORWARDED``), and when the child
ends kills whatever is left in that group. The child gets SIGHUP if the supervisor dies
(``PR_SET_PDEATHSIG``), so even ``kill -9`` of the supervisor ends in the child's clean stop:
records already written, the report of what finished, then its own group ended. (The child
runs Flower off its main thread, so its own handlers, not Ray's, get these signals:
``fedaudit.cli``.)
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import psutil

#: Set in a supervised child's environment to the supervisor's pid: the child runs the command.
SUPERVISED_ENV = "FEDAUDIT_SUPERVISED"
#: Seconds a child gets to stop cleanly after a forwarded signal before its group is killed.
STOP_GRACE_SECONDS = 20.0
#: Seconds processes of an ending group get between SIGTERM and SIGKILL.
KILL_GRACE_SECONDS = 2.0
_PR_SET_PDEATHSIG = 1
try:
    _LIBC = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - no C library to load
    _LIBC = None


def supervised() -> bool:
    """This process is a supervised run (its environment names the supervisor's pid)."""
    return os.environ.get(SUPERVISED_ENV, "").isdigit()


def supervisor_alive() -> bool:
    """The supervisor that started this run is still its parent."""
    return os.getppid() == int(os.environ.get(SUPERVISED_ENV) or 0)


def die_with_parent(sig: int = signal.SIGHUP) -> Callable[[], None]:
    """A ``preexec_fn`` asking Linux to send ``sig`` to the child when this process (its parent)
    dies. The parent's pid and libc are taken here, before the fork, so the child only makes
    the one call, and sees a parent that died before it could (its parent pid changed)."""
    parent = os.getpid()
    prctl = getattr(_LIBC, "prctl", None)

    def preexec() -> None:
        if prctl is None:  # not Linux: no parent-death signal
            return
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return preexec


def run_supervised(argv: Sequence[str]) -> int:
    """Run ``python -m fedaudit.cli *argv`` as a child leading its own process group; returns
    its exit status (128 + signal for a signal)."""
    child = subprocess.Popen(
        [sys.executable, "-m", "fedaudit.cli", *argv],
        env={**os.environ, SUPERVISED_ENV: str(os.getpid())},
        start_new_session=True,
        preexec_fn=die_with_parent(),  # the supervisor forks from its one thread
    )
    stopping: list[float] = []

    def forward(signum: int, _frame: object) -> None:
        if stopping:  # a second Ctrl-C: no more waiting
            end_group(child.pid, grace=0.0)
        stopping.append(time.monotonic())
        # Only the child: it stops its Ray processes itself, after writing what finished.
        _quietly(lambda: os.kill(child.pid, FORWARDED.get(signum, signal.SIGUSR1)))

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    while True:
        try:
            code = child.wait(timeout=1.0)
            break
        except subprocess.TimeoutExpired:
            if stopping and time.monotonic() - stopping[0] > STOP_GRACE_SECONDS:
                end_group(child.pid, grace=0.0)
    end_group(child.pid)
    return code if code >= 0 else 128 - code


#: Why a supervised run stopped, by the signal it got.
STOP_REASONS = {
    signal.SIGINT: "Ctrl-C (SIGINT)",
    signal.SIGUSR1: "SIGTERM",
    signal.SIGTERM: "SIGTERM",
    signal.SIGHUP: "SIGHUP: the supervising process or terminal went away",
}
#: What the supervisor sends its child for each signal it gets. SIGTERM travels as SIGUSR1: in
#: the child, Ray's core worker has a C-level failure handler on SIGTERM that prints a stack
#: and re-raises it (the child then aborts); SIGUSR1 and SIGINT reach Python's handlers alone.
FORWARDED = {signal.SIGINT: signal.SIGINT, signal.SIGTERM: signal.SIGUSR1, signal.SIGHUP: signal.SIGHUP}


def stop_on_signals() -> None:
    """In the child: SIGINT, SIGUSR1 (a forwarded SIGTERM), SIGTERM and SIGHUP stop the run
    (``KeyboardInterrupt`` naming why)."""

    def interrupt(signum: int, _frame: object) -> None:
        # Once: a second interrupt would cut the stop short (click makes it "Aborted!", exit 1).
        for sig in STOP_REASONS:
            signal.signal(sig, lambda *_: None)
        raise KeyboardInterrupt(STOP_REASONS.get(signum, signal.Signals(signum).name))

    for sig in STOP_REASONS:
        signal.signal(sig, interrupt)


def silence_output() -> None:
    """Send this process's stdout and stderr to /dev/null: once a stopped run has said what it
    kept, the tracebacks of Ray actors being ended would only bury that line."""
    sys.stdout.flush()
    sys.stderr.flush()
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)


def end_group(pgid: int | None = None, grace: float = KILL_GRACE_SECONDS) -> list[int]:
    """SIGTERM every process of process group ``pgid`` (default: this process's) except this
    process, SIGKILL those still alive after ``grace`` seconds (at once with ``grace = 0``);
    returns their pids."""
    pgid = os.getpgid(0) if pgid is None else pgid
    members = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and os.getpgid(proc.pid) == pgid:
                members.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    for proc in members:
        _quietly(proc.terminate if grace > 0 else proc.kill)
    _, alive = psutil.wait_procs(members, timeout=grace) if grace > 0 else ([], members)
    for proc in alive:
        _quietly(proc.kill)
    psutil.wait_procs(alive, timeout=2.0)
    return [p.pid for p in members]


def _quietly(action) -> None:
    try:
        action()
    except (psutil.Error, ProcessLookupError):
        pass
