"""DAGER's choice of B sentences among those that pass the layer-2 check (decoders near the width)."""

from __future__ import annotations

from fedaudit.attacks.base import Budget
from fedaudit.attacks.dager import Dager
from fedaudit.attacks.dager.choice import choose
from fedaudit.audit.scoring import score
from tests.helpers import client_updates, scenario

# A random-init LLaMA (rotary) of width 128 at B = 12 CoLA sentences: B*n ~ 110 of 128, so a
# true prefix followed by a wrong batch token lands close enough to the span to pass.
LLAMA_128 = [
    "model.name=llama-random",
    "model.config={num_hidden_layers=3, hidden_size=128, intermediate_size=256, "
    "num_attention_heads=4, num_key_value_heads=2, head_dim=32}",
]


def test_a_false_extension_that_passes_is_not_chosen(cola_path) -> None:
    sc = scenario(f"data.source={cola_path}", "training.batch_size=12", "audit.attacks=['dager']", *LLAMA_128)
    observation, truth = client_updates(sc, 2)[1]  # the second batch: one false extension passes
    rec = Dager(device="cpu").run(observation, Budget(120))
    assert rec.status == "exact", rec.reason
    assert sorted(rec.sequences) == sorted(truth.sequences())
    metrics = score(rec, truth, observation.model)
    assert metrics["rouge1"] == 1.0 and metrics["exact_match"] == 1.0
    assert rec.diagnostics["explained_layer2"] == rec.diagnostics["rank_layer2"]


def _tree(*sentences: tuple[tuple[int, ...], float]) -> dict[tuple[int, ...], float]:
    return {seq[:t]: w for seq, w in sentences for t in range(1, len(seq) + 1)}


def test_the_tree_splits_at_its_gap_when_the_rank_budget_agrees() -> None:
    # Two true sentences (6 prefixes = the rank); "1 2 3" ends in a false token, and "4 5 6"
    # goes on to a false "4 5 6 9": the true one never ended in the search, the tree keeps it.
    nodes = _tree(((1, 2, 3), 1e-7), ((4, 5, 6), 2e-7))
    nodes.update({(1, 2, 3, 7): 2e-3, (4, 5, 6, 9): 3e-3, (1, 8): 4e-3})
    choice = choose(nodes, set(), tau=1e-2, rank=6, limit=2)
    assert sorted(choice.sentences) == [[1, 2, 3], [4, 5, 6]]
    assert choice.explained == 6 and len(choice.leaves) == 2
    assert "2 sentences chosen of 5" in choice.note and "6 of the 6" in choice.note


def test_without_a_gap_or_against_the_rank_every_passing_sentence_counts() -> None:
    # No false node: the gap lies below the threshold and nothing has to be chosen.
    nodes = _tree(((1, 2), 1e-7), ((3, 4), 3e-7))
    choice = choose(nodes, set(), tau=1e-2, rank=4, limit=2)
    assert sorted(choice.sentences) == [[1, 2], [3, 4]] and choice.note == ""
    # A gap that would leave directions unexplained (a true prefix above it) is not taken.
    nodes = _tree(((1, 2), 1e-7), ((3, 4), 1e-3))
    choice = choose(nodes, set(), tau=1e-2, rank=4, limit=2)
    assert sorted(choice.sentences) == [[1, 2], [3, 4]] and choice.explained == 4
    # Prefixes still being grown when the budget ran out are not sentences.
    choice = choose(_tree(((1, 2), 1e-7)), {(1, 2)}, tau=1e-2, rank=2, limit=1)
    assert choice.sentences == []
