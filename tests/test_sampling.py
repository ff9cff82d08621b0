"""Audit sampling (``audit.clients``, ``audit.rounds``): which updates are audited, seeded, and
the report of a sampled run, which says what was sampled and estimates leakage over it."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from fedaudit.audit.records import ClientError, UtilityRecord
from fedaudit.audit.sampling import AuditSample
from fedaudit.audit.store import RunStore
from fedaudit.config import Scenario
from fedaudit.config.audit import AuditConfig
from fedaudit.report.markdown import render_report, write_reports
from tests.conftest import REPO_ROOT
from tests.test_report_html import Page, _store, _text_record, assert_self_contained

# ---------------------------------------------------------------- which updates are audited


def test_a_fraction_is_a_seeded_sample_of_ceil_f_times_n_drawn_afresh_each_round() -> None:
    sample = AuditSample(AuditConfig(clients=0.25, sample_seed=7), clients=100)
    again = AuditSample(AuditConfig(clients=0.25, sample_seed=7), clients=100)
    other = AuditSample(AuditConfig(clients=0.25, sample_seed=8), clients=100)
    rounds = [sample.clients_of(r) for r in range(1, 6)]
    assert all(len(ids) == 25 and ids <= set(range(100)) for ids in rounds)
    assert rounds == [again.clients_of(r) for r in range(1, 6)]  # the seed and round alone decide
    assert len(set(rounds)) == 5  # a fresh sample each round
    assert rounds[0] != other.clients_of(1)
    # selects() agrees with the round's set whatever order the clients ask in.
    for rnd, ids in zip(range(1, 6), rounds, strict=True):
        assert {c for c in reversed(range(100)) if sample.selects(rnd, c)} == ids
    # ceil(f * n), at least one, and no floating-point extra (0.1 * 30 = 3.0000000000000004).
    assert AuditSample(AuditConfig(clients=0.1), 30).size() == 3
    assert AuditSample(AuditConfig(clients=0.34), 10).size() == 4
    assert len(AuditSample(AuditConfig(clients=0.01), 5).clients_of(1)) == 1
    assert AuditSample(AuditConfig(clients=1.0), 9).clients_of(3) == set(range(9))


def test_listed_clients_and_every_n_rounds() -> None:
    sample = AuditSample(AuditConfig(clients=[2, 5], rounds="every 3"), clients=8)
    audited = {(r, c) for r in range(1, 9) for c in range(8) if sample.selects(r, c)}
    assert audited == {(r, c) for r in (1, 4, 7) for c in (2, 5)}
    assert sample.clients_of(2) == set() and sample.sampled
    listed = AuditSample(AuditConfig(rounds=[2, 5]), clients=3)
    assert [r for r in range(1, 7) if listed.selects(r, 0)] == [2, 5]
    # Nothing left out, however it is written: no sample to report.
    for everything in (AuditConfig(), AuditConfig(clients=1.0, rounds="every 1"), AuditConfig(clients=[0, 1, 2])):
        assert not AuditSample(everything, clients=3).sampled


def test_the_sample_in_one_sentence() -> None:
    assert AuditSample(AuditConfig(clients=0.25, rounds="every 2"), 100).describe() == (
        "25% of 100 clients (25) each round, drawn afresh with seed 0; every 2nd round (1, 3, 5, ...)"
    )
    assert AuditSample(AuditConfig(clients=[0, 3, 7], rounds=[1, 11]), 10).describe() == (
        "clients 0, 3 and 7 of 10, chosen by list; rounds 1 and 11"
    )
    assert AuditSample(AuditConfig(clients=list(range(9)), rounds="every 1"), 20).describe() == (
        "9 listed clients of 20, chosen by list; every round"
    )
    every_21st = AuditSample(AuditConfig(rounds="every 21"), 4)
    assert every_21st.describe() == "all 4 clients; every 21st round (1, 22, 43, ...)"


# ---------------------------------------------------------------- the report of a sampled run


def _wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval, written out (the report computes it with scipy)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.fixture
def sampled_run(tmp_path: Path) -> Path:
    """10 clients, 4 rounds, half the clients audited every 2nd round: rounds 1 and 3, 5 clients
    each; a client failed in round 2. 4 of the 10 audits recover their sentences exactly."""
    scenario = Scenario(
        name="sampled",
        federation={"clients": 10, "rounds": 4},
        audit={"clients": 0.5, "rounds": "every 2", "sample_seed": 3},
    )
    store = RunStore.create(scenario, base_dir=tmp_path)
    sample = AuditSample(scenario.audit, scenario.federation.clients)
    audited = [(r, c) for r in range(1, 5) for c in range(10) if sample.selects(r, c)]
    assert len(audited) == 10
    for i, (rnd, client) in enumerate(audited):
        recovered = "the cat sat on the mat" if i < 4 else "a dog sat on the mat"
        store.append(_text_record(rnd, str(client), [("the cat sat on the mat", recovered)]))
    store.append(ClientError(round=2, client="4", reason="oom"))
    for rnd in range(0, 5):
        store.append(UtilityRecord(round=rnd, metrics={"loss": 1.0, "accuracy": 0.5}))
    write_reports(store.path)
    return store.path


def test_a_sampled_run_reports_the_sample_and_estimates_with_intervals(sampled_run: Path) -> None:
    sentence = "50% of 10 clients (5) each round, drawn afresh with seed 3; every 2nd round (1, 3, 5, ...)"
    stored = json.loads((sampled_run / "summary.json").read_text(encoding="utf-8"))
    sample = stored["sample"]
    # 4 rounds trained (round 0 is the initial model) x 10 clients, less the failed one.
    assert (sample["sentence"], sample["audits"], sample["client_rounds"]) == (sentence, 10, 39)
    assert sample["by_list"] is False and sample["confidence"] == 0.95
    (dager,) = sample["attacks"]
    assert (dager["attack"], dager["exact"], dager["scored"], dager["rate"]) == ("dager", 4, 10, 0.4)
    assert (dager["rate_low"], dager["rate_high"]) == pytest.approx(_wilson(4, 10))
    assert dager["rate_low"] < dager["rate"] < dager["rate_high"]
    # ROUGE-1: 1.0 for the 4 exact audits, 0.6 for the 6 others.
    assert dager["metric"] == "rouge1" and dager["values"] == 10 and dager["mean"] == pytest.approx(0.76)
    assert dager["mean_low"] < dager["mean"] < dager["mean_high"] <= 1.0

    html = (sampled_run / "report.html").read_text(encoding="utf-8")
    page = assert_self_contained(html)
    (block,) = page.find("div", id_="sample")
    assert (block["data-audits"], block["data-client-rounds"]) == ("10", "39")
    # In the headline section, beside the cards it qualifies.
    (parents,) = [up for _, a, up in page.tags if a.get("id") == "sample"]
    assert parents[-1][0] == "section" and parents[-1][1]["id"] == "headline"
    text = " ".join("".join(page.text).split())
    assert sentence in text and "10 audits of 39 client-rounds that trained" in text
    assert f"40.0% (4 of 10 audits) {100 * dager['rate_low']:.1f}–{100 * dager['rate_high']:.1f}%" in text

    md = (sampled_run / "report.md").read_text(encoding="utf-8")
    assert md == render_report(sampled_run)  # with or without the data model built beside it
    assert sentence in md and "10 audits of 39 client-rounds that trained" in md
    assert "\n\n| attack | exact recovery |" in md  # a table, not a paragraph's last lines
    assert f"| dager | 40.0% (4 of 10 audits) | {100 * dager['rate_low']:.1f}%–{100 * dager['rate_high']:.1f}% |" in md


def test_listed_clients_are_said_not_to_be_a_random_sample(tmp_path: Path) -> None:
    scenario = Scenario(name="listed", federation={"clients": 4, "rounds": 1}, audit={"clients": [1]})
    store = RunStore.create(scenario, base_dir=tmp_path)
    store.append(_text_record(1, "1", [("a b c", "a b c")]))
    store.append(UtilityRecord(round=1, metrics={"loss": 1.0}))
    write_reports(store.path)
    sample = json.loads((store.path / "summary.json").read_text(encoding="utf-8"))["sample"]
    # One audit: a rate and its interval, a mean without one (a t-interval needs two values).
    (dager,) = sample["attacks"]
    assert sample["by_list"] and (sample["audits"], sample["client_rounds"]) == (1, 4)
    assert dager["rate"] == 1.0 and dager["rate_low"] < 1.0 and dager["mean_low"] is None
    assert "not at random" in (store.path / "report.html").read_text(encoding="utf-8")
    assert "not at random" in (store.path / "report.md").read_text(encoding="utf-8")


def test_a_run_that_audits_everything_has_no_sample_section(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.append(_text_record(1, "0", [("a b c", "a b c")]))
    store.append(UtilityRecord(round=1, metrics={"loss": 1.0}))
    write_reports(store.path)
    assert "sample" not in json.loads((store.path / "summary.json").read_text(encoding="utf-8"))
    assert not Page((store.path / "report.html").read_text(encoding="utf-8")).find("div", id_="sample")
    md = (store.path / "report.md").read_text(encoding="utf-8")
    assert "sample" not in md.lower() and "95% interval" not in md


def test_a_sampled_run_renders_where_torch_transformers_and_flower_are_missing(sampled_run: Path) -> None:
    # Not installed, rather than ``sys.modules[name] = None``: scipy.stats probes a torch it finds there.
    code = (
        "import sys\n"
        "class Missing:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'transformers', 'flwr'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Missing())\n"
        "from fedaudit.report.markdown import write_reports\n"
        f"print(len(write_reports({str(sampled_run)!r})))\n"
        "print(sorted(m for m in ('torch', 'transformers', 'flwr') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert done.returncode == 0 and done.stdout.split() == ["3", "[]"], done.stderr[-2000:]
    assert "drawn afresh with seed 3" in (sampled_run / "report.md").read_text(encoding="utf-8")


# ---------------------------------------------------------------- a sampled run, end to end


def test_a_sampled_run_audits_only_what_the_sample_selects(tmp_path: Path) -> None:
    from fedaudit.scenario import scenario_from_run_config
    from tests.conftest import run_cli

    sets = ["federation.clients=4", "federation.rounds=2", "audit.clients=0.5", "audit.rounds=[2]"]
    sets.append("audit.sample_seed=3")
    proc = run_cli("run", *(p for s in sets for p in ("--set", s)), "--set", f"output.dir={tmp_path}", timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run_dir,) = tmp_path.iterdir()
    records = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]
    audited = {(r["round"], int(r["client"])) for r in records if r["type"] == "attack"}
    chosen = AuditSample(scenario_from_run_config({"overrides": ";".join(sets)}).audit, 4).clients_of(2)
    assert audited == {(2, c) for c in chosen} and len(chosen) == 2
    assert [r["round"] for r in records if r["type"] == "utility"] == [0, 1, 2]  # every round trained
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["sample"]["audits"], summary["sample"]["client_rounds"]) == (2, 8)
