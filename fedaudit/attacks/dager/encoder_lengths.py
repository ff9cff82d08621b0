"""Which sentence lengths an encoder batch holds, from the separator's layer-1 residuals and the
layer-2 rank.

Every sentence ends in the separator, so its length is a position where the separator passes
layer 1; but a token present anywhere in the batch passes layer 1 at every position, only a
little farther from the span than where it truly sits. Layer 2 reads one distinct vector per
position of each sentence (encoders mix the whole sentence into each), so the lengths of the
B sentences sum to the layer-2 rank. Among the multisets of B candidate ends with that sum, the
one whose separators sit closest to the layer-1 span (least summed log residual) is the plan.
Where the embedding gradients place tokens (``encoder_positions``), a position holding k placed
tokens is reached by at least k sentences: plans that reach it with fewer are ruled out.
"""

from __future__ import annotations

import math

STATES = 2_000_000
"""Largest (count x sum x ends) table planned; beyond it no plan is made (the search then tries
every end, closest first)."""


def plan_lengths(ends: dict[int, float], total: int, count: int, least: list[int] | None = None) -> list[int]:
    """At most ``count`` lengths from ``ends`` (length -> separator residual), repeats allowed,
    the longest always included, summing to ``total``: the fewest-missing, closest plan, or [].
    ``least[i]``: sentences known to reach position i; if no plan honours it, it is dropped."""
    if least and any(least):
        plan = _plan(ends, total, count, least)
        if plan:
            return plan
    return _plan(ends, total, count, [])


def _plan(ends: dict[int, float], total: int, count: int, least: list[int]) -> list[int]:
    if not ends or count < 1 or count * total * len(ends) > STATES:
        return []
    longest = max(ends)
    cost = {n: math.log(max(r, 1e-300)) for n, r in ends.items()}
    # best[c][(s, m)]: (cost, lengths) of c lengths summing to s, the shortest m; lengths are
    # chosen in non-increasing order after the longest, so each multiset is built once.
    best: list[dict[tuple[int, int], tuple[float, list[int]]]] = [{} for _ in range(count + 1)]
    best[1][(longest, longest)] = (cost[longest], [longest])
    for c in range(1, count):
        for (s, last), (value, chosen) in best[c].items():
            for n in ends:
                # positions n..last-1 are reached by exactly the c chosen so far
                if n > last or s + n > total or max(least[n:last], default=0) > c:
                    continue
                entry = (value + cost[n], chosen + [n])
                if (s + n, n) not in best[c + 1] or entry[0] < best[c + 1][(s + n, n)][0]:
                    best[c + 1][(s + n, n)] = entry
    for c in range(count, 0, -1):
        done = [entry for (s, m), entry in best[c].items() if s == total and max(least[:m], default=0) <= c]
        if done:
            return min(done)[1]
    return []


def alive(plan: list[int], position: int) -> int:
    """How many planned sentences are longer than ``position`` (hold a token there)."""
    return sum(1 for n in plan if n > position)
