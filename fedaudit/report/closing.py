"""What ``fedaudit run`` prints last: the headline per attack, two recovered sentences beside
their originals, and where the report is. The same words as the report's headline box
(``data.AttackView.sentence``), so the console and the page never disagree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from fedaudit.audit.records import AttackRecord, attack_records, read_records
from fedaudit.report.console import untrusted
from fedaudit.report.data import build
from fedaudit.safety import shorten

#: A sentence longer than this is cut on the console (the report shows it whole).
SHOWN_CHARS = 160


def print_closing(run_dir: Path, console: Console, examples: int = 2) -> None:
    data = build(run_dir, image_budget=0)
    if data.attacks:
        console.print("[bold]What leaked[/]")
    for view in data.attacks:
        console.print(f"  {untrusted(view.name)}: {untrusted(view.sentence)}")
    for record, pair in recovered_sentences(attack_records(read_records(run_dir)), examples):
        how = "word for word" if pair["exact"] else f"ROUGE-1 {pair['score'].get('rouge1', 0.0):.2f}"
        console.print(
            f"Recovered by {untrusted(record.attack)} from client {untrusted(record.client)} "
            f"in round {record.round} ({how}):"
        )
        console.print(f"  original:  {untrusted(_cut(pair['original']))}")
        console.print(f"  recovered: {untrusted(_cut(pair['recovered']))}")
    console.print(f"Report: [bold]{untrusted(run_dir / 'report.html')}[/] (report.md and summary.json beside it)")


def recovered_sentences(records: list[AttackRecord], count: int) -> list[tuple[AttackRecord, dict[str, Any]]]:
    """``count`` recovered sentences with their originals, from the last round first, exact
    recoveries before partial ones, and at most one per client while other clients have some."""
    candidates = []
    for record in sorted(records, key=lambda r: -r.round):
        comparison = record.comparison or {}
        if comparison.get("kind") != "text":
            continue
        for pair in comparison.get("pairs", []):
            if isinstance(pair, dict) and isinstance(pair.get("recovered"), str) and pair["recovered"].strip():
                candidates.append((record, pair))
    candidates.sort(key=lambda c: (-c[0].round, not c[1].get("exact")))
    chosen: list[tuple[AttackRecord, dict[str, Any]]] = []
    for record, pair in candidates:
        if len(chosen) < count and all(record.client != r.client for r, _ in chosen):
            chosen.append((record, pair))
    rest = [c for c in candidates if all(c[1] is not pair for _, pair in chosen)]
    return chosen + rest[: count - len(chosen)]


def _cut(text: Any) -> str:
    text = " ".join(str(text).split())
    return shorten(text, SHOWN_CHARS, "…")
