"""Encoders read left to right: a beam over sentence prefixes, each scored by the layer-2 input
of its last position computed as if the sentence ended there.

A bidirectional layer 2 reads the whole sentence at every position, so no prefix can be
verified alone (that is what ``EncoderSearch`` does with whole sentences). But the first
layer's keys and values of a prefix depend on its own tokens only, so the probe's cache
extends a prefix by one token at one token's cost, and the truncated reading of the new last
position is close to the span when the prefix is right: given its true prefix, the true
token lies closest among all of a position's layer-1 candidates at most positions (measured
on pretrained MiniLM-L6, one SST-2 validation batch of 8: closest at 84% of 160 positions, in
the top 3 at 91%, of about 100 candidates each). Read whole, with most of the rest of the
sentence wrong, the true token is closest far less often (``encoder_reread``). So each lineage
keeps a few prefixes, and each sentence it finishes (a separator where one is a candidate) goes
to the whole-sentence check, or, mostly right, starts the joint search there (``EncoderSearch``).
"""

from __future__ import annotations

import torch

from fedaudit.attacks.dager.search import Search

PER_LINEAGE = 2
"""Fewest prefixes kept per lineage (all prefixes that share their first two tokens): its best and a runner-up."""

PREFIXES = 64
"""Prefixes kept in all while lineages are few: a batch whose sentences start with few distinct
words keeps more per lineage (long sentences' early tokens read poorly, so the true prefix
often ranks below two siblings there)."""


def read_left_to_right(
    search: Search, options: list[torch.Tensor], sep: int, lengths: set[int]
) -> list[tuple[list[int], float]]:
    """Sentences of the given ``lengths`` (ending in ``sep``) with the residual of their last
    position, closest first.

    ``options``: every candidate per position. Every candidate pair at the first two positions
    starts a lineage (truncated readings of different sentences are not comparable: each
    sentence's later tokens pull its prefixes off the span by their own amount), and each
    lineage keeps its ``PREFIXES / lineages`` (at least ``PER_LINEAGE``) prefixes of least summed
    log residual. Every prefix ends in the separator at each of the ``lengths`` (a finished
    sentence's truncated reading is its whole reading).
    """
    setup, device = search.setup, search.setup.device
    floor = max(setup.span2.noise, torch.finfo(torch.float64).eps)
    first = options[0].to(device)
    first = first[first != sep]
    if not first.numel():
        return []
    x, keys, values = setup.probe.start(first[:, None])
    score = setup.span2.residual(x[:, 0]).clamp_min(floor).log()
    prefixes, lineage = first[:, None], None
    finished: list[tuple[list[int], float]] = []
    sep_only = torch.tensor([sep], device=device)
    for i in range(1, min(len(options), max(lengths, default=0))):
        cand = options[i].to(device)
        if not cand.numel() or not prefixes.shape[0]:
            break
        if i + 1 in lengths and bool((cand == sep).any()):
            for parent, token, res, _, _ in search.extensions(keys, values, sep_only):
                rows = torch.cat([prefixes[parent], token[:, None]], dim=1)
                finished += zip(rows.tolist(), res.tolist())
        cand = cand[cand != sep]
        if not cand.numel() or i + 1 >= max(lengths):
            break
        prefixes, score, keys, values, lineage = _extend(search, prefixes, score, keys, values, cand, lineage, floor)
    return sorted(finished, key=lambda item: item[1])


def _extend(
    search: Search,
    prefixes: torch.Tensor,
    score: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    cand: torch.Tensor,
    lineage: torch.Tensor | None,
    floor: float,
) -> tuple[torch.Tensor, ...]:
    """Every prefix extended by every candidate; each lineage keeps its best (without lineages
    yet, every extension starts one)."""
    parts, offset = [], 0
    lines = 1 if lineage is None else int(lineage.unique().numel())
    keep = max(PER_LINEAGE, PREFIXES // lines)
    for parent, token, res, k, v in search.extensions(keys, values, cand):
        total = score[parent] + res.clamp_min(floor).log()
        rows = torch.cat([prefixes[parent], token[:, None]], dim=1)
        if lineage is None:  # numbered across chunks: each extension is its own lineage
            line = torch.arange(offset, offset + parent.numel(), device=parent.device)
        else:
            line = lineage[parent]
        offset += parent.numel()
        parts.append(per_lineage(rows, total, k, v, line, keep=keep))
        if len(parts) > 1:  # bounded memory: only each lineage's best rows are held between chunks
            parts = [per_lineage(*(torch.cat(part) for part in zip(*parts)), keep=keep)]
    if not parts:
        return prefixes[:0], score[:0], keys[:0], values[:0], prefixes[:0, 0]
    return parts[0]


def per_lineage(*rows: torch.Tensor, keep: int = PER_LINEAGE) -> tuple[torch.Tensor, ...]:
    """Of (prefixes, total, keys, values, lineage), the ``keep`` rows of least total within each lineage."""
    total, line = rows[1], rows[-1]
    order = torch.argsort(total)
    order = order[torch.argsort(line[order], stable=True)]  # by lineage, best first within it
    ranked = line[order]
    first = torch.searchsorted(ranked, ranked)  # index of each lineage's first row in ``order``
    kept = order[torch.arange(order.numel(), device=order.device) - first < keep]
    return tuple(part[kept] for part in rows)
