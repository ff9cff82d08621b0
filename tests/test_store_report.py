"""The run store is private and append-only; the report escapes untrusted client text."""

from __future__ import annotations

import json
from pathlib import Path

from fedaudit.audit.records import AttackRecord, ClientError, UtilityRecord, read_records, summarize
from fedaudit.audit.store import RunStore
from fedaudit.config import Scenario
from fedaudit.report.markdown import md_escape, render_report
from tests.conftest import REPO_ROOT


def test_store_is_private_and_flushes_each_record(tmp_path: Path) -> None:
    store = RunStore.create(Scenario(name="t"), base_dir=tmp_path / "runs")
    assert (store.path.stat().st_mode & 0o777) == 0o700
    assert (store.path / "scenario.toml").read_text().startswith('name = "t"')
    assert (store.path / "scenario.toml").stat().st_mode & 0o777 == 0o600
    store.append(AttackRecord(round=1, client="0", attack="x", status="exact", metrics={"psnr": float("inf")}))
    # Readable by another reader immediately: JSON has no inf, so the metric is null and the
    # value noted beside it (never a string in place of a number).
    stored = json.loads((store.path / "records.jsonl").read_text().splitlines()[0])
    assert stored["metrics"]["psnr"] is None
    assert stored["non_finite"] == {"metrics.psnr": "inf"}
    with store.records_path.open("a") as fh:
        fh.write('{"torn": ')
    assert read_records(store.path) == [
        AttackRecord(round=1, client="0", attack="x", status="exact", metrics={"psnr": float("inf")})
    ]


def test_report_escapes_client_text(tmp_path: Path) -> None:
    store = RunStore.create(Scenario(name="esc"), base_dir=tmp_path)
    evil = "<script>alert(1)</script> | ![x](http://evil) `code`"
    store.append(
        AttackRecord(
            round=1,
            client="0",
            attack="embedding-rows",
            status="exact",
            reason=evil,
            metrics={"token_recall": 1.0},
            seconds=0.1,
            peak_mem_mb=1.0,
            reconstruction={"tokens": [evil], "tokens_total": 1},
        )
    )
    store.append(UtilityRecord(round=1, metrics={"loss": 1.0, "accuracy": 0.5}))
    report = render_report(store.path)
    assert "<script>" not in report and "&lt;script&gt;" in report
    assert "](http" not in report
    assert md_escape("a|b") == "a\\|b"
    table_rows = [line for line in report.splitlines() if line.startswith("| 0 | embedding-rows")]
    assert len(table_rows) == 1 and table_rows[0].count(" | ") == 7  # the '|' in the text did not add a cell


LEGACY_RUN = Path(__file__).resolve().parent / "fixtures" / "20261202-180135-legacy_run-4e9a"


def test_a_run_directory_written_before_typed_records_still_renders() -> None:
    """``fixtures/<run-id>`` was written by fedaudit before records were typed (untyped dicts,
    epsilon "inf" stored as a string); its report.md is what that version rendered from it, with
    the rows since put in round, then client order."""
    records = read_records(LEGACY_RUN)
    assert [r.type for r in records].count("attack") == 8 and [r.type for r in records].count("utility") == 3
    assert all(r.diagnostics["epsilon"] == float("inf") for r in records if r.type == "attack")
    assert render_report(LEGACY_RUN) == (LEGACY_RUN / "report.md").read_text(encoding="utf-8")


def test_one_summary_per_attack_skips_what_is_not_a_finite_number() -> None:
    records = [
        AttackRecord(round=1, client=str(c), attack="dager", status=s, metrics=m, seconds=t, peak_mem_mb=p)
        for c, (s, m, t, p) in enumerate(
            [
                ("exact", {"rouge1": 1.0}, 1.0, 10.0),
                ("partial", {"rouge1": 0.5, "psnr": float("nan")}, 3.0, 30.0),
                ("timeout", {}, 2.0, 5.0),
            ]
        )
    ]
    records.append(ClientError(round=1, client="9", reason="oom"))
    (summary,) = summarize(records)
    assert (summary.attack, summary.audits, summary.statuses) == ("dager", 3, {"exact": 1, "partial": 1, "timeout": 1})
    assert summary.metrics == {"rouge1": 0.75}
    assert (summary.seconds_mean, summary.seconds_median, summary.peak_mem_mb) == (2.0, 2.0, 30.0)


def test_the_report_renders_from_a_flower_app_bundle(tmp_path: Path) -> None:
    """Under ``flwr run`` fedaudit is imported from the app's FAB, which holds only the file
    kinds Flower packs (no .j2 or .css): the templates come from the installed fedaudit."""
    import shutil
    import subprocess
    import sys

    from flwr.common.constant import FAB_INCLUDE_PATTERNS

    packed = {pattern.removeprefix("**/*") for pattern in FAB_INCLUDE_PATTERNS if pattern.startswith("**/*.")}
    bundle = tmp_path / "fab"
    for source in (REPO_ROOT / "fedaudit").rglob("*"):
        if source.is_file() and source.suffix in packed and "__pycache__" not in source.parts:
            target = bundle / source.relative_to(REPO_ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
    assert not list(bundle.rglob("*.j2")) and (bundle / "fedaudit/report/templates/report.template.md").is_file()
    run_dir = shutil.copytree(LEGACY_RUN, tmp_path / "run")
    script = (
        "import fedaudit, sys; from fedaudit.report.markdown import write_reports; "
        f"assert fedaudit.__file__.startswith({str(bundle)!r}), fedaudit.__file__; "
        f"write_reports({str(run_dir)!r})"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=bundle, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'id="headline"' in (run_dir / "report.html").read_text(encoding="utf-8")
