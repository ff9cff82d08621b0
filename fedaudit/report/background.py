"""The report of the rounds so far, rewritten by a thread of its own.

Rendering takes about 0.4 s a round (plots, the page); done inline it held up every round of
a run, the next round's training included. Requests coalesce: a round that finishes while
the report is being written gets one rewrite after it, with every record then written.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from fedaudit.report.markdown import write_report
from fedaudit.safety import clean_text


def say_why_not(what: str, err: Exception) -> None:
    """One line for a report that could not be written; records are what matter, and
    ``fedaudit report RUN_DIR`` renders them later."""
    why = clean_text(f"{type(err).__name__}: {err}")[:200]
    print(f"fedaudit: warning: {what} was not written ({why}); fedaudit report RUN_DIR writes it", flush=True)


class BackgroundReport:
    """``request()`` asks for a rewrite of ``run_dir``'s report; ``close()`` waits for the one
    under way and stops. A report that cannot be written is a warning line, never an error."""

    def __init__(self, run_dir: Path, write: Callable[[Path], object] = write_report) -> None:
        self.run_dir = run_dir
        self._write = write
        self._wanted = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="fedaudit-report", daemon=True)
        self._thread.start()

    def request(self) -> None:
        self._wanted.set()

    def close(self) -> None:
        self._closing = True
        self._wanted.set()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            self._wanted.wait()
            if self._closing:
                return
            self._wanted.clear()
            try:
                self._write(self.run_dir)
            except Exception as err:  # noqa: BLE001 - a warning line, the run goes on
                say_why_not("the report after this round", err)
