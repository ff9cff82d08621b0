"""report.html, summary.json and sweep.html: self-contained, escaped, in round and client order,
and the same numbers in the page as in the JSON.

A real run (a module fixture; Ray's start-up makes it ~40 s on a CPU): a tiny GPT-2 whose clients
hold a hostile sentence and identifiers, which DAGER recovers word for word. Digits audited by
SPEAR (PNG images) go through the real auditor and run store without a federation. The rest
builds records with the typed API, which takes a fraction of a second.
"""

from __future__ import annotations

import base64
import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from fedaudit.audit.records import AttackRecord, ClientError, UtilityRecord, attack_records, read_records
from fedaudit.audit.store import RunStore
from fedaudit.config import Scenario
from fedaudit.data import holdout_split
from fedaudit.report.data import build
from fedaudit.report.markdown import FORMATS, render_report, write_reports
from fedaudit.report.summary_json import summary
from fedaudit.report.sweep_html import render_sweep_html
from tests.conftest import REPO_ROOT, run_cli

HOSTILE = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
#: Terminal control in a client's sentence: an OSC title change ended by BEL, and a bare BEL.
CONTROL = "Ring \x1b]0;owned\x07 the bell\x07 now."
PII = "Write to jane.doe@example.com or call 415-555-0132 today."
#: GPT-2 with a third layer (DAGER's layer-2 check) and width 128 > the tokens of a batch of 4.
TINY_DAGER = ["model.name=gpt2-random", "model.config={n_layer=3, n_embd=128, n_head=2}"]
ROWS = 10


# ---------------------------------------------------------------- reading the page


class Page(HTMLParser):
    """Every start tag with its attributes and its ancestors; text and <style> content."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str], list[tuple[str, dict[str, str]]]]] = []
        self.stack: list[tuple[str, dict[str, str]]] = []
        self.styles: list[str] = []
        self.text: list[str] = []
        self.feed(html)

    VOID = {"meta", "img", "br", "hr", "input", "link", "source", "col", "wbr"}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.tags.append((tag, values, list(self.stack)))
        if tag not in self.VOID:
            self.stack.append((tag, values))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}, list(self.stack)))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                break

    def handle_data(self, data: str) -> None:
        if self.stack and self.stack[-1][0] == "style":
            self.styles.append(data)
        self.text.append(data)

    def find(self, tag: str, cls: str | None = None, id_: str | None = None) -> list[dict[str, str]]:
        return [
            a
            for t, a, _ in self.tags
            if t == tag and (cls is None or cls in a.get("class", "").split()) and (id_ is None or a.get("id") == id_)
        ]

    def inside(self, tag: str, outer: str, outer_cls: str) -> list[dict[str, str]]:
        return [
            a
            for t, a, up in self.tags
            if t == tag and any(u == outer and outer_cls in ua.get("class", "").split() for u, ua in up)
        ]


def assert_self_contained(html: str) -> Page:
    page = Page(html)
    for tag, attrs, _ in page.tags:
        for name in ("src", "href", "xlink:href", "action", "poster", "srcset", "data", "background"):
            value = attrs.get(name, "").strip().lower()
            assert not re.match(r"(https?:)?//|ftp:|file:|javascript:", value), (tag, name, value)
            if tag == "img":
                assert value.startswith("data:image/png;base64,") or name != "src", value
        assert tag not in ("script", "link", "iframe", "object", "embed", "base"), tag
        assert not any(k.startswith("on") for k in attrs), (tag, attrs)
    css = " ".join(page.styles) + " ".join(a.get("style", "") for _, a, _ in page.tags)
    assert "@import" not in css and "@font-face" not in css
    assert all(u.startswith("#") for u in re.findall(r"url\(\s*['\"]?([^)'\"]*)", css)), css
    assert not re.search(r"https?://", html)
    return page


# ---------------------------------------------------------------- runs


def _hostile_tsv(path: Path) -> Path:
    sentences = [f"Row {i} says the weather in town {i} was mild on day {i}." for i in range(ROWS)]
    train, _holdout = holdout_split(ROWS, 0.2, 0)  # the run's split: default fraction and seed
    for k, text in enumerate((HOSTILE, CONTROL, PII)):
        sentences[int(train[k])] = text
    path.write_text("".join(f"src\t{i % 2}\t\t{s}\n" for i, s in enumerate(sentences)), encoding="utf-8")
    return path


def _run(base: Path, *overrides: str) -> Path:
    proc = run_cli("run", *(a for o in (f"output.dir={base}", *overrides) for a in ("--set", o)))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = [p for p in base.iterdir() if p.is_dir()]
    return run_dir


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    """Two clients of four sentences, two rounds; DAGER recovers every sentence."""
    base = tmp_path_factory.mktemp("text")
    source = _hostile_tsv(base / "hostile.tsv")
    return _run(
        base / "runs",
        *TINY_DAGER,
        f"data.source={source}",
        "federation.clients=2",
        "federation.rounds=2",
        "training.batch_size=4",
        "training.max_seq_len=32",
        "audit.attacks=['dager', 'embedding-rows']",
    )


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    """simulations/digits_quick.toml sized down: two client updates audited by SPEAR and labels
    as in a run (the real attacks, scorer and run store, which writes the PNG files), without
    starting a federation (Ray's start-up alone takes longer than the rest)."""
    from fedaudit.audit.auditor import Auditor
    from fedaudit.scenario import load_scenario
    from tests.helpers import client_updates

    sc = load_scenario(REPO_ROOT / "simulations" / "digits_quick.toml", ["federation.clients=2", "federation.rounds=1"])
    store = RunStore.create(sc, base_dir=tmp_path_factory.mktemp("images"))
    auditor = Auditor.for_scenario(sc.audit, sink=store.append)
    for observation, truth in client_updates(sc, 2):
        auditor.audit(observation, truth)
    write_reports(store.path)
    return store.path


def _store(tmp_path: Path, name: str = "typed") -> RunStore:
    return RunStore.create(Scenario(name=name), base_dir=tmp_path)


def _text_record(rnd: int, client: str, pairs: list[tuple[str, str | None]], **extra) -> AttackRecord:
    scored = [
        {"original": o, "recovered": r, "exact": o == r, "score": {"rouge1": 1.0 if o == r else 0.6 if r else 0.0}}
        for o, r in pairs
    ]
    return AttackRecord(
        round=rnd,
        client=client,
        attack="dager",
        status="exact" if all(o == r for o, r in pairs) else "partial",
        metrics={"rouge1": float(np.mean([p["score"]["rouge1"] for p in scored]))},
        seconds=0.5,
        reconstruction={"texts": [r for _, r in pairs if r], "total": len(pairs), "shown": len(pairs)},
        comparison={"kind": "text", "pairs": scored, "total": extra.pop("total", len(pairs)), "shown": len(pairs)},
        **extra,
    )


# ---------------------------------------------------------------- a real text run


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "records.jsonl").read_text(encoding="utf-8").split("\n") if line]


def test_a_run_writes_three_private_files_whose_numbers_agree(text_run: Path) -> None:
    for name in FORMATS.values():
        assert (text_run / name).stat().st_mode & 0o777 == 0o600, name
    html = (text_run / "report.html").read_text(encoding="utf-8")
    assert len(html.encode()) < 2_000_000
    page = assert_self_contained(html)
    stored = json.loads((text_run / "summary.json").read_text(encoding="utf-8"))
    # summary.json is the data model's numbers (rebuilt here from the same records)...
    assert stored == json.loads(json.dumps(summary(build(text_run))))
    # ...and the headline box shows them: DAGER's pairs, counted straight from records.jsonl.
    last = max(r["round"] for r in _records(text_run) if r["type"] == "attack")
    pairs = [
        p
        for r in _records(text_run)
        if r.get("attack") == "dager" and r["round"] == last
        for p in r["comparison"]["pairs"]
    ]
    assert len(pairs) == 8 and sum(p["exact"] for p in pairs) == 8  # 2 clients x 4 sentences
    assert len(page.find("section", id_="headline")) == 1
    cards = {c["data-attack"]: c for c in page.find("article", cls="card")}
    dager = next(a for a in stored["attacks"] if a["attack"] == "dager")
    assert (dager["last_round"]["exact"], dager["last_round"]["total"], dager["last_round"]["round"]) == (8, 8, last)
    assert (
        dager["whole_run"]["total"] == 16
        and dager["headline"] == f"8 of 8 sentences recovered word for word in round {last}"
    )
    for attack in stored["attacks"]:
        card = cards[attack["attack"]]
        for key in ("exact", "partial", "missed", "total"):
            assert int(card[f"data-{key}"]) == attack["last_round"][key]
            assert int(card[f"data-run-{key}"]) == attack["whole_run"][key]
    assert "8 of 8 sentences recovered word for word in round 2." in "".join(page.text)
    # The e-mail address and phone number came back verbatim and are counted as such.
    assert dager["pii"].get("email", 0) >= 2 and dager["pii"].get("phone", 0) >= 2
    cells = {a["data-pii"]: a for a in page.find("td") if "data-pii" in a}
    assert set(cells) == {"phone", "email", "card", "iban", "ssn"}


def test_plots_diffs_and_side_by_side_blocks_follow_the_dom_contract(text_run: Path) -> None:
    page = Page((text_run / "report.html").read_text(encoding="utf-8"))
    figures = page.find("figure", cls="plot")
    assert len(figures) >= 5  # per attack: rounds and heatmap; utility; leakage vs accuracy
    assert len(page.inside("svg", "figure", "plot")) == len(figures)
    ids = [a["id"] for t, a, _ in page.tags if "id" in a]
    assert len(ids) == len(set(ids))  # the inline SVGs share no id
    assert len(page.find("table", cls="diff")) == 4  # DAGER: 2 rounds x 2 clients
    blocks = page.find("details", cls="client-round")
    assert [(b["data-round"], b["data-client"]) for b in blocks] == [("1", "0"), ("1", "1"), ("2", "0"), ("2", "1")]
    assert ["open" in b for b in blocks] == [True, True, False, False]  # the first round's are open


def test_hostile_client_text_is_escaped_and_inert_everywhere(text_run: Path) -> None:
    html = (text_run / "report.html").read_text(encoding="utf-8")
    page = assert_self_contained(html)
    assert not page.find("script") and not [a for a in page.find("img") if a.get("src") == "x"]
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html
    assert HOSTILE in "".join(page.text)  # shown, as text
    for name in FORMATS.values():
        text = (text_run / name).read_text(encoding="utf-8")
        assert "\x1b" not in text and "\x07" not in text, name
    assert "Ring the bell now." in " ".join("".join(page.text).split())  # the sentence stays, its controls go
    assert "<script>" not in (text_run / "report.md").read_text(encoding="utf-8")


# ---------------------------------------------------------------- typed records


def test_rows_are_in_round_then_natural_client_order(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for rnd, client in [(2, "10"), (1, "10"), (2, "2"), (1, "2"), (1, "1"), (2, "1")]:
        store.append(_text_record(rnd, client, [(f"sentence of {client}", f"sentence of {client}")]))
    store.append(ClientError(round=2, client="10", reason="oom"))
    store.append(ClientError(round=1, client="9", reason="gone"))
    write_reports(store.path)
    page = Page((store.path / "report.html").read_text(encoding="utf-8"))
    order = [(b["data-round"], b["data-client"]) for b in page.find("details", cls="client-round")]
    assert order == [("1", "1"), ("1", "2"), ("1", "10"), ("2", "1"), ("2", "2"), ("2", "10")]
    stored = json.loads((store.path / "summary.json").read_text(encoding="utf-8"))
    assert [(a["round"], a["client"]) for a in stored["audits"]] == [(int(r), c) for r, c in order]
    assert [(e["round"], e["client"]) for e in stored["client_errors"]] == [(1, "9"), (2, "10")]
    md = render_report(store.path)
    rows = [line.split(" | ") for line in md.splitlines() if line.startswith("| ")]
    assert [r[0] for r in rows if r[1] == "dager"] == ["| 1", "| 2", "| 10", "| 1", "| 2", "| 10"]


def test_word_differences_exact_marks_counts_and_the_cap(tmp_path: Path) -> None:
    store = _store(tmp_path)
    pairs = [
        ("the cat sat on the mat", "the cat sat on the mat"),
        ("a dog ran home fast", "a dog ran far home"),
        ("nothing came back here", None),
    ]
    store.append(_text_record(1, "0", pairs, total=70))
    write_reports(store.path)
    html = (store.path / "report.html").read_text(encoding="utf-8")
    (diff,) = re.findall(r'<table class="diff">.*?</table>', html, re.S)
    assert diff.count('class="exact"') == 1 and "<del>fast</del>" in diff and "<ins>far</ins>" in diff
    assert "not recovered" in diff
    stored = json.loads((store.path / "summary.json").read_text(encoding="utf-8"))
    (dager,) = stored["attacks"]
    assert {k: dager["last_round"][k] for k in ("exact", "partial", "missed", "total", "capped")} == {
        "exact": 1,
        "partial": 1,
        "missed": 1,
        "total": 3,
        "capped": True,
    }
    assert "3 of 70 examples kept in the record" in html and "at most 64" in html


def test_records_without_ground_truth_show_what_was_reconstructed_and_say_so(tmp_path: Path) -> None:
    store = _store(tmp_path, "deployment")
    store.append(
        AttackRecord(
            round=1,
            client="0",
            attack="dager",
            status="exact",
            seconds=0.2,
            reconstruction={"texts": ["recovered " + HOSTILE], "total": 1, "shown": 1},
        )
    )
    store.append(
        AttackRecord(
            round=1,
            client="0",
            attack="embedding-rows",
            status="exact",
            reconstruction={"tokens": ["alpha", "beta"], "tokens_total": 2},
        )
    )
    store.append(
        AttackRecord(
            round=1,
            client="0",
            attack="spear",
            status="partial",
            reconstruction={"records": [{"age": 41, "job": "nurse"}], "labels": [1, 0]},
        )
    )
    write_reports(store.path)
    html = (store.path / "report.html").read_text(encoding="utf-8")
    page = assert_self_contained(html)
    text = " ".join("".join(page.text).split())
    assert "No ground truth" in text and "without scores" in text
    assert "recovered " + HOSTILE in text and "nurse" in text and "alpha" in text
    assert not page.find("table", cls="diff")  # nothing to compare with
    stored = json.loads((store.path / "summary.json").read_text(encoding="utf-8"))
    assert stored["ground_truth"] is False and [a["last_round"]["basis"] for a in stored["attacks"]] == ["audits"] * 3


def test_a_records_pairs_share_one_table_with_aligned_columns_and_compact_numbers(tmp_path: Path) -> None:
    store = _store(tmp_path)
    first = {"age": 21.000000356323213, "job": "nurse", "city": "Oslo", "gain": -1.254925700777676e-05}
    second = {"age": 30.999999902907998, "job": "clerk", "city": "Rome", "gain": 914.0000001}
    pairs = [
        {"original": first, "recovered": {**first, "city": "Bergen"}, "exact": False, "differs": ["city"]},
        {"original": second, "recovered": dict(second), "exact": True, "differs": []},
        {"original": {"age": 55, "job": "cook", "shift": "night"}, "recovered": None, "exact": False},
    ]
    for pair in pairs:
        pair["score"] = {"feature_accuracy": 1.0 if pair["exact"] else 0.5}
    store.append(
        AttackRecord(
            round=1,
            client="0",
            attack="spear",
            status="partial",
            metrics={"feature_accuracy": 0.5},
            comparison={"kind": "table", "total": 3, "shown": 3, "pairs": pairs},
        )
    )
    write_reports(store.path)
    html = (store.path / "report.html").read_text(encoding="utf-8")
    # One table for the record: one header row of every column, then an original and a recovered
    # row per pair, each row one cell per column (the columns line up from pair to pair).
    (table,) = re.findall(r'<table class="record pairs">.*?</table>', html, re.S)
    assert '<div class="scroll"><table class="record pairs">' in html  # wide tables scroll in their card
    columns = ["age", "job", "city", "gain", "shift"]
    assert re.findall(r"<th(?: class=\"num\")?>([^<]*)</th>", table.split("</thead>")[0])[1:-1] == columns
    assert table.count('<tbody class="pair') == 3 and table.count('<tbody class="pair exact">') == 1
    rows = re.findall(r"<tr class=\"(original|recovered)\">(.*?)</tr>", table, re.S)
    assert [kind for kind, _ in rows] == ["original", "recovered"] * 3
    for kind, row in rows[:-1]:
        assert len(re.findall(r"<td\b", row)) == len(columns) + (kind == "original"), row  # + the score cell
    assert "not recovered" in rows[-1][1] and f'colspan="{len(columns)}"' in rows[-1][1]
    # Numbers compact: 6 significant digits of their column, whole numbers without decimals.
    cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", rows[0][1])]
    assert cells[:4] == ["21", "nurse", "Oslo", "0"] and "21.0000003" not in html
    assert re.findall(r'<td class="differs">([^<]*)</td>', html) == ["Bergen"]
    assert json.loads((store.path / "summary.json").read_text())["attacks"][0]["last_round"]["exact"] == 1


def test_image_paths_that_leave_the_run_directory_are_refused(tmp_path: Path) -> None:
    store = _store(tmp_path)
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
    (tmp_path / "outside.png").write_bytes(png)
    os.symlink(tmp_path / "outside.png", store.path / "link.png")
    names = ["../outside.png", str(tmp_path / "outside.png"), "link.png"]
    store.append(
        AttackRecord(
            round=1,
            client="0",
            attack="ig",
            status="partial",
            metrics={"psnr": 20.0},
            comparison={
                "kind": "image",
                "total": 3,
                "shown": 3,
                "pairs": [{"original": n, "recovered": None, "exact": False, "score": {}} for n in names],
            },
        )
    )
    write_reports(store.path)
    html = (store.path / "report.html").read_text(encoding="utf-8")
    assert not Page(html).find("img") and html.count("refused: the path leaves the run directory") == 3


@pytest.mark.parametrize("fmt", ["html", "md", "json"])
def test_format_writes_only_that_file(tmp_path: Path, fmt: str) -> None:
    store = _store(tmp_path)
    store.append(_text_record(1, "0", [("a b c", "a b c")]))
    store.append(UtilityRecord(round=1, metrics={"loss": 1.0, "accuracy": 0.5}))
    done = run_cli("report", str(store.path), "--format", fmt, timeout=120)
    assert done.returncode == 0, done.stderr
    assert {p.name for p in store.path.iterdir() if p.name in FORMATS.values()} == {FORMATS[fmt]}
    wrong = run_cli("report", str(store.path), "--format", "pdf", timeout=120)
    assert wrong.returncode == 2 and "--format 'pdf'" in wrong.stderr


def test_report_renders_without_torch(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.append(_text_record(1, "0", [("a b c", "a b c")]))
    code = (
        "import sys; sys.modules['torch'] = sys.modules['transformers'] = sys.modules['flwr'] = None\n"
        "from fedaudit.report.markdown import write_reports\n"
        f"print(len(write_reports({str(store.path)!r})))"
    )
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "3", done.stderr[-2000:]


# ---------------------------------------------------------------- images and sweeps


def test_an_image_run_embeds_its_pngs(image_run: Path) -> None:
    html = (image_run / "report.html").read_text(encoding="utf-8")
    page = assert_self_contained(html)
    sources = [a["src"] for a in page.inside("img", "details", "client-round")]
    spear = [r for r in attack_records(read_records(image_run)) if r.attack == "spear"]
    pairs = [p for r in spear for p in r.comparison["pairs"]]
    assert len(sources) == sum(1 + (p["recovered"] is not None) for p in pairs) > 0
    for src in sources:
        assert base64.b64decode(src.removeprefix("data:image/png;base64,"))[:8] == b"\x89PNG\r\n\x1a\n"
    assert "PSNR" in html and "SSIM" in html


def test_sweep_html_tables_the_grid_and_links_each_cell_report(tmp_path: Path) -> None:
    store = _store(tmp_path / "cell-00")
    store.append(_text_record(1, "0", [("a b c", "a b c")]))
    write_reports(store.path)
    rows = [
        {
            "cell": 0,
            "training.lr": 0.1,
            "attack": "dager",
            "statuses": "exact:1",
            "rouge1": 1.0,
            "accuracy": 0.5,
            "epsilon": 2.0,
            "run_dir": str(store.path),
            "error": "",
        },
        {"cell": 1, "training.lr": 0.2, "attack": "", "statuses": "no run directory", "run_dir": "", "error": HOSTILE},
    ]
    html = render_sweep_html(tmp_path, rows, {"training.lr": [0.1, 0.2]}, "sweep of t over training.lr")
    page = assert_self_contained(html)
    links = [a["href"] for a in page.find("a")]
    assert links == [f"cell-00/{store.path.name}/report.html"] and (tmp_path / links[0]).is_file()
    assert len(page.find("tr")) == 3 and len(page.inside("svg", "figure", "plot")) == 2  # vs accuracy, vs epsilon
    assert "&lt;script&gt;" in html
