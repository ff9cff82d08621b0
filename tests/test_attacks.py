"""embedding-rows and labels on real CoLA batches, through the Auditor."""

from __future__ import annotations

import pytest
import torch

from fedaudit.attacks import REGISTRY, Budget
from fedaudit.attacks.labels import LabelRecovery, counts_from_bias_gradient
from fedaudit.audit.auditor import Auditor
from tests.conftest import TINY_BERT, TINY_GPT2
from tests.helpers import client_updates, scenario


def _audit(attack: str, obs_truth):
    auditor = Auditor([REGISTRY.make(attack)], budget_seconds=60)
    return [auditor.audit(obs, truth)[0] for obs, truth in obs_truth]


@pytest.mark.parametrize("model", [TINY_GPT2, TINY_BERT], ids=["gpt2", "bert"])
@pytest.mark.parametrize("batch_size", [1, 8])
def test_embedding_rows_exact_on_real_cola_batches(cola_path, model, batch_size) -> None:
    sc = scenario(*model, f"data.source={cola_path}", f"training.batch_size={batch_size}")
    for record in _audit("embedding-rows", client_updates(sc, 3, seed=7)):
        assert record.status == "exact", record.reason
        assert record.metrics == {"token_precision": 1.0, "token_recall": 1.0}
        assert record.diagnostics["rows_nonzero"] > 0


def test_embedding_rows_recovers_exactly_the_used_token_set(cola_path) -> None:
    sc = scenario(*TINY_GPT2, f"data.source={cola_path}", "training.batch_size=4")
    ((obs, truth),) = client_updates(sc, 1, seed=3)
    rec = REGISTRY.make("embedding-rows").run(obs, Budget(60))
    used = {t for seq in truth.sequences() for t in seq}
    assert rec.tokens == used


def test_embedding_rows_fedavg_float64_is_exact_and_float32_says_why(cola_path) -> None:
    common = [
        *TINY_GPT2,
        f"data.source={cola_path}",
        "training.mode=fedavg",
        "training.batch_size=4",
        "training.mini_batch_size=2",
        "training.local_epochs=2",
    ]
    exact = _audit("embedding-rows", client_updates(scenario(*common, "model.dtype=float64"), 2))
    assert all(r.status == "exact" and r.metrics["token_recall"] == 1.0 for r in exact)
    f32 = _audit("embedding-rows", client_updates(scenario(*common), 1))
    assert f32[0].status == "partial" and "float32" in f32[0].reason
    assert f32[0].metrics["token_precision"] == 1.0


def test_embedding_rows_not_applicable_when_tied(cola_path) -> None:
    sc = scenario(*TINY_GPT2, f"data.source={cola_path}", "model.task=causal-lm")
    (record,) = _audit("embedding-rows", client_updates(sc, 1))
    assert record.status == "not_applicable" and "tied" in record.reason
    untied = scenario(
        *TINY_GPT2, f"data.source={cola_path}", "model.task=causal-lm", "model.config.tie_word_embeddings=false"
    )
    (record,) = _audit("embedding-rows", client_updates(untied, 1))
    assert record.status == "partial" and "last token" in record.reason
    assert record.metrics["token_precision"] == 1.0


def test_labels_exact_at_batch_one_with_a_bias(cola_path) -> None:
    sc = scenario(*TINY_BERT, f"data.source={cola_path}", "training.batch_size=1")
    records = _audit("labels", client_updates(sc, 12, seed=5))
    assert all(r.status == "exact" and r.metrics["label_accuracy"] == 1.0 for r in records)


def test_labels_batch_counts_with_a_bias_are_partial_and_scored(cola_path) -> None:
    sc = scenario(*TINY_BERT, f"data.source={cola_path}", "training.batch_size=8")
    records = _audit("labels", client_updates(sc, 5, seed=2))
    for r in records:
        assert r.status == "partial" and "estimated" in r.reason
        assert len(r.reconstruction["labels"]) == 8
    # Near-uniform predictions of a fresh model make the count estimate accurate.
    assert sum(r.metrics["label_accuracy"] for r in records) / len(records) >= 0.85


def test_labels_explains_why_it_cannot_be_exact_without_a_bias(cola_path) -> None:
    two_class = scenario(*TINY_GPT2, f"data.source={cola_path}", "training.batch_size=1")
    (record,) = _audit("labels", client_updates(two_class, 1))
    assert record.status == "not_applicable"
    assert "bias-free head over signed features with two classes" in record.reason
    batch = scenario(*TINY_GPT2, f"data.source={cola_path}", "training.batch_size=4")
    (record,) = _audit("labels", client_updates(batch, 1))
    assert record.status == "not_applicable" and "no bias" in record.reason


def test_labels_bias_free_three_classes_at_batch_one_is_exact() -> None:
    sc = scenario(*TINY_GPT2, "data.source=demo", "training.batch_size=1")
    records = _audit("labels", client_updates(sc, 6, seed=1))
    assert all(r.status == "exact" and r.metrics["label_accuracy"] == 1.0 for r in records)


def test_labels_not_applicable_for_causal_lm() -> None:
    ok, why = LabelRecovery().applicable(client_updates(scenario(*TINY_GPT2, "model.task=causal-lm"), 1)[0][0])
    assert not ok and "causal LM" in why


def test_counts_from_bias_gradient_recovers_counts_when_softmax_is_uniform() -> None:
    # g_b = mean softmax - n/B with a uniform softmax over 4 classes and counts (3, 0, 1, 0) of B = 4.
    counts = torch.tensor([3.0, 0.0, 1.0, 0.0])
    grad = torch.full((4,), 0.25) - counts / 4
    assert counts_from_bias_gradient(grad, 4) == [0, 0, 0, 2]
