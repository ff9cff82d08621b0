"""The HTML report of a real run, opened in a headless Chromium: it renders without errors, is
self-contained (no network request at all) and shows a client's hostile sentence as text.

Needs a Chromium binary (Debian's ``chromium``; ``.ci/run`` installs it): ``$FEDAUDIT_CHROMIUM``,
else ``chromium``, ``chromium-browser`` or ``google-chrome`` on the PATH. Playwright drives it;
it never downloads a browser of its own.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fedaudit.data import holdout_split
from tests.conftest import run_cli

#: A client's sentence that runs script twice over if the report inserts it as HTML.
HOSTILE = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
#: CoLA rows in the run: 2 held out, 8 for two clients of 4 (each client's whole shard is its batch).
ROWS, CLIENTS, BATCH = 10, 2, 4
#: GPT-2 with a layer 2 (DAGER's check) and width 128 > the 4 sentences' tokens: exact recovery.
TINY_DAGER_GPT2 = ["model.name=gpt2-random", "model.config={n_layer=3, n_embd=128, n_head=2}"]
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


@pytest.fixture(scope="module")
def chromium() -> str:
    """The Chromium binary to drive: $FEDAUDIT_CHROMIUM, else the first of BROWSERS on the PATH."""
    named = os.environ.get("FEDAUDIT_CHROMIUM")
    if named:  # set on purpose: a wrong value is an error, not a reason to skip
        path = shutil.which(named)
        assert path, f"FEDAUDIT_CHROMIUM={named!r} is not an executable file or a command on the PATH"
        return path
    path = next((found for name in BROWSERS if (found := shutil.which(name))), None)
    if path is None:
        pytest.skip(
            f"no Chromium binary ({', '.join(BROWSERS)} on the PATH, or $FEDAUDIT_CHROMIUM): "
            "install Debian's chromium (.ci/run does) to run the report's browser test"
        )
    return path


def _hostile_tsv(cola_path: Path, out: Path) -> Path:
    """Real CoLA rows with the hostile sentence put where it lands in a client's training data."""
    rows = cola_path.read_text(encoding="utf-8").splitlines()[:ROWS]
    train, _holdout = holdout_split(ROWS, 0.2, 0)  # the run's split: default fraction and seed
    rows[int(train[0])] = f"fa99\t0\t*\t{HOSTILE}"
    out.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def hostile_report(tmp_path_factory, cola_path: Path) -> Path:
    """report.html of a one-round DAGER run whose clients hold the hostile sentence."""
    base = tmp_path_factory.mktemp("browser")
    source = _hostile_tsv(cola_path, base / "hostile.tsv")
    overrides = [
        f"output.dir={base / 'runs'}",
        *TINY_DAGER_GPT2,
        f"data.source={source}",
        f"federation.clients={CLIENTS}",
        "federation.rounds=1",
        f"training.batch_size={BATCH}",
        "audit.attacks=['dager', 'embedding-rows']",
    ]
    proc = run_cli("run", *(arg for o in overrides for arg in ("--set", o)))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = [p for p in (base / "runs").iterdir() if p.is_dir()]
    # The attack recovered the sentence, so the report has it to show.
    records = [json.loads(line) for line in (run_dir / "records.jsonl").read_text(encoding="utf-8").splitlines()]
    assert any(HOSTILE in (r.get("reconstruction") or {}).get("texts", []) for r in records)
    return run_dir / "report.html"


@dataclass
class Page:
    """What the browser saw of the report."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    visible: dict[str, bool] = field(default_factory=dict)
    text: str = ""
    diff_cells: list[str] = field(default_factory=list)
    pwned: str = ""
    handlers: int = 0


VISIBLE = {"headline": "section#headline", "plot": "figure.plot svg", "diff": "table.diff"}


def _render(report: Path, chromium: str, shot: Path) -> Page:
    """Open ``report`` in a headless Chromium that lets only file: and data: URLs through."""
    from playwright.sync_api import sync_playwright

    seen = Page()

    def route(r) -> None:
        if r.request.url.startswith(("file:", "data:")):
            r.continue_()
        else:
            seen.blocked.append(r.request.url)
            r.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: seen.console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: seen.page_errors.append(str(e)))
            page.on("request", lambda r: seen.requests.append(r.url))
            page.route("**/*", route)
            page.goto(report.as_uri(), wait_until="load")
            seen.visible = {name: page.locator(css).first.is_visible() for name, css in VISIBLE.items()}
            page.screenshot(path=str(shot), full_page=True)
            # Every client's side-by-side block open, so all of the report's text is rendered.
            page.evaluate("document.querySelectorAll('details').forEach(d => { d.open = true; })")
            seen.text = page.inner_text("body")
            seen.diff_cells = page.locator("table.diff td").all_inner_texts()
            seen.pwned = page.evaluate("typeof window.__pwned")
            seen.handlers = page.evaluate("document.querySelectorAll('[onerror], [onload], img[src=\"x\"]').length")
        finally:
            browser.close()
    return seen


def test_report_renders_offline_and_shows_hostile_text_as_text(chromium: str, hostile_report: Path, tmp_path) -> None:
    shot = tmp_path / "report.png"
    seen = _render(hostile_report, chromium, shot)
    assert seen.console_errors == [] and seen.page_errors == []
    assert seen.visible == {"headline": True, "plot": True, "diff": True}
    # The sentence is text on the page; neither its script nor its image handler ran or exists.
    assert HOSTILE in seen.text
    assert seen.diff_cells.count(HOSTILE) == 2  # the original and, recovered word for word, beside it
    assert seen.pwned == "undefined" and seen.handlers == 0
    # Self-contained: the page itself is the only request, and nothing was blocked.
    assert seen.blocked == []
    assert [u for u in seen.requests if not u.startswith("data:")] == [hostile_report.as_uri()]
    from PIL import Image

    with Image.open(shot) as image:
        # As wide as the viewport (nothing overflows sideways), at least as tall, not one flat colour.
        assert image.format == "PNG" and image.width == 1280 and image.height >= 900
        lo_hi = image.convert("L").getextrema()
        assert lo_hi[0] < lo_hi[1]


def _wide_table_report(base: Path) -> Path:
    """report.html of typed records: a table of 30 long columns per record, four clients, two rounds."""
    from fedaudit.audit.records import AttackRecord, UtilityRecord
    from fedaudit.audit.store import RunStore
    from fedaudit.config import Scenario
    from fedaudit.report.markdown import write_reports

    store = RunStore.create(Scenario(name="wide"), base_dir=base)
    row = {f"a_rather_long_column_name_{i}": 1000.000000356 * i for i in range(30)}
    pairs = [{"original": row, "recovered": row, "exact": True, "score": {"feature_accuracy": 1.0}}] * 3
    for rnd in (1, 2):
        store.append(UtilityRecord(round=rnd, metrics={"loss": 1.0 / rnd, "accuracy": 0.5}))
        for client in "0123":
            comparison = {"kind": "table", "total": 3, "shown": 3, "pairs": pairs}
            metrics = {"feature_accuracy": 1.0}
            store.append(AttackRecord(rnd, client, "spear", "exact", metrics=metrics, comparison=comparison))
    write_reports(store.path, ["html"])
    return store.path / "report.html"


def test_wide_tables_scroll_in_their_card_and_plots_sit_side_by_side(chromium: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    report = _wide_table_report(tmp_path)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(report.as_uri(), wait_until="load")
            page.evaluate("document.querySelectorAll('details').forEach(d => { d.open = true; })")
            width = page.evaluate("document.documentElement.scrollWidth")
            scrolls = page.evaluate(
                "[...document.querySelectorAll('.scroll')].filter(s => s.querySelector('table.pairs'))"
                ".map(s => [s.scrollWidth, s.clientWidth])"
            )
            tops = page.evaluate(
                "[...document.querySelectorAll('.plots')].map(p => [...p.querySelectorAll('figure.plot')]"
                ".map(f => Math.round(f.getBoundingClientRect().top)))"
            )
        finally:
            browser.close()
    assert width == 1280  # the page never grows sideways...
    assert len(scrolls) == 8 and all(inner > outer for inner, outer in scrolls)  # ...its wide tables scroll
    assert len(tops) == 2 and all(len(row) == 2 and len(set(row)) == 1 for row in tops)  # figures side by side
