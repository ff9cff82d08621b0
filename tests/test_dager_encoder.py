"""DAGER's encoder search on full-length sentences: pretrained MiniLM-L6 (a BERT) on SST-2
validation batches (median 24 WordPiece tokens, up to 55), far longer than CoLA's."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedaudit.attacks import Budget
from fedaudit.attacks.dager import Dager
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
