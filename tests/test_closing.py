"""The last lines of ``fedaudit run``: the headline, two recovered sentences beside their
originals (the last round's exact ones first, two clients), and the report's path."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from fedaudit.audit.records import AttackRecord
from fedaudit.audit.store import RunStore
from fedaudit.report.closing import print_closing, recovered_sentences


def _record(rnd: int, client: str, pairs: list[tuple[str, str | None]]) -> AttackRecord:
    rows = [
        {"original": o, "recovered": r, "exact": o == r, "score": {"rouge1": 1.0 if o == r else 0.5}} for o, r in pairs
    ]
    status = "exact" if all(p["exact"] for p in rows) else "partial"
    comparison = {"kind": "text", "pairs": rows, "total": len(rows), "shown": len(rows)}
    return AttackRecord(rnd, client, "dager", status, comparison=comparison, metrics={"rouge1": 1.0})


def test_closing_lines_show_the_headline_two_sentences_and_the_report(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    for record in (
        _record(1, "0", [("old news", "old news")]),
        _record(2, "0", [("the cat sat", "the cat sat"), ("a dog ran", "a dog walked")]),
        _record(2, "1", [("\x1b]0;pwned\x07call [bold]me[/]", "\x1b]0;pwned\x07call [bold]me[/]"), ("x y", None)]),
    ):
        store.append(record)
    console = Console(record=True, width=200, soft_wrap=True)
    print_closing(tmp_path, console)
    lines = console.export_text().splitlines()
    assert lines[:2] == ["What leaked", "  dager: 2 of 4 sentences recovered word for word in round 2"]
    assert lines[2] == "Recovered by dager from client 0 in round 2 (word for word):"
    assert lines[3:5] == ["  original:  the cat sat", "  recovered: the cat sat"]
    # The second client's sentence: the escape sequence gone whole, rich markup shown as typed.
    assert lines[5] == "Recovered by dager from client 1 in round 2 (word for word):"
    assert lines[6] == "  original:  call [bold]me[/]"
    assert lines[-1] == f"Report: {tmp_path / 'report.html'} (report.md and summary.json beside it)"


def test_recovered_sentences_fall_back_to_partial_and_one_client() -> None:
    records = [_record(1, "0", [("a b c", "a b d"), ("e f", None), ("g h", "g h")])]
    chosen = recovered_sentences(records, 2)
    assert [pair["recovered"] for _, pair in chosen] == ["g h", "a b d"]
    assert recovered_sentences([], 2) == []
