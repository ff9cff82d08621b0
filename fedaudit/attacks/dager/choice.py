"""Choosing the client's B sentences among those that pass the layer-2 check (decoders).

Near the width (B*n close to d) the layer-2 span holds most directions, and a batch token in a
wrong context lands close to it: a true prefix followed by a skipped, repeated or truncated
token ("... lifelong ." for "... lifelong friendships .", "the the", "syru ." for "syrupy .")
passes the threshold, which sits between the span's noise ratio and random sequences. Such an
extension still carries its wrong token's own direction, which the gradient lacks: on
SmolLM2-135M at B = 16 (rank 400 of 576) true prefixes sit at residuals 1e-7 to 3e-6 and the
closest false ones at 1e-3, three orders of magnitude apart. Two consequences:

* A true sentence with a passing false extension never "ends" in the search: it is found only
  as a node of the prefix tree, so sentences are read from the tree, not from where the search
  stopped.
* The tree's nodes split at the largest gap of their (log) residuals, with the threshold itself
  as the upper reference (no false node: the gap is just below the threshold, and every node
  is kept, as before). The split is accepted only when it agrees with the rank budget: a
  decoder's layer-2 gradient holds one direction per distinct prefix, so the nodes below the
  gap must be exactly ``rank`` (fewer: a true prefix lies above the gap; more: a false one
  below it; a pooled classifier's gradient holds fewer directions than prefixes, and so
  almost never agrees). Then the sentences are the leaves below the
  gap. Otherwise (drift, or a true prefix above the gap) every passing node is kept.
* The same budget ends the search: once the nodes below the gap account for every direction
  and every prefix still growing lies above it, nothing true is left to grow (``settled``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

TINY = 1e-300


@dataclass
class Choice:
    sentences: list[list[int]]
    """At most ``limit`` sentences: leaves of the kept tree closest to the span first, then the
    best sentences above the gap when verification falls short of the rank."""
    leaves: list[tuple[int, ...]]
    """Leaves of the kept tree, closest first: the verified sentences."""
    explained: int
    """Distinct kept prefixes the returned sentences account for (layer-2 directions)."""
    note: str = ""
    """How sure the choice is, in words (empty when nothing had to be chosen)."""


def _cut(values: list[float], tau: float) -> float:
    """The largest value below the largest gap of log(values + [tau])."""
    ranked = sorted(values) + [tau]
    logs = [math.log(max(v, TINY)) for v in ranked]
    gaps = [b - a for a, b in zip(logs, logs[1:])]
    return ranked[max(range(len(gaps)), key=gaps.__getitem__)]


def choose(
    nodes: dict[tuple[int, ...], float],
    open_: set[tuple[int, ...]],
    tau: float,
    rank: int,
    limit: int,
) -> Choice:
    """B sentences from the prefix tree ``nodes`` (prefix -> largest layer-2 residual along it).

    ``open_``: prefixes the search had not finished growing (it ran out of time): never a
    sentence. See the module doc for the rule.
    """
    if not nodes:
        return Choice([], [], 0)
    cut = _cut(list(nodes.values()), tau)
    kept = {p for p, w in nodes.items() if w <= cut}
    decisive = len(kept) == rank < len(nodes)
    if not decisive:
        kept = set(nodes)
    parents, kept_parents = {p[:-1] for p in nodes}, {p[:-1] for p in kept}
    leaves = sorted((p for p in kept if p not in kept_parents and p not in open_), key=nodes.__getitem__)
    ends = [p for p in nodes if p not in parents and p not in open_]  # where the search stopped
    out = [list(p) for p in leaves[:limit]]
    explained = {p[:t] for p in leaves[:limit] for t in range(1, len(p) + 1)} & kept
    if len(explained) < rank and len(out) < limit:  # sentences lost: add the best guesses above the gap
        rest = sorted((p for p in ends if p not in kept), key=nodes.__getitem__)
        out += [list(p) for p in rest[: limit - len(out)]]
    note = ""
    if decisive:
        above = min(w for p, w in nodes.items() if p not in kept)
        note = (
            f"{len(out)} sentences chosen of {len(set(leaves) | set(ends))} that pass the layer-2 threshold "
            f"{tau:.2g}: every prefix of the chosen sits within {cut:.2g} of the span, the closest other at "
            f"{above:.2g} ({above / max(cut, TINY):.0f}x farther), and they account for {len(explained)} of "
            f"the {rank} layer-2 directions"
        )
    return Choice(out, leaves, len(explained), note)


def settled(nodes: dict[tuple[int, ...], float], open_: set[tuple[int, ...]], tau: float, rank: int) -> bool:
    """The search can stop: the nodes below the gap are exactly the ``rank`` layer-2 directions
    (one per distinct true prefix) and every prefix still growing lies above it."""
    if len(nodes) <= rank or not open_:
        return False
    cut = _cut(list(nodes.values()), tau)
    return sum(w <= cut for w in nodes.values()) == rank and all(nodes[p] > cut for p in open_)
