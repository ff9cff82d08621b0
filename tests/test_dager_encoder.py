"""DAGER's encoder search on full-length sentences: pretrained MiniLM-L6 (a BERT) on SST-2
validation batches (median 24 WordPiece tokens, up to 55), far longer than CoLA's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedaudit.attacks import Budget
from fedaudit.attacks.dager import Dager
from fedaudit.attacks.dager.encoder_beam import per_lineage
from fedaudit.attacks.dager.setup import KeptModel, build_setup
from fedaudit.audit.scoring import score
from tests.helpers import client_updates, scenario

MINILM = ["model.name=minilm-l6", "model.config={}"]


@pytest.fixture(scope="module")
def sst2_validation_path(data_dir: Path) -> Path:
    return data_dir / "text" / "sst2" / "validation.tsv"


def _runs(path: Path, batch_size: int, batches: int):
    sc = scenario(f"data.source={path}", f"training.batch_size={batch_size}", "audit.attacks=['dager']", *MINILM)
    attack = Dager(device="cpu")
    for observation, truth in client_updates(sc, batches):
        yield attack.run(observation, Budget(300)), truth, observation


def test_two_full_length_sst2_sentences_are_recovered_exactly(sst2_validation_path) -> None:
    for rec, truth, observation in _runs(sst2_validation_path, 2, 1):
        assert rec.status == "exact", rec.reason
        assert sorted(rec.sequences) == sorted(truth.sequences())
        assert rec.diagnostics["explained_layer2"] >= rec.diagnostics["rank_layer2"]
        assert score(rec, truth, observation.model)["exact_match"] == 1.0


def test_a_bert_prefix_extended_through_the_cache_reads_as_the_sentence_cut_there(sst2_validation_path) -> None:
    """What the left-to-right reading rests on: the first layer's keys and values of a prefix
    depend on its own tokens only, so extending it through the probe's cache reads the new last
    position exactly as a forward of the sentence cut after it."""
    observation, truth = client_updates(scenario(f"data.source={sst2_validation_path}", *MINILM), 1)[0]
    cpu = torch.device("cpu")
    setup = build_setup(observation, cpu, KeptModel().get(observation, cpu))
    sentence = torch.tensor([truth.sequences()[0]])
    _, keys, values = setup.probe.start(sentence[:, :9])
    extended, _, _ = setup.probe.extend(sentence[:, 9:10], keys, values)
    cut = setup.probe.inputs(sentence[:, :10])[:, -1]
    torch.testing.assert_close(extended[:, -1], cut, rtol=0, atol=1e-5)
    assert not torch.allclose(cut, setup.probe.inputs(sentence)[:, 9], atol=1e-3)  # the rest does matter


def test_each_lineage_keeps_its_best_prefixes() -> None:
    rows = torch.arange(12)[:, None]
    total = torch.tensor([5.0, 1.0, 3.0, 2.0, 9.0, 0.5, 4.0, 7.0, 6.0, 8.0, 2.5, 0.125])
    line = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 0])
    kept_rows, kept_total, _, _, kept_line = per_lineage(rows, total, rows, rows, line, keep=2)
    by_line = {}
    for r, t, lin in zip(kept_rows.flatten().tolist(), kept_total.tolist(), kept_line.tolist()):
        by_line.setdefault(lin, []).append((t, r))
    assert {k: sorted(v) for k, v in by_line.items()} == {
        0: [(0.125, 11), (1.0, 1)],
        1: [(0.5, 5), (2.0, 3)],
        2: [(4.0, 6), (6.0, 8)],
        3: [(2.5, 10)],
    }


def test_four_full_length_sst2_sentences_are_recovered_exactly(sst2_validation_path) -> None:
    for rec, truth, observation in _runs(sst2_validation_path, 4, 1):
        assert rec.status == "exact", rec.reason
        assert sorted(rec.sequences) == sorted(truth.sequences())
        assert min(len(s) for s in truth.sequences()) >= 18  # full-length review sentences, not CoLA's
