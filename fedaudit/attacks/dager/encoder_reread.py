"""Encoders re-read in place: each position of a whole guess is read again with every one of its
candidates, the rest of the guess as context, and the positions whose best candidate gains most
move together.

A first-layer key and value depend only on their token and its position, and an encoder's
attention reads its keys as a set, so the guess's first-layer cache without position i,
extended by a candidate at position i, gives exactly that candidate's layer-2 input in the
whole sentence: every single-position change of a guess costs one token's forward, and one
masked forward over the guess's cache reads them all (``Layer2Probe.each_in_place``; twice as
fast as a copy of the cache per candidate on a 32-token guess with 439 candidates).

Why own residuals and half the moves (pretrained MiniLM-L6, one SST-2 validation batch of 4
sentences of 22-42 tokens, 73 candidates per position): with half the positions of a true
sentence replaced by random candidates, the true token is the candidate of least residual at
its own position at 50-65% of the replaced positions (at 80-95% with a quarter replaced), more
often than by the summed residual of the whole sentence (wrong neighbours lift every
position). Moving every position at once oscillated; moving the half that gain most reached
the exact sentence from half replaced in 3-12 rounds on 3 of the 4 sentences.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fedaudit.attacks.dager.search import Search

Options = Callable[[int], list[torch.Tensor]]
"""Per position, what a re-read may choose from at a given sentence length."""

ROUNDS = 12
"""Re-readings of one guess at most (the measured convergence took 3-12)."""

MOVED_READS = 4
"""Moved guesses (a stretch shifted, the length changed) re-read per local minimum: the closest
ones by their unmoved positions."""

MOVED_ROUNDS = 2
"""Re-readings of a moved guess: one right but for its opened positions settles in a round or two
(the first fills them, the second fixes what they moved); one still changing is wrong. Measured
on pretrained MiniLM-L6, the first 6 SST-2 validation batches of 8 (55 s each): 29 sentences
exact with 12 rounds, 31 with 1, 34 with 2, 32 with 3."""

CHUNK_TOKENS = 512
"""Candidates read in one forward: each sees the whole cache and itself, so the attention
scores grow with the square of this (512 x (512 + n) per head)."""


def reread(search: Search, seq: list[int], options: list[torch.Tensor], rounds: int = ROUNDS) -> list[int]:
    """``seq`` re-read until no position's best candidate differs, a guess repeats, or ``rounds``."""
    seen = {tuple(seq)}
    for _ in range(rounds):
        gains = []
        for i, (tokens, res) in enumerate(own_residuals(search, seq, options)):
            if not tokens.numel():
                continue
            j = int(res.argmin())
            here = res[tokens == seq[i]]
            current = float(here[0]) if here.numel() else 1.0
            if int(tokens[j]) != seq[i] and float(res[j]) < current:
                gains.append((current / max(float(res[j]), search.setup.span2.noise), i, int(tokens[j])))
        if not gains:
            break
        moved = list(seq)
        for _, i, token in sorted(gains, reverse=True)[: max(1, len(gains) // 2)]:
            moved[i] = token
        if tuple(moved) in seen:
            break
        seen.add(tuple(moved))
        seq = moved
    return seq


def read_moved(search: Search, moves: list[tuple[list[int], list[int]]], options: Options) -> list[list[int]]:
    """Of ``moves`` (guess, positions opened), the ``MOVED_READS`` closest to the span by the mean
    log layer-2 residual of their other positions (an opened position holds a placeholder),
    each re-read over ``options(length)`` (which fills the opened ones)."""
    by_length: dict[int, list[tuple[list[int], list[int]]]] = {}
    for guess, opened in moves:
        by_length.setdefault(len(guess), []).append((guess, opened))
    ranked: list[tuple[float, list[int]]] = []
    for group in by_length.values():
        logs = search.residuals(torch.tensor([g for g, _ in group], device=search.setup.device))
        logs = logs.clamp_min(search.setup.span2.noise).log()
        kept = torch.ones_like(logs, dtype=torch.bool)
        for row, (_, opened) in enumerate(group):
            kept[row, opened] = False
        means = (logs * kept).sum(-1) / kept.sum(-1)
        ranked += zip(means.tolist(), [g for g, _ in group])
    ranked.sort(key=lambda item: item[0])
    return [reread(search, guess, options(len(guess)), MOVED_ROUNDS) for _, guess in ranked[:MOVED_READS]]


def own_residuals(
    search: Search, seq: list[int], options: list[torch.Tensor]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per position i: (its options, each one's layer-2 residual at i with ``seq`` elsewhere)."""
    setup, device = search.setup, search.setup.device
    _, keys, values = setup.probe.start(torch.tensor([seq], device=device))
    where = torch.cat([torch.full((c.numel(),), i, device=device) for i, c in enumerate(options)])
    token = torch.cat([c.to(device) for c in options])
    parts = []
    for start in range(0, token.numel(), CHUNK_TOKENS):
        search.budget.check()
        rows = slice(start, start + CHUNK_TOKENS)
        parts.append(setup.span2.residual(setup.probe.each_in_place(token[rows], where[rows], keys, values)))
    res = torch.cat(parts) if parts else torch.zeros(0, device=device)
    return [(token[where == i], res[where == i]) for i in range(len(seq))]


def shifted(seq: list[int], most: int = 2) -> list[tuple[list[int], list[int]]]:
    """Every guess with one stretch moved ``1..most`` positions right or left, the separator kept
    last: (guess, positions vacated, which hold a copy of their neighbour until re-read)."""
    n, out = len(seq), []
    for k in range(1, most + 1):
        for i in range(1, n - 1):
            for j in range(i + 1, n - k):
                out.append((seq[:i] + [seq[i]] * k + seq[i:j] + seq[j + k :], list(range(i, i + k))))
                out.append((seq[:i] + seq[i + k : j + k] + [seq[j + k - 1]] * k + seq[j + k :], list(range(j, j + k))))
    return out


def resized(seq: list[int], lengths: set[int], most: int = 2) -> list[tuple[list[int], list[int]]]:
    """Every guess one to ``most`` tokens shorter (a stretch cut) or longer (a stretch opened,
    holding a copy of its left neighbour until re-read) whose length is in ``lengths``, the
    first and last tokens kept: (guess, positions opened)."""
    n, out = len(seq), []
    for k in range(1, most + 1):
        if n - k in lengths:
            out += [(seq[:i] + seq[i + k :], []) for i in range(1, n - k)]
        if n + k in lengths:
            out += [(seq[:i] + [seq[i - 1]] * k + seq[i:], list(range(i, i + k))) for i in range(1, n)]
    return out


def paired(
    search: Search, seq: list[int], res: torch.Tensor, options: list[torch.Tensor], widest: list[torch.Tensor]
) -> list[int] | None:
    """The best change of the worst position (largest layer-2 residual), alone or jointly with one
    other position (each over its ``options``), or None if none lowers the score. The worst
    position may take any of its ``widest`` candidates: a true token ranked low at layer 1 shows
    up here."""
    worst = int(res.argmax())
    pool = [tok for tok in widest[worst].tolist() if tok != seq[worst]]
    # At most a few descent sweeps' worth of forwards: the other position's candidates
    # closest to the layer-1 span first (all of them while there are few).
    single = sum(c.numel() - 1 for c in options)
    keep = max(1, 4 * single // max(1, len(pool) * (len(seq) - 1)))
    batch = [list(seq)]
    for tok in pool:
        batch.append(seq[:worst] + [tok] + seq[worst + 1 :])
        for j, c in enumerate(options):
            if j == worst:
                continue
            for other in c[: keep + 1].tolist():
                if other != seq[j]:
                    g = list(seq)
                    g[worst], g[j] = tok, other
                    batch.append(g)
    if len(batch) == 1:
        return None
    search.budget.check()
    score = log_score(search, search.residuals(torch.tensor(batch, device=search.setup.device)))
    best = int(score.argmin())
    return batch[best] if best else None


def log_score(search: Search, res: torch.Tensor) -> torch.Tensor:
    """Summed log layer-2 residual of each guess (rows of ``res``), floored at the span's noise."""
    return res.clamp_min(search.setup.span2.noise).log().sum(-1)
