"""End to end through Flower's simulation engine: records, report, and a run killed mid-way."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.conftest import TINY_GPT2, run_cli

RECORD_KEYS = {"round", "client", "attack", "status", "reason", "metrics", "seconds", "peak_mem_mb", "diagnostics"}
STATUSES = {"exact", "partial", "failed", "not_applicable", "error", "timeout"}


def _only_run(base: Path) -> Path:
    runs = [p for p in base.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def test_two_clients_two_rounds_write_valid_records(tmp_path: Path, cola_path: Path) -> None:
    proc = run_cli(
        "run",
        "--set",
        f"output.dir={tmp_path}",
        *sum((["--set", s] for s in TINY_GPT2), []),
        "--set",
        "federation.clients=2",
        "--set",
        "federation.rounds=2",
        "--set",
        f"data.source={cola_path}",
        "--set",
        "data.max_examples=200",
        "--set",
        "audit.attacks=['embedding-rows', 'labels']",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = _only_run(tmp_path)
    assert (run_dir.stat().st_mode & 0o777) == 0o700
    assert (run_dir / "scenario.toml").is_file() and (run_dir / "report.md").is_file()
    # The stored JSON lines themselves: their format is what older run directories hold too.
    lines = (run_dir / "records.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    audits = [r for r in records if r["type"] == "attack"]
    assert len(audits) == 2 * 2 * 2
    assert {(r["round"], r["client"], r["attack"]) for r in audits} == {
        (rnd, c, a) for rnd in (1, 2) for c in ("0", "1") for a in ("embedding-rows", "labels")
    }
    for r in audits:
        assert RECORD_KEYS <= set(r) and r["status"] in STATUSES
        assert all(0.0 <= v <= 1.0 for v in r["metrics"].values())
        if r["attack"] == "embedding-rows":
            assert r["status"] == "exact" and r["metrics"] == {"token_precision": 1.0, "token_recall": 1.0}
        else:
            assert r["status"] == "not_applicable" and "no bias" in r["reason"]
    utility = [r for r in records if r["type"] == "utility"]
    assert [u["round"] for u in utility] == [0, 1, 2]
    assert all(0.0 <= u["metrics"]["accuracy"] <= 1.0 and u["metrics"]["loss"] > 0 for u in utility)
    report = (run_dir / "report.md").read_text()
    assert "Rounds completed: 2 of 2" in report and "### Round 2" in report
    assert "Round 2/2" in proc.stdout  # the per-round summary table
    # Through pipes: no live progress, no color or cursor codes, none of the libraries' notices
    # (Flower's deprecations, Ray's FutureWarning, transformers' load report), each audit's reason.
    output = proc.stdout + proc.stderr
    assert "\x1b[" not in output and "clients trained" not in output
    for notice in ("DEPRECATED", "fraction_evaluate", "FutureWarning", "LOAD REPORT", "Loading weights"):
        assert notice not in output
    assert proc.stderr == ""
    assert re.search(r"\[round 1/2\] client 0 \S+: \w+ .*\(\d+\.\d\d s\): \w", proc.stdout)  # status (cost): why
    assert "2 clients x 2 rounds" in proc.stdout
