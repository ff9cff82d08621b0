"""Live progress for ``fedaudit run``: one line per audit as it lands, a table per round."""

from __future__ import annotations

from collections import defaultdict

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedaudit.audit.records import (
    AttackRecord,
    ClientError,
    Record,
    RejectedUpdate,
    RoundSkipped,
    UtilityRecord,
    attack_order,
)
from fedaudit.config import Scenario
from fedaudit.report.progress import RunProgress
from fedaudit.report.summary import fixed, format_metrics
from fedaudit.safety import clean_text


def untrusted(value: object, limit: int | None = None) -> str:
    """Client-controlled text as console markup: control characters and escape sequences
    removed (``clean_text``), cut to ``limit`` characters, rich markup escaped."""
    text = clean_text(value)
    if limit is not None and len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return escape(text)


STATUS_STYLE = {
    "exact": "bold red",
    "partial": "yellow",
    "failed": "green",
    "not_applicable": "dim",
    "error": "magenta",
    "timeout": "magenta",
}


#: How much of an audit's reason its console line shows; report.md has it whole.
REASON_CHARS = 80


def audit_line(record: AttackRecord, rounds: int) -> str:
    """``[round 1/3] client 0 dager: exact R-1 1.00 (0.52 s, epsilon 3.20): <reason>`` as markup:
    the status with its metrics, cost, the client's epsilon under DP-SGD, and why."""
    style = STATUS_STYLE.get(record.status, "")
    metrics = format_metrics(record.metrics)
    cost = f"{record.seconds:.2f} s"
    epsilon = record.diagnostics.get("epsilon")
    if isinstance(epsilon, (int, float)) and not isinstance(epsilon, bool):
        cost += f", epsilon {fixed(epsilon, 2)}"
    reason = f": {untrusted(record.reason, REASON_CHARS)}" if record.reason else ""
    return (
        f"\\[round {record.round}/{rounds}] client {untrusted(record.client)} {untrusted(record.attack)}: "
        f"[{style}]{record.status}[/]{' ' + metrics if metrics else ''} ({cost}){reason}"
    )


class RoundConsole:
    """One line per record as it lands and a table per round, printed on ``console`` (the live
    ``progress`` display's, when there is one, so lines appear above it)."""

    def __init__(self, scenario: Scenario, console: Console | None = None, progress: RunProgress | None = None) -> None:
        self.scenario = scenario
        self.progress = progress or RunProgress()
        # soft_wrap: a line is one line however narrow the terminal (or 80 columns when piped).
        self.console = console or self.progress.console or Console(highlight=False, soft_wrap=True)
        self._rounds: dict[int, list[Record]] = defaultdict(list)

    def record(self, record: Record) -> None:
        self._rounds[record.round].append(record)
        self.progress.record(record)
        total = self.scenario.federation.rounds
        if isinstance(record, AttackRecord):
            self.console.print(audit_line(record, total))
        elif isinstance(record, (ClientError, RejectedUpdate)):
            what = "failed" if isinstance(record, ClientError) else "update rejected"
            who = f"\\[round {record.round}/{total}] client {untrusted(record.client)}"
            self.console.print(f"{who} {what}: {untrusted(record.reason)}", style="magenta")
        elif isinstance(record, RoundSkipped):
            self.console.print(f"\\[round {record.round}/{total}] skipped: {untrusted(record.reason)}", style="magenta")

    def round_done(self, server_round: int) -> None:
        self.progress.round_done(server_round)
        records = self._rounds.pop(server_round, [])
        utility = next((r.metrics for r in records if isinstance(r, UtilityRecord)), {})
        title = f"Round {server_round}/{self.scenario.federation.rounds}" if server_round else "Initial model"
        if utility:
            title += f"  utility: loss {fixed(utility.get('loss'), 4)}, accuracy {fixed(utility.get('accuracy'))}"
        audits = [r for r in records if isinstance(r, AttackRecord)]
        if not audits:
            self.console.print(title)
            return
        attacks = attack_order(audits, self.scenario.audit.attacks)
        table = Table(title=title, title_justify="left")
        table.add_column("client")
        for name in attacks:
            table.add_column(name)
        by_client: dict[str, dict[str, AttackRecord]] = defaultdict(dict)
        for r in audits:
            by_client[r.client][r.attack] = r
        for client in sorted(by_client, key=lambda c: (len(c), c)):
            cells = []
            for name in attacks:
                r = by_client[client].get(name)
                cells.append(
                    "" if r is None else f"[{STATUS_STYLE.get(r.status, '')}]{r.status}[/] {format_metrics(r.metrics)}"
                )
            table.add_row(untrusted(client), *cells)
        self.console.print(table)
