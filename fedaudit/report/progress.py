"""Live progress on a terminal, drawn below the lines a command prints.

* ``RunProgress`` (``fedaudit run``): the round against the run's rounds, the clients that have
  replied this round, audits done and queued, and the attack running now with its elapsed time
  against its budget. The server strategy reports each step from Flower's server thread; a
  ``rich.live.Live`` redraws it four times a second.
* ``Counter`` (``fedaudit attack``: batches; ``fedaudit sweep``: cells): a ``rich.progress`` bar
  with the elapsed time and an estimate of the time left.

Both draw only on a terminal (``Console.is_terminal``): piped or redirected output (CI logs, a
sweep's cell logs, tests) gets no progress and no cursor codes. Lines printed through the same
Console while a display is live appear above it; the display is erased when it stops.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

from rich.console import Console, RenderableType
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from fedaudit.audit.records import AttackRecord
from fedaudit.report.summary import plural
from fedaudit.safety import clean_text

#: Redraws per second: enough for a seconds counter, cheap next to training.
REFRESH_PER_SECOND = 4
BAR_WIDTH = 30
#: Width of the labels column: the longest attack name, so the bars stay put when one appears.
LABEL_WIDTH = 14


def draws(console: Console | None) -> bool:
    """Whether progress is drawn on ``console``: a real terminal that can move the cursor."""
    return console is not None and console.is_terminal and not console.is_dumb_terminal


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(0.0, seconds))))


class RunProgress:
    """What a run is doing now. Without a terminal (``console`` None or not a terminal) it only
    counts; ``with RunProgress(...)`` starts and stops the display."""

    def __init__(self, console: Console | None = None, rounds: int = 0) -> None:
        self.console = console
        self.rounds = rounds
        self.round = 0
        self.rounds_done = 0
        self.clients = (0, 0)
        """Replies received and messages sent this round."""
        self.audits = (0, 0)
        """Audits done and queued this round."""
        self.attack: tuple[str, str, float, float] | None = None
        """The attack running now: (attack, client, start time, budget in seconds)."""
        self._started = time.monotonic()
        self._live: Live | None = None

    def __enter__(self) -> RunProgress:
        if draws(self.console):
            self._live = Live(
                console=self.console,
                get_renderable=self.render,
                refresh_per_second=REFRESH_PER_SECOND,
                transient=True,
            )
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Erase the display (idempotent); the counts stay."""
        live, self._live = self._live, None
        if live is not None:
            live.stop()

    # -- events, called from Flower's server thread ------------------------------------------
    def round_started(self, server_round: int, clients: int) -> None:
        self.round, self.rounds_done = server_round, max(self.rounds_done, server_round - 1)
        # Audits are counted over the run: an earlier round's may still be queued (overlap).
        self.clients, self.attack = (0, clients), None

    def clients_replied(self, replied: int, sent: int) -> None:
        self.clients = (replied, sent)

    def audits_queued(self, count: int) -> None:
        self.audits = (self.audits[0], self.audits[1] + count)

    def attack_started(self, client: str, attack: str, budget: float) -> None:
        self.attack = (attack, clean_text(client), time.monotonic(), budget)

    def record(self, record: Any) -> None:
        """One finished audit (an ``AttackRecord``); other records change nothing here."""
        if isinstance(record, AttackRecord):
            done, queued = self.audits
            self.audits, self.attack = (done + 1, max(0, queued - 1)), None

    def round_done(self, server_round: int) -> None:
        self.rounds_done, self.attack = max(self.rounds_done, server_round), None

    # -- drawing --------------------------------------------------------------------------------
    def render(self) -> RenderableType:
        """Three rows (round, clients and audits, the attack running now), each a label, a bar
        and its numbers."""
        grid = Table.grid(padding=(0, 1))
        grid.add_column(min_width=LABEL_WIDTH)
        grid.add_column()
        grid.add_column()
        now = time.monotonic()
        grid.add_row(
            Text(f"Round {self.round}/{self.rounds}" if self.round else "Initial model", style="bold"),
            ProgressBar(total=max(self.rounds, 1), completed=self.rounds_done, width=BAR_WIDTH),
            f"{self.rounds_done}/{plural(self.rounds, 'round')} done, {_clock(now - self._started)}",
        )
        replied, sent = self.clients
        done, queued = self.audits
        grid.add_row(
            "clients",
            ProgressBar(total=max(sent, 1), completed=replied, width=BAR_WIDTH),
            f"{replied}/{sent} trained; audits: {done} done, {queued} queued",
        )
        if self.attack is not None:
            attack, client, start, budget = self.attack
            elapsed = now - start
            grid.add_row(
                Text(attack),
                ProgressBar(total=budget, completed=min(elapsed, budget), width=BAR_WIDTH),
                Text(f"client {client}: {elapsed:.1f} s of its {budget:g} s budget"),
            )
        return grid


class Counter:
    """A bar of ``total`` steps on a terminal (nothing elsewhere): ``update(done, ran)`` after
    each step, ``ran`` being the steps this session ran (a resumed sweep starts with some done),
    from which the time left is estimated."""

    def __init__(self, console: Console, description: str, total: int) -> None:
        self.total = total
        self._started = time.monotonic()
        self._progress = (
            Progress(
                TextColumn(description),
                BarColumn(bar_width=BAR_WIDTH),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[left]}"),
                console=console,
                transient=True,
            )
            if draws(console)
            else None
        )
        self._task = None

    def __enter__(self) -> Counter:
        if self._progress is not None:
            self._task = self._progress.add_task("", total=self.total, left="")
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, done: int, ran: int | None = None) -> None:
        if self._progress is None:
            return
        ran = done if ran is None else ran
        left = ""
        if 0 < ran and done < self.total:
            seconds = (time.monotonic() - self._started) / ran * (self.total - done)
            left = f"about {_clock(seconds)} left"
        self._progress.update(self._task, completed=done, left=left)
