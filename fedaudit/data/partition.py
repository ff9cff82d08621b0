"""Splitting examples between the server's holdout and the clients, IID or label-skewed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from fedaudit.data.examples import DataError, seeded_rng

# Enough redraws that a feasible Dirichlet split is practically always found, few enough
# that an infeasible one fails fast.
MAX_DIRICHLET_TRIES = 200


def holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, holdout indices) for ``n`` examples, each sorted; the holdout has
    ``max(1, round(n * fraction))`` of them."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"data.holdout_fraction = {fraction}: must be between 0 and 1 (exclusive)")
    size = max(1, round(n * fraction))
    if size >= n:
        raise DataError(
            f"data.holdout_fraction = {fraction}: holding out {size} of {n} examples leaves none "
            "for the clients; lower it or use more data"
        )
    order = seeded_rng(seed, "holdout").permutation(n)
    return np.sort(order[size:]), np.sort(order[:size])


def partition(
    labels: Sequence[int],
    clients: int,
    method: Literal["iid", "dirichlet"],
    alpha: float,
    seed: int,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Indices into ``labels`` for each client: disjoint, covering every example, seeded.

    ``iid`` deals out a shuffled order in near-equal parts; ``dirichlet`` splits each class
    over the clients in proportions drawn from Dir(alpha), so small alpha gives each client
    a few dominant labels. Each client's indices come in a seeded random order.
    """
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    n = len(y)
    if clients < 1:
        raise DataError(f"federation.clients = {clients}: need at least one client")
    if min_size < 0:
        raise ValueError(f"min_size = {min_size}: must be >= 0")
    if method not in ("iid", "dirichlet"):
        raise DataError(f"federation.partition = {method!r}: allowed: iid, dirichlet")
    if method == "dirichlet" and not alpha > 0:
        raise DataError(f"federation.alpha = {alpha}: must be > 0")
    described = "'iid'" if method == "iid" else f"'dirichlet' (alpha = {alpha})"
    impossible = DataError(
        f"federation.clients = {clients}: cannot give every client at least {min_size} examples "
        f"from {n} examples with partition = {described}; use fewer clients, more data"
        + (" or a larger federation.alpha" if method == "dirichlet" else "")
    )
    if clients * min_size > n:
        raise impossible

    rng = seeded_rng(seed, f"partition-{method}")
    if method == "iid":
        return [part.copy() for part in np.array_split(rng.permutation(n), clients)]

    classes = np.unique(y)
    for _ in range(MAX_DIRICHLET_TRIES):
        shares: list[list[np.ndarray]] = [[] for _ in range(clients)]
        for c in classes:
            members = rng.permutation(np.flatnonzero(y == c))
            proportions = _dirichlet(rng, alpha, clients)
            cuts = np.round(np.cumsum(proportions)[:-1] * len(members)).astype(np.int64)
            for client, piece in enumerate(np.split(members, cuts)):
                shares[client].append(piece)
        parts = [np.concatenate(pieces) if pieces else np.empty(0, np.int64) for pieces in shares]
        if min(len(p) for p in parts) >= min_size:
            # Shuffle within a client so its data is not sorted by class.
            return [rng.permutation(p).astype(np.int64) for p in parts]
    raise impossible


def _dirichlet(rng: np.random.Generator, alpha: float, k: int) -> np.ndarray:
    """Dir(alpha) proportions over ``k`` clients, robust to the underflow of tiny alpha."""
    p = np.nan_to_num(rng.dirichlet(np.full(k, alpha)), nan=0.0)
    if p.sum() <= 0:
        # Every component underflowed: the limit of Dir(alpha -> 0) is one client taking all.
        p = np.zeros(k)
        p[rng.integers(k)] = 1.0
    return p / p.sum()
