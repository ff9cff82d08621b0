"""Which token sits at which position, read off the embedding gradients of an encoder with
learned absolute positions.

Its first input at (sentence b, position i) is E[token] + P[i] (+ a type row), so the gradient
reaching that sum, g_bi, is added to two rows: the token's row of dE and the position's row of
dP. Hence dP[i] = sum_b g_bi and dE[t] = the sum of g_bi over t's occurrences. A token seen once
puts its whole dE row into the dP row of its position. Fewer distinct tokens than the model's
width have independent dE rows (in general), so the least-squares fit dP[i] ~ sum_t s[t, i] dE[t]
gives each token's *share* of each position. The same linearity lets APRIL (Lu et al., CVPR
2022) invert a vision transformer from its position-embedding gradient.

A token's shares sum to 1 over positions, since sum_i dP[i] = sum_t dE[t]. A token seen once
has share about 1 at its position. A token seen k times splits its mass over its k positions.
The pieces of repeated tokens are not dE rows themselves, so they add noise. Measured on pretrained
MiniLM-L6, 5 SST-2 validation batches of 8: every token seen once but one (526 of 527) had its
largest share at its position. The likely sets below held 97-100% of the true tokens of each
position, about 20 tokens a position against about 110 layer-1 candidates.

Only an ordering and a narrower first reading come from here; every sentence is still verified
on layer 2.
"""

from __future__ import annotations

import torch

from fedaudit.attacks.base import Observation

F64 = torch.float64

HALF = 0.5
"""A token with at least half its gradient mass at one position sits there. A token with less
than half anywhere is spread over several positions (a frequent word): likely everywhere."""


def position_shares(observation: Observation, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(tokens (T,), shares (T, p)): the batch's tokens (the non-zero rows of dE) and the least
    squares share of each in each position's dP row. None where the rule does not hold or cannot
    be read: decoders, rotary positions, frozen embeddings, a tied output layer (its gradient
    touches every row), protocol noise, or as many distinct tokens as the width."""
    adapter = observation.model.adapter
    spec = adapter.first_input
    if (
        adapter.is_decoder
        or adapter.tied_embeddings
        or spec is None
        or spec.positions is None
        or adapter.embedding not in observation.update
        or spec.positions not in observation.update
        or observation.gradient_noise_std > 0
    ):
        return None
    dE = observation.gradient(adapter.embedding).to(device)
    dP = observation.gradient(spec.positions).to(device)
    tokens = torch.nonzero(dE.abs().amax(1) > 0).flatten()  # only these rows are widened to float64
    if not tokens.numel() or tokens.numel() >= dE.shape[1]:
        return None
    reached = torch.nonzero(dP.abs().amax(1) > 0).flatten()
    if not reached.numel():
        return None
    return tokens, fit_shares(dE[tokens].to(F64), dP[: int(reached.max()) + 1].to(F64))


def fit_shares(embedding: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(T, p) least-squares shares s with positions[i] ~ sum_t s[t, i] embedding[t]."""
    return torch.linalg.pinv(embedding.T) @ positions.T


def likely_tokens(tokens: torch.Tensor, shares: torch.Tensor, alive: list[int]) -> list[torch.Tensor]:
    """Per position i < p, the tokens likely there, largest share first: the ``2 * alive[i]``
    largest shares (``alive[i]``: sentences planned to reach i), every token with at least half
    its mass at i, and every spread token (less than half anywhere)."""
    spread = shares.max(1).values < HALF
    out = []
    for i in range(shares.shape[1]):
        col = shares[:, i]
        order = col.argsort(descending=True)
        keep = spread | (col >= HALF)
        keep[order[: 2 * max(1, alive[i])]] = True
        out.append(tokens[order[keep[order]]])
    return out


def placed_counts(shares: tuple[torch.Tensor, torch.Tensor] | None) -> list[int]:
    """Per position, the tokens with at least half their mass there: each sits there in some
    sentence, so at least that many sentences reach it ([] without shares)."""
    return [] if shares is None else (shares[1] >= HALF).sum(0).tolist()


def token_shares(shares: tuple[torch.Tensor, torch.Tensor] | None, token: int | None) -> list[float] | None:
    """``token``'s share of each position (None without shares or if the batch lacks it)."""
    if shares is None or token is None:
        return None
    row = torch.nonzero(shares[0] == token).flatten()
    return shares[1][int(row[0])].tolist() if row.numel() else None


def lead(
    order: list[torch.Tensor], by_share: list[torch.Tensor], sep: int | None
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(likely, order): per position, the candidates of ``order`` that ``by_share`` holds there,
    in its order (the separator kept wherever it is a candidate: ends are planned on layer 1),
    and ``order`` with them first."""
    likely, led_order = [], []
    for i, c in enumerate(order):
        held = set(c.tolist())
        first = [t for t in by_share[i].tolist() if t in held] if i < len(by_share) else []
        if sep in held and sep not in first:
            first.append(sep)
        led = set(first)
        rest = [t for t in c.tolist() if t not in led]
        likely.append(torch.tensor(first, dtype=c.dtype, device=c.device))
        led_order.append(torch.tensor(first + rest, dtype=c.dtype, device=c.device))
    return likely, led_order
