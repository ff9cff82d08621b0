"""The Auditor records every outcome: errors, overruns and malformed results never break a round."""

from __future__ import annotations

import time

import pytest

from fedaudit.attacks import REGISTRY, Budget, Reconstruction
from fedaudit.audit.auditor import Auditor
from fedaudit.audit.records import AttackRecord, to_json
from fedaudit.metrics import label_accuracy, match, text_metrics, token_precision_recall
from tests.conftest import TINY_GPT2
from tests.helpers import client_updates, scenario


class Raises:
    name = "raises"

    def applicable(self, observation):
        return True, ""

    def run(self, observation, budget):
        raise RuntimeError("boom")


class Overruns:
    name = "overruns"

    def applicable(self, observation):
        return True, ""

    def run(self, observation, budget):
        while True:
            budget.check()
            time.sleep(0.01)


class TooMany:
    name = "too-many"

    def applicable(self, observation):
        return True, ""

    def run(self, observation, budget):
        return Reconstruction("partial", sequences=[[1, 2]] * 5)


@pytest.fixture(scope="module")
def update():
    return client_updates(scenario(*TINY_GPT2, "training.batch_size=2"), 1)[0]


def test_failures_become_records_and_later_attacks_still_run(update) -> None:
    sink: list[AttackRecord] = []
    records = Auditor(
        [Raises(), Overruns(), TooMany(), REGISTRY.make("embedding-rows")], budget_seconds=0.3, sink=sink.append
    ).audit(*update)
    assert [r.status for r in records] == ["error", "timeout", "error", "exact"]
    assert records[0].reason == "RuntimeError: boom"
    assert "budget of 0.3 s" in records[1].reason
    assert "at most one prediction per example" in records[2].reason
    assert sink == records
    for r in records:
        assert {
            "round",
            "client",
            "attack",
            "status",
            "reason",
            "metrics",
            "seconds",
            "peak_mem_mb",
            "diagnostics",
        } <= set(to_json(r))


def test_budget_counts_down() -> None:
    budget = Budget(0.05)
    assert not budget.expired() and budget.remaining() > 0
    time.sleep(0.06)
    assert budget.expired() and budget.remaining() == 0


def test_text_metrics_match_one_to_one() -> None:
    refs = ["the cat sat on the mat", "a dog barked loudly"]
    assert text_metrics(["a dog barked loudly", "the cat sat on the mat"], refs) == {
        "rouge1": 1.0,
        "rouge2": 1.0,
        "rougeL": 1.0,
        "exact_match": 1.0,
    }
    # The same perfect guess twice only earns one reference.
    twice = text_metrics(["the cat sat on the mat", "the cat sat on the mat"], refs)
    assert twice["exact_match"] == 0.5 and twice["rouge1"] < 0.75
    half = text_metrics(["the cat sat on the mat"], refs)
    assert half == {"rouge1": 0.5, "rouge2": 0.5, "rougeL": 0.5, "exact_match": 0.5}
    # a one-word reference has no bigram: ROUGE-2 averages over the others
    short = text_metrics(["wonderful", "the cat sat on a mat"], ["wonderful", "the cat sat on the mat"])
    assert short["exact_match"] == 0.5 and short["rouge2"] == pytest.approx(0.6)
    assert text_metrics(["wonderful"], ["wonderful"])["rouge2"] == 1.0
    with pytest.raises(ValueError, match="at most one prediction per example"):
        match(["a", "b", "c"], refs)


def test_token_and_label_metrics() -> None:
    assert token_precision_recall({1, 2, 3}, {2, 3, 4, 5}) == (2 / 3, 0.5)
    assert token_precision_recall([1, 1, 2], [1, 2, 2]) == (2 / 3, 2 / 3)
    assert label_accuracy([0, 0, 1], [0, 1, 1]) == 2 / 3
