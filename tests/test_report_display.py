"""What report.html says and how it colours it, from typed records (no run): headline colour by
what leaked, labels counted by their measured accuracy, singular units, long reasons cut with
their length, labelled pills, token chips, and the plots' fixed scales and placed labels.

The page's structure and safety are checked in ``tests/test_report_html.py``; its look in a
browser in ``tests/test_report_browser.py``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from fedaudit.audit.records import AttackRecord, ClientError, UtilityRecord
from fedaudit.report import figures
from fedaudit.report.data import build
from fedaudit.report.markdown import write_reports
from fedaudit.report.summary import clip, compact
from tests.test_report_html import Page, _store, _text_record, assert_self_contained


def _labels(rnd: int, client: str, status: str, accuracy: float | None, true: list[int] | None) -> AttackRecord:
    """A labels audit: the attack's verdict ``status``; with ``true``, ground truth scored it."""
    recovered = [0, 0, 1, 1]
    return AttackRecord(
        round=rnd,
        client=client,
        attack="labels",
        status=status,
        metrics={} if accuracy is None else {"label_accuracy": accuracy},
        reconstruction={"labels": recovered},
        comparison=None if true is None else {"labels": {"true": true, "recovered": recovered}},
    )


def _render(store) -> tuple[str, Page, dict]:
    write_reports(store.path)
    html = (store.path / "report.html").read_text(encoding="utf-8")
    return html, assert_self_contained(html), json.loads((store.path / "summary.json").read_text(encoding="utf-8"))


def _text(page: Page) -> str:
    return " ".join("".join(page.text).split())


def test_the_headline_number_is_coloured_by_what_leaked(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.append(_text_record(1, "0", [("a b c", "a b c"), ("d e f", None)]))  # dager: one exact
    partial = _text_record(1, "0", [("g h i j", "g h x y")])
    partial.attack = "tag"
    store.append(partial)  # tag: only partially (ROUGE-1 0.6)
    missed = _text_record(1, "0", [("k l m", None)])
    missed.attack = "lamp"
    store.append(missed)  # lamp: nothing
    html, page, stored = _render(store)
    cards = {c["data-attack"]: c["data-outcome"] for c in page.find("article", cls="card")}
    assert cards == {"dager": "exact", "tag": "partial", "lamp": "missed"}
    big = re.findall(r'<p class="big"><span class="(c-[a-z]+)">(\d+)</span>', html)
    assert big == [("c-exact", "1"), ("c-partial", "0"), ("c-missed", "0")]  # "0 of 1" is not red
    assert page.find("section", id_="headline")[0]["class"] == "o-exact"  # the worst of the attacks
    assert [a["last_round"]["exact"] for a in stored["attacks"]] == [1, 0, 0]

    nothing = _store(tmp_path / "none")
    nothing.append(missed)
    _, page, _ = _render(nothing)
    assert page.find("section", id_="headline")[0]["class"] == "o-missed"


def test_labels_scored_by_ground_truth_count_by_their_measured_accuracy(tmp_path: Path) -> None:
    store = _store(tmp_path)
    # The attack calls all four "partial"; ground truth says 1.0, 0.5 and 0 for three of them.
    store.append(_labels(1, "0", "partial", 1.0, [1, 0, 1, 0]))
    store.append(_labels(1, "1", "partial", 0.5, [0, 0, 0, 0]))
    store.append(_labels(1, "2", "partial", 0.0, [5, 5, 5, 5]))
    store.append(_labels(1, "3", "partial", None, None))  # no ground truth: the verdict counts
    html, page, stored = _render(store)
    (labels,) = stored["attacks"]
    counts = labels["last_round"]
    assert (counts["exact"], counts["partial"], counts["missed"], counts["measured"]) == (1, 2, 1, 3)
    assert labels["headline"] == "1 of 4 label sets recovered exactly in round 1"
    text = _text(page)
    assert "by the measured label accuracy" in text and "not by the attack's own verdict (3 of 4" in text
    assert [a["recovered"]["exact"] for a in stored["audits"]] == [1, 0, 0, 0]


def test_one_of_a_unit_is_singular(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.append(AttackRecord(round=1, client="0", attack="probe", status="failed", seconds=0.1))
    store.append(_labels(1, "0", "partial", 1.0, [1, 0, 1, 0]))
    store.append(UtilityRecord(round=1, metrics={"loss": 1.0, "accuracy": 0.5}))
    html, page, stored = _render(store)
    text = _text(page)
    assert "0 of 1 client update recovered exactly in round 1." in text
    assert "1 of 1 label set recovered exactly in round 1." in text
    assert "of 1 client update." in text and "of 1 label set." in text  # the whole-run line
    assert not re.search(r"\b1 (client updates|label sets|audits|rounds)\b", text)
    probe = next(a for a in stored["attacks"] if a["attack"] == "probe")
    assert probe["unit"] == "client updates"  # summary.json keeps the unit's name


def test_long_reasons_are_cut_with_their_full_length_noted(tmp_path: Path) -> None:
    store = _store(tmp_path)
    oom = "OutOfMemoryError: the node ran low on memory. " + " ".join(f"pid{i} 5.5GB python" for i in range(150))
    store.append(ClientError(round=1, client="0", reason=oom))
    failed = _text_record(1, "0", [("a b c", None)])
    failed.status, failed.reason = "error", "Traceback: " + "frame " * 400
    store.append(failed)
    html, page, stored = _render(store)
    text = _text(page)
    assert len(oom) > 2000 and oom[:200] in text and oom[-200:] not in text
    assert f"… ({len(oom):,} characters in all; records.jsonl keeps the whole text)" in text
    assert f"({len(failed.reason):,} characters in all" in text and "frame " * 100 not in text
    assert stored["client_errors"][0]["reason"] == oom  # the records and summary.json keep all of it
    assert clip("short reason") == "short reason"
    md = (store.path / "report.md").read_text(encoding="utf-8")
    assert oom[-200:] not in md and "characters in all" in md


def test_pills_name_their_attack_and_hold_their_count_and_chips_lose_their_spaces(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for client in ("0", "1"):
        store.append(_text_record(1, client, [("a b c", "a b c")]))
        tokens = AttackRecord(
            round=1,
            client=client,
            attack="embedding-rows",
            status="partial",
            reconstruction={"tokens": [" the", "cat", " "], "tokens_total": 3},
        )
        store.append(tokens)
    html, page, _ = _render(store)
    summaries = re.findall(r"<summary>.*?</summary>", html, re.S)
    assert len(summaries) == 2
    assert all(
        '<span class="pill s-exact">dager: exact</span>' in s
        and '<span class="pill s-partial">embedding-rows: partial</span>' in s
        for s in summaries
    )
    assert '<span class="pill s-exact">exact × 2</span>' in html  # the count inside its pill
    assert re.search(
        r'<p class="verdicts">2 audits: <span class="pill s-exact">exact × 2</span></p>\s*<p class="cost">', html
    )
    chips = re.findall(r'<span class="chip">([^<]*)</span>', html)
    assert chips == ["the", "cat", "␠"] * 2


def test_numbers_in_tables_are_compact() -> None:
    assert compact(21.000000356323213) == "21" and compact(149637.000493002) == "149637"
    assert compact(0.123456789) == "0.123457" and compact(2_500_000.4) == "2500000" and compact(7) == "7"
    assert compact(-1.254925700777676e-05) == "-1.25493e-05" and compact(-1.254925700777676e-05, 914.0) == "0"
    assert compact("nurse") is None and compact(True) is None and compact(math.inf) == "inf"


def _psnr_store(tmp_path: Path):
    store = _store(tmp_path)
    for rnd, client in [(1, "0"), (1, "1"), (2, "1")]:  # round 2, client 0: no audit
        store.append(AttackRecord(round=rnd, client=client, attack="spear", status="exact", metrics={"psnr": 100.0}))
        store.append(UtilityRecord(round=rnd, metrics={"loss": 1.0, "accuracy": 0.5}))
    return store


def test_heatmap_scale_is_fixed_and_a_missing_cell_is_hatched(tmp_path: Path) -> None:
    (view,) = build(_psnr_store(tmp_path).path).attacks
    svg = figures.heatmap(view)
    ticks = re.findall(r">(\d+)</text>", svg)
    assert "100" in ticks and "0" in ticks and "110" not in ticks  # 0..100 dB, not 90..110
    assert "<pattern" in svg and "–" in svg  # the missing cell: hatched, with a dash
    assert figures.scale("psnr", [20.0, 120.0, math.inf]) == (0.0, 120.0)
    assert figures.scale("rouge1", [0.2]) == (0.0, 1.0)


def test_rounds_at_one_point_share_one_label(tmp_path: Path) -> None:
    (view,) = build(_psnr_store(tmp_path).path).attacks
    svg = figures.leakage_vs_accuracy([view], [{"round": r, "accuracy": 0.5} for r in (1, 2)])
    assert ">r1, r2</text>" in svg and ">r1</text>" not in svg
    assert figures._rounds_text([3, 1, 2]) == "r1–r3"


def test_a_big_run_shows_the_first_and_last_rounds_first_clients(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for rnd in (1, 2, 3):
        for client in range(30):
            store.append(_text_record(rnd, str(client), [(f"secret {rnd} {client}", f"secret {rnd} {client}")]))
    html, page, _ = _render(store)
    blocks = [(b["data-round"], b["data-client"]) for b in page.find("details", cls="client-round")]
    assert blocks == [("1", str(c)) for c in range(20)] + [("3", str(c)) for c in range(20)]
    assert "50 more round-and-client blocks are left out of this page" in _text(page)
    # Every audit still counts in the headline and the heatmaps.
    assert "30 of 30 sentences recovered word for word in round 3" in _text(page)
    assert "Whole run: 90 exactly" in _text(page)


def test_statuses_that_are_nouns_take_a_plural(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for client in ("0", "1"):
        store.append(AttackRecord(round=1, client=client, attack="dager", status="timeout", seconds=1.6))
    store.append(AttackRecord(round=1, client="2", attack="dager", status="error", reason="boom"))
    store.append(UtilityRecord(round=1, metrics={"loss": 1.0, "accuracy": 0.5}))
    _, page, _ = _render(store)
    assert "Nothing scored: 1 error, 2 timeouts." in _text(page)
