"""DAGER's encoder search on full-length sentences: pretrained MiniLM-L6 (a BERT) on SST-2
validation batches (median 24 WordPiece tokens, up to 55), far longer than CoLA's."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer

from fedaudit.attacks import Budget
from fedaudit.attacks.dager import Dager
from fedaudit.attacks.dager.encoder_beam import per_lineage
from fedaudit.attacks.dager.encoder_guesses import fill
from fedaudit.attacks.dager.encoder_reread import own_residuals, read_moved, reread, resized, shifted
from fedaudit.attacks.dager.setup import KeptModel, build_setup
from fedaudit.audit.scoring import score
from fedaudit.models.zoo import minilm_dir
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


def test_eight_full_length_sst2_sentences_are_recovered_exactly(sst2_validation_path) -> None:
    """At B = 8 the left-to-right readings of a length are mostly other sentences, cut short or
    run on; cleared of the verified ones before they are re-read, they finish the batch."""
    for rec, truth, _ in _runs(sst2_validation_path, 8, 1):
        assert sorted(rec.sequences) == sorted(truth.sequences()), rec.reason
        assert rec.status == "exact", rec.reason
        assert sum(map(len, truth.sequences())) >= 8 * 18


@pytest.fixture(scope="module")
def four_sentences(sst2_validation_path):
    """A MiniLM-L6 client of 4 SST-2 validation sentences, its attack setup and the batch's tokens."""
    observation, truth = client_updates(
        scenario(f"data.source={sst2_validation_path}", "training.batch_size=4", *MINILM), 1
    )[0]
    cpu = torch.device("cpu")
    setup = build_setup(observation, cpu, KeptModel().get(observation, cpu))
    return SimpleNamespace(setup=setup, budget=Budget(120)), truth.sequences()


def _every_batch_token(sentences: list[list[int]], n: int) -> list[torch.Tensor]:
    """What layer 1 passes on a pretrained BERT at B >= 4: every token of the batch at every
    position (the first and last positions kept to the sentence's own)."""
    pool = torch.tensor(sorted({t for s in sentences for t in s[1:-1]}))
    longest = max(sentences, key=len)
    return [torch.tensor([longest[0]])] + [pool] * (n - 2) + [torch.tensor([longest[-1]])]


def test_each_single_change_is_read_exactly_where_it_sits(four_sentences) -> None:
    """Every candidate at every position, read through the rest of the sentence's cache with its
    own position id, gives the layer-2 residual a whole forward of the changed sentence gives."""
    search, sentences = four_sentences
    seq = max(sentences, key=len)
    options = _every_batch_token(sentences, len(seq))
    own = own_residuals(search, seq, options)
    for i in (1, len(seq) // 2, len(seq) - 2):
        tokens, res = own[i]
        assert tokens.numel() == options[i].numel()
        changed = torch.tensor([seq[:i] + [int(t)] + seq[i + 1 :] for t in tokens[:8]])
        whole = search.setup.span2.residual(search.setup.probe.inputs(changed))[:, i]
        torch.testing.assert_close(res[:8], whole, rtol=1e-4, atol=1e-6)
        assert float(res[tokens == seq[i]][0]) < 1e-5 < float(res.median())


def test_a_quarter_of_a_sentence_read_from_the_others_is_read_back(four_sentences) -> None:
    """Every fourth position holds another sentence's token there (the confusion layer 1 leaves):
    re-reading in place recovers the sentence exactly."""
    search, sentences = four_sentences
    seq = max(sentences, key=len)
    other = [s for s in sentences if s != seq]
    guess = list(seq)
    for k, i in enumerate(range(2, len(seq) - 1, 4)):
        donor = other[k % len(other)]
        guess[i] = donor[i] if i < len(donor) - 1 and donor[i] != seq[i] else seq[i - 1]
    assert sum(a != b for a, b in zip(guess, seq)) >= len(seq) // 5
    assert reread(search, guess, _every_batch_token(sentences, len(seq))) == seq


def test_a_stretch_read_a_position_early_or_late_is_among_the_shifts() -> None:
    truth = [101, 5, 6, 7, 8, 9, 10, 11, 102]
    early = [101, 5, 7, 8, 9, 10, 10, 11, 102]  # 6 skipped, 7..10 one position early, 10 twice
    late = [101, 5, 6, 6, 7, 8, 9, 11, 102]  # 7..9 one position late, 10 skipped
    for guess in (early, late):
        moves = shifted(guess)
        assert any(all(m[i] == truth[i] for i in range(len(truth)) if i not in vacated) for m, vacated in moves), guess
        assert all(len(m) == len(guess) and m[0] == 101 and m[-1] == 102 for m, _ in moves)


def test_a_sentence_read_a_token_short_or_long_comes_back_at_its_own_length(four_sentences) -> None:
    """A true sentence searched at a wrong length ends with a word dropped or repeated: among the
    guesses resized to its length and re-read, it comes back exactly."""
    search, sentences = four_sentences
    setup = search.setup
    reader = SimpleNamespace(setup=setup, budget=search.budget)
    reader.residuals = lambda ids: setup.span2.residual(setup.probe.inputs(ids))
    seq = max(sentences, key=len)
    i = len(seq) // 2
    for guess in (seq[:i] + seq[i + 1 :], seq[:i] + [seq[i]] + seq[i:]):
        moves = resized(guess, {len(seq)})
        assert moves and all(len(m) == len(seq) and m[0] == seq[0] and m[-1] == seq[-1] for m, _ in moves)
        assert seq in read_moved(reader, moves, lambda n: _every_batch_token(sentences, n))


def test_unverified_guesses_fill_the_slots_closest_first_without_repeating_a_sentence(sst2_validation_path) -> None:
    """A guess holding most of a verified sentence's words is that sentence read again (a copy
    with a word or two changed): it takes no slot, while a different sentence farther from the
    span does."""
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
    lines = sst2_validation_path.read_text().splitlines()[1:40]
    long = [line.split("\t")[0] for line in lines if len(line.split()) > 12]
    a, b, c = (tokenizer(text)["input_ids"] for text in long[:3])
    copy_of_a = a[:3] + [tokenizer.convert_tokens_to_ids("film")] + a[4:]
    special = set(tokenizer.all_special_ids)
    guesses = [(c, -2.0), (copy_of_a, -9.0), (b, -5.0)]
    assert fill([a], guesses, 3, special) == [a, b, c]  # the copy, though closest, is left out
    assert fill([a], guesses, 2, special) == [a, b]  # closest first
    assert fill([a], [(a, -9.0)], 3, special) == [a]  # a verified sentence is not repeated either
    assert fill([a, b, c], guesses, 2, special) == [a, b]  # never more than the client's examples
