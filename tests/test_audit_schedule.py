"""Overlap: round t + 1 trains while round t is audited, with back-pressure and rounds finished
in order; and a run records the same, whatever the schedule and wherever the attacks run."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import pytest

from fedaudit.audit.schedule import AuditSchedule
from tests.conftest import run_cli
from tests.helpers import when_and_where_aside


def test_rounds_finish_in_order_and_training_waits_for_the_oldest() -> None:
    schedule = AuditSchedule()
    first, second = [Future() for _ in range(2)], [Future()]
    schedule.add(1, first)
    schedule.add(2, second)
    finished: list[int] = []
    schedule.after(2, lambda: finished.append(2))
    schedule.after(1, lambda: finished.append(1))
    second[0].set_result(None)  # round 2 is audited first, but round 1 is not yet
    assert finished == [] and schedule.pending_rounds() == 1

    released = threading.Event()
    schedule.add(3, [Future()])  # two rounds pending: the next round may not train
    waiter = threading.Thread(target=lambda: (schedule.wait(at_most=1), released.set()))
    waiter.start()
    time.sleep(0.2)
    assert not released.is_set()
    first[0].set_result(None)
    first[1].set_result(None)
    waiter.join(5)
    assert released.is_set() and finished == [1, 2]
    schedule.add(4, [])  # a round with nothing to audit (audit.attacks = []) is never pending
    schedule.after(4, lambda: finished.append(4))
    assert schedule.pending_rounds() == 1 and finished == [1, 2]  # round 3 still runs


RUN = [
    "simulations/gpt2_dager.toml",
    "--set",
    "model.config={n_layer=3, n_embd=128, n_head=2}",
    "--set",
    "federation.rounds=2",
    "--set",
    "training.batch_size=4",
]
WAYS = {
    "blocking, one worker process": ["audit.schedule='blocking'"],
    "overlap, one worker process": ["audit.schedule='overlap'"],
    "overlap, Ray actors": ["audit.schedule='overlap'", "audit.backend='ray'"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for way, sets in WAYS.items():
        tmp = tmp_path_factory.mktemp("run")
        extra = [part for item in sets for part in ("--set", item)]
        proc = run_cli("run", *RUN, *extra, "--set", f"output.dir={tmp}", timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        (out[way],) = tmp.iterdir()
    return out


def test_records_and_reports_are_the_same_whatever_the_schedule_and_backend(runs) -> None:
    seen = {}
    for way, run_dir in runs.items():
        records = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]
        key = lambda r: (r["round"], r["type"], r.get("client") or "", r.get("attack") or "")  # noqa: E731
        summary = json.loads((run_dir / "summary.json").read_text())
        seen[way] = (when_and_where_aside(sorted(records, key=key)), when_and_where_aside(summary))
        audits = [r for r in records if r["type"] == "attack"]
        assert len(audits) == 4 * 2 * 2
        assert {r["status"] for r in audits if r["attack"] == "dager"} == {"exact"}, way
    reference = seen.pop("blocking, one worker process")
    for way, (records, summary) in seen.items():
        assert records == reference[0], way
        assert summary == reference[1], way


def test_a_run_with_no_attacks_trains_every_round(tmp_path: Path) -> None:
    sets = ["audit.attacks=[]", "federation.clients=2", "federation.rounds=3", "audit.max_pending_rounds=1"]
    proc = run_cli("run", *(p for s in sets for p in ("--set", s)), "--set", f"output.dir={tmp_path}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run_dir,) = tmp_path.iterdir()
    records = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records if r["type"] == "utility"] == [0, 1, 2, 3]
    assert not [r for r in records if r["type"] == "attack"]


def test_reports_list_attacks_in_the_scenario_order_not_as_audits_finished() -> None:
    from fedaudit.audit.records import AttackRecord, attack_order

    finished = [AttackRecord(1, "0", name, "exact") for name in ("embedding-rows", "probe", "dager")]
    assert attack_order(finished, ["dager", "embedding-rows"]) == ["dager", "embedding-rows", "probe"]
    assert attack_order(finished) == ["embedding-rows", "probe", "dager"]
