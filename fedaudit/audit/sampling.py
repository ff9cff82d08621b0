"""Which client updates the server audits: ``audit.clients`` and ``audit.rounds``, seeded.

A big federation audits a sample and the report presents leakage as an estimate over it
(``fedaudit.report.estimate``). A fraction of the clients is drawn afresh each round from
``np.random.default_rng((sample_seed, server_round))``: the same ids whatever order the
replies arrive in, in a rerun, and in the report that describes the sample.

No torch and no Flower: the report imports this module.

Usage::

    sample = AuditSample(scenario.audit, clients=scenario.federation.clients)
    if sample.selects(server_round, partition_id):
        ...  # audit this update
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from fedaudit.config.audit import EVERY, AuditConfig

#: Rounds whose fraction sample is kept: overlapping rounds (``audit.max_pending_rounds``) ask
#: about a few at once; a long run must not keep one set per round.
ROUNDS_CACHED = 64
#: Listed ids or rounds the sentence names before it only counts them.
NAMED_AT_MOST = 8


class AuditSample:
    """The audit sample of ``audit`` (``clients``, ``rounds``, ``sample_seed``) in a federation
    of ``clients`` partitions (ids ``0 .. clients - 1``)."""

    def __init__(self, audit: AuditConfig, clients: int) -> None:
        self.audit = audit
        self.clients = clients

    @property
    def sampled(self) -> bool:
        """Whether some client update goes unaudited (a fraction 1.0 and "every 1" audit all)."""
        return self.size() < self.clients or self._every() != 1

    def size(self) -> int:
        """Clients audited in an audited round."""
        chosen = self.audit.clients
        if chosen == "all":
            return self.clients
        if isinstance(chosen, list):
            return len(chosen)
        # ``0.1 * 30`` is 3.0000000000000004 in floating point: without the margin it would draw 4.
        return max(1, math.ceil(chosen * self.clients - 1e-9))

    def clients_of(self, server_round: int) -> frozenset[int]:
        """The partition ids audited in ``server_round`` (empty when the round is not audited)."""
        if not self.audit.audits_round(server_round):
            return frozenset()
        chosen = self.audit.clients
        if chosen == "all":
            return frozenset(range(self.clients))
        if isinstance(chosen, list):
            return frozenset(chosen)
        return _draw(self.audit.sample_seed, server_round, self.clients, self.size())

    def selects(self, server_round: int, partition_id: int) -> bool:
        """Whether the update of ``partition_id`` in ``server_round`` is audited."""
        if not self.audit.audits_round(server_round):
            return False
        if self.audit.clients == "all":
            return True
        return partition_id in self.clients_of(server_round)

    def describe(self) -> str:
        """The sample in one sentence, e.g. "25% of 100 clients (25) each round, drawn afresh
        with seed 0; every 2nd round (1, 3, 5, ...)"."""
        return f"{self._clients_part()}; {self._rounds_part()}"

    def _clients_part(self) -> str:
        chosen = self.audit.clients
        if chosen == "all":
            return f"all {self.clients} clients"
        if isinstance(chosen, list):
            return f"{_listed('client', chosen)} of {self.clients}, chosen by list"
        return (
            f"{chosen * 100:g}% of {self.clients} clients ({self.size()}) each round, "
            f"drawn afresh with seed {self.audit.sample_seed}"
        )

    def _rounds_part(self) -> str:
        if isinstance(self.audit.rounds, list):
            return _listed("round", sorted(self.audit.rounds))
        n = self._every()
        return "every round" if n == 1 else f"every {_ordinal(n)} round (1, {1 + n}, {1 + 2 * n}, ...)"

    def _every(self) -> int | None:
        """N of ``rounds = "every N"`` (1 for "all"; None for a list)."""
        if isinstance(self.audit.rounds, list):
            return None
        match = EVERY.fullmatch(self.audit.rounds.strip())
        return int(match.group(1)) if match else 1


@lru_cache(maxsize=ROUNDS_CACHED)
def _draw(seed: int, server_round: int, clients: int, size: int) -> frozenset[int]:
    """``size`` distinct ids of ``0 .. clients - 1``, a function of the seed and round alone."""
    rng = np.random.default_rng((seed, server_round))
    return frozenset(int(i) for i in rng.choice(clients, size=size, replace=False))


def _listed(word: str, ids: list[int]) -> str:
    """``client 3``, ``clients 0, 3 and 7``, or past ``NAMED_AT_MOST`` just ``12 listed clients``."""
    if len(ids) == 1:
        return f"{word} {ids[0]}"
    if len(ids) > NAMED_AT_MOST:
        return f"{len(ids)} listed {word}s"
    return f"{word}s " + ", ".join(str(i) for i in ids[:-1]) + f" and {ids[-1]}"


def _ordinal(n: int) -> str:
    """2nd, 3rd, 4th, 11th, 21st."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
