"""The run store is private and append-only; the report escapes untrusted client text."""

from __future__ import annotations

import json
from pathlib import Path

from fedaudit.audit.store import RunStore, read_records
from fedaudit.config import Scenario
from fedaudit.report.markdown import md_escape, render_report


def test_store_is_private_and_flushes_each_record(tmp_path: Path) -> None:
    store = RunStore.create(Scenario(name="t"), base_dir=tmp_path / "runs")
    assert (store.path.stat().st_mode & 0o777) == 0o700
    assert (store.path / "scenario.toml").read_text().startswith('name = "t"')
    store.append({"type": "attack", "round": 1, "client": "0", "attack": "x", "metrics": {"psnr": float("inf")}})
    # Readable by another reader immediately, inf kept as text rather than breaking JSON.
    line = (store.path / "records.jsonl").read_text().splitlines()[0]
    assert json.loads(line)["metrics"]["psnr"] == "inf"
    with store.records_path.open("a") as fh:
        fh.write('{"torn": ')
    assert len(read_records(store.path)) == 1


def test_report_escapes_client_text(tmp_path: Path) -> None:
    store = RunStore.create(Scenario(name="esc"), base_dir=tmp_path)
    evil = "<script>alert(1)</script> | ![x](http://evil) `code`"
    store.append({"type": "attack", "round": 1, "client": "0", "attack": "embedding-rows", "status": "exact",
                  "reason": evil, "metrics": {"token_recall": 1.0}, "seconds": 0.1, "peak_mem_mb": 1.0,
                  "diagnostics": {}, "reconstruction": {"tokens": [evil], "tokens_total": 1}})
    store.append({"type": "utility", "round": 1, "client": None, "attack": None,
                  "metrics": {"loss": 1.0, "accuracy": 0.5}})
    report = render_report(store.path)
    assert "<script>" not in report and "&lt;script&gt;" in report
    assert "](http" not in report
    assert md_escape("a|b") == "a\\|b"
    table_rows = [line for line in report.splitlines() if line.startswith("| 0 | embedding-rows")]
    assert len(table_rows) == 1 and table_rows[0].count(" | ") == 7  # the '|' in the text did not add a cell
