"""Which rounds still have audits running, and what waits for them.

With ``audit.schedule = "overlap"`` round t + 1 trains while round t is audited. Training
waits (back-pressure) while more than ``audit.max_pending_rounds`` rounds have audits running,
and what marks a round finished (its utility record, which ``--resume`` counts on, and the
report of the rounds so far) waits until that round, and every earlier one, is fully audited:
a run killed mid-audit then resumes from the last round whose records are all written.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from functools import partial


class AuditSchedule:
    """Counts each round's audits until their records are made; runs callbacks in round order.

    >>> schedule.add(3, futures)           # round 3's audits, submitted
    >>> schedule.after(3, finish_round_3)  # once rounds <= 3 are audited
    >>> schedule.wait(at_most=1)           # before round 5 trains
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._running: dict[int, int] = {}
        self._waiting: dict[int, list[Callable[[], None]]] = {}

    def add(self, server_round: int, futures: Sequence[Future]) -> None:
        if not futures:  # nothing to wait for (no attacks): the round must not look pending
            return
        with self._changed:
            self._running[server_round] = self._running.get(server_round, 0) + len(futures)
        for future in futures:  # a future already done calls back at once
            future.add_done_callback(partial(self._one_done, server_round))

    def after(self, server_round: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` once ``server_round`` and every earlier round are audited (now, if they are)."""
        with self._changed:
            self._waiting.setdefault(server_round, []).append(callback)
            self._release()

    def pending_rounds(self) -> int:
        with self._changed:
            return len(self._running)

    def wait(self, at_most: int = 0) -> None:
        """Block until at most ``at_most`` rounds have audits running (0: all are done)."""
        with self._changed:
            self._changed.wait_for(lambda: len(self._running) <= at_most)
            self._release()

    def _one_done(self, server_round: int, _future: Future) -> None:
        with self._changed:
            self._running[server_round] -= 1
            if not self._running[server_round]:
                del self._running[server_round]
            self._release()
            self._changed.notify_all()

    def _release(self) -> None:
        # Rounds finish in order: round t's callbacks wait for every round <= t.
        for waiting in sorted(self._waiting):
            if any(r <= waiting for r in self._running):
                return
            for callback in self._waiting.pop(waiting):
                callback()
