"""Live progress for ``fedaudit run``: one line per audit as it lands, a table per round."""

from __future__ import annotations

from collections import defaultdict

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedaudit.audit.records import AttackRecord, ClientError, Record, RejectedUpdate, RoundSkipped, UtilityRecord
from fedaudit.config import Scenario
from fedaudit.report.summary import fixed, format_metrics
from fedaudit.safety import clean_text


def untrusted(value: object) -> str:
    """Client-controlled text as console markup: control characters and escape sequences
    removed (``clean_text``), rich markup escaped."""
    return escape(clean_text(value))


STATUS_STYLE = {
    "exact": "bold red",
    "partial": "yellow",
    "failed": "green",
    "not_applicable": "dim",
    "error": "magenta",
    "timeout": "magenta",
}


class RoundConsole:
    def __init__(self, scenario: Scenario, console: Console | None = None) -> None:
        self.scenario = scenario
        self.console = console or Console(highlight=False)
        self._rounds: dict[int, list[Record]] = defaultdict(list)

    def record(self, record: Record) -> None:
        self._rounds[record.round].append(record)
        total = self.scenario.federation.rounds
        if isinstance(record, AttackRecord):
            style = STATUS_STYLE.get(record.status, "")
            self.console.print(
                f"\\[round {record.round}/{total}] client {untrusted(record.client)} "
                f"{record.attack}: [{style}]{record.status}[/] {format_metrics(record.metrics)} "
                f"({record.seconds:.2f} s)"
            )
        elif isinstance(record, (ClientError, RejectedUpdate)):
            what = "failed" if isinstance(record, ClientError) else "update rejected"
            who = f"\\[round {record.round}/{total}] client {untrusted(record.client)}"
            self.console.print(f"{who} {what}: {untrusted(record.reason)}", style="magenta")
        elif isinstance(record, RoundSkipped):
            self.console.print(f"\\[round {record.round}/{total}] skipped: {untrusted(record.reason)}", style="magenta")

    def round_done(self, server_round: int) -> None:
        records = self._rounds.pop(server_round, [])
        utility = next((r.metrics for r in records if isinstance(r, UtilityRecord)), {})
        title = f"Round {server_round}/{self.scenario.federation.rounds}" if server_round else "Initial model"
        if utility:
            title += f"  utility: loss {fixed(utility.get('loss'), 4)}, accuracy {fixed(utility.get('accuracy'))}"
        audits = [r for r in records if isinstance(r, AttackRecord)]
        if not audits:
            self.console.print(title)
            return
        attacks = list(dict.fromkeys(r.attack for r in audits))
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
