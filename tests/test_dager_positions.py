"""Which token sits where, from the embedding gradients of an encoder (``encoder_positions``):
pretrained MiniLM-L6 on real SST-2 validation batches of 8 (about 110 distinct tokens, 20-40
tokens a sentence), where layer 1 alone passes nearly every batch token at every position."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fedaudit.attacks.dager.encoder_lengths import plan_lengths
from fedaudit.attacks.dager.encoder_positions import HALF, likely_tokens, placed_counts, position_shares, token_shares
from tests.helpers import client_updates, scenario

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def batches_of_eight(data_dir: Path):
    path = data_dir / "text" / "sst2" / "validation.tsv"
    sc = scenario(f"data.source={path}", "training.batch_size=8", "model.name=minilm-l6", "model.config={}")
    return client_updates(sc, 2)


def test_each_token_seen_once_has_its_largest_share_where_it_sits(batches_of_eight) -> None:
    for observation, truth in batches_of_eight:
        tokens, shares = position_shares(observation, CPU)
        seqs = truth.sequences()
        assert set(tokens.tolist()) == {t for s in seqs for t in s}
        assert shares.shape[1] == max(len(s) for s in seqs)
        torch.testing.assert_close(shares.sum(1), torch.ones(len(tokens), dtype=shares.dtype), atol=1e-6, rtol=0)
        counts = Counter(t for s in seqs for t in s)
        where = {t: i for s in seqs for i, t in enumerate(s) if counts[t] == 1}
        row = {t: j for j, t in enumerate(tokens.tolist())}
        placed = [int(shares[row[t]].argmax()) == i and float(shares[row[t], i]) >= HALF for t, i in where.items()]
        assert len(placed) >= 80 and sum(placed) >= 0.98 * len(placed)


def test_the_likely_tokens_hold_nearly_every_true_token_among_a_fifth_of_the_candidates(batches_of_eight) -> None:
    for observation, truth in batches_of_eight:
        tokens, shares = position_shares(observation, CPU)
        seqs = truth.sequences()
        alive = [sum(1 for s in seqs if len(s) > i) for i in range(shares.shape[1])]
        likely = likely_tokens(tokens, shares, alive)
        held = sum(1 for s in seqs for i, t in enumerate(s) if t in likely[i].tolist())
        assert held >= 0.95 * sum(map(len, seqs))
        assert sum(map(len, likely)) <= 0.3 * len(tokens) * len(likely)
        # every position holds at least as many sentences as tokens placed there
        assert all(placed <= reach for placed, reach in zip(placed_counts((tokens, shares)), alive))


def test_a_plan_that_reaches_a_position_with_fewer_sentences_than_placed_tokens_is_ruled_out() -> None:
    ends = {10: 1e-3, 2: 1e-6, 3: 1e-2, 4: 1e-2}
    assert plan_lengths(ends, 16, 3) == [10, 4, 2]
    # three tokens are placed at position 2: three sentences reach it
    assert plan_lengths(ends, 16, 3, least=[1, 3, 3, 0, 0]) == [10, 3, 3]
    # nothing honours an impossible bound: it is dropped
    assert plan_lengths(ends, 16, 3, least=[5] * 10) == [10, 4, 2]


def test_verified_lengths_are_kept_and_the_rest_replanned_around_them() -> None:
    ends = {10: 1e-3, 2: 1e-6, 3: 1e-2, 4: 1e-2}
    # a sentence of 3 verified: the other two must sum to 13 and the longest is still 10
    assert plan_lengths(ends, 16, 3, fixed=[3]) == [10, 3, 3]
    # the longest end verified: the rest may start anywhere
    assert plan_lengths(ends, 16, 3, fixed=[10]) == [10, 4, 2]
    assert plan_lengths(ends, 16, 3, fixed=[10, 4, 2]) == [10, 4, 2]
    # a placed token at position 3 needs a sentence longer than 3 besides the verified 10
    assert plan_lengths(ends, 16, 3, least=[2, 2, 2, 2], fixed=[10]) == [10, 4, 2]
    # verified lengths that overrun the rank or the batch leave no plan
    assert plan_lengths(ends, 16, 3, fixed=[10, 10]) == []
    assert plan_lengths(ends, 16, 1, fixed=[4, 2]) == []


def test_no_shares_where_the_rule_does_not_hold(batches_of_eight) -> None:
    observation, _ = batches_of_eight[0]
    adapter = observation.model.adapter
    frozen = {k: v for k, v in observation.update.items() if k != adapter.first_input.positions}
    assert position_shares(replace(observation, update=frozen), CPU) is None


def test_the_separators_shares_plan_the_sentence_lengths(batches_of_eight) -> None:
    for observation, truth in batches_of_eight:
        tokens, shares = position_shares(observation, CPU)
        seqs = truth.sequences()
        lengths = sorted((len(s) for s in seqs), reverse=True)
        sep = token_shares((tokens, shares), seqs[0][-1])
        # every length a candidate end, alike on layer 1: only the shares tell them apart
        ends = {n: 1.0 for n in range(2, shares.shape[1] + 1)}
        plan = plan_lengths(ends, sum(lengths), 8, placed_counts((tokens, shares)), shares=sep)
        right = sum(min(plan.count(n), lengths.count(n)) for n in set(lengths))
        assert sum(plan) == sum(lengths) and len(plan) == 8
        assert right >= 5  # measured 6 of 8 on both batches


def test_two_sentences_ending_together_double_the_separators_share_there() -> None:
    ends = {10: 1e-3, 2: 1e-6, 3: 1e-2, 4: 1e-2}
    shares = [0.0, 0.05, 0.62, -0.02, 0.0, 0.0, 0.0, 0.0, 0.0, 0.35]
    assert plan_lengths(ends, 16, 3, shares=shares) == [10, 3, 3]
    # the layer-1 residuals alone favour the end at 2
    assert plan_lengths(ends, 16, 3) == [10, 4, 2]
