"""The pool of directions that passed the filters, and the greedy pick of the B sparsest
independent realizable ones (Sec. 4.2)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from fedaudit.attacks.spear.completion import missing_direction, missing_pair
from fedaudit.attacks.spear.factors import F64, Factors
from fedaudit.attacks.spear.filters import _new_directions, realizable, refine, scale_violations
from fedaudit.attacks.spear.solution import Solution

if TYPE_CHECKING:
    pass


def choose(pool: Pool, solution: Solution) -> None:
    for directions in pool.choices(solution.f.batch):
        solution.try_directions(directions)
        if solution.consistent:
            return


class Pool:
    """Distinct sampled directions that passed ``refine``, with their zero sets; ``choices`` picks
    the B sparsest independent ones that pass ``realizable`` (checked lazily: it is the costly test)."""

    def __init__(self, f: Factors, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.f, self.bias = f, bias
        self.basis = torch.linalg.qr(f.R.T).Q  # n x B, orthonormal: inputs x = basis c with |c| = |x|
        self.inputs_map = weight @ self.basis
        self.completed: set[tuple[int, ...]] = set()
        self.matrix = torch.empty(f.batch, 0, dtype=F64, device=f.L.device)
        """The directions as columns (every draw is compared with all of them)."""
        self.zero_sets: list[torch.Tensor] = []
        self.counts: list[int] = []
        self.real: dict[int, bool] = {}
        self.inverse: dict[int, torch.Tensor] = {}
        """Rows of Q^{-1} (unit) of directions found by ``row_directions``, by direction index."""
        self.rejected = 0

    def zero_fraction(self) -> float:
        kept = [c for i, c in enumerate(self.counts) if self.real.get(i)]
        return sum(kept) / len(kept) / len(self.f.rows) if kept else 0.5

    def add(
        self,
        q: torch.Tensor,
        counts: torch.Tensor,
        subsets: torch.Tensor | list[torch.Tensor],
        inverse_rows: torch.Tensor | None = None,
    ) -> bool:
        """Add new directions (``subsets``: the rows each was built from; ``inverse_rows``: the rows
        of Q^{-1} they came from, if any); True when the pool changed."""
        changed = False
        for j in _new_directions(q, self.matrix):
            fit = refine(self.f, q[:, j], subsets[j])
            if fit is None or (inverse_rows is not None and not self._pair(fit[1], inverse_rows[j])):
                self.rejected += 1
            elif _new_directions(fit[0][:, None], self.matrix):  # the refit may land on a known one
                self.matrix = torch.cat([self.matrix, fit[0][:, None]], dim=1)
                self.zero_sets.append(fit[1])
                self.counts.append(int(fit[1].sum()))
                if inverse_rows is not None:
                    self.inverse[len(self.counts) - 1] = inverse_rows[j]
                changed = True
        return changed

    def _pair(self, zero: torch.Tensor, p: torch.Tensor) -> bool:
        """Whether x = p R switches off the zero set ``zero`` at some scale (``scale_violations``),
        up to the geometric middle between one neuron and all active ones (as in ``realizable``).
        Directions read from rows are kept only as such pairs: the set a row reads off can have
        rank B - 1 without being a column (rows sharing an on-pattern span a low dimension), and
        a mixed p would make mixtures of every row it peels in ``deflated`` (CIFAR-10, m = 200,
        b = 32: unchecked, 60 wrong directions that passed ``realizable`` filled the pool; checked,
        none). True pairs there disagree on 0 to 6 of 170 neurons, wrong ones on 18 or more."""
        drive = self.inputs_map @ (self.basis.T @ (self.f.R.T @ p))
        return scale_violations(self.f, zero, drive, self.bias) <= math.sqrt(len(self.f.rows))

    def deflated(self) -> torch.Tensor:
        """Rows of L with the examples of known rows of Q^{-1} taken out (k x B).

        L_i = sum_j D_ij p_j, and for a found column q_j with its row p_j (p_l q_j = 0 for l != j),
        D_ij = L_i q_j / (p_j q_j): L_i - sum_j D_ij p_j over the known pairs leaves the examples
        not yet known. A neuron on for one of those and any number of known ones becomes parallel
        to that example's p, and ``row_directions`` reads its column (the known ones peel off like
        an erasure decoder: each column found this way brings its own p). Only rows that change
        and keep a part above the rounding (relative to the row) are returned. Known pairs whose
        direction failed ``realizable`` are left out; a p that is a mixture (its row was on for a
        second example) only makes mixtures, which the exact rank test rejects.
        """
        known = [i for i in self.inverse if self.real.get(i) is not False]
        if not known:
            return self.f.L[:0]
        q = self.matrix[:, known]
        p = torch.stack([self.inverse[i] for i in known])  # k x B
        coef = (self.f.L @ q) / (p * q.T).sum(1)
        rest = self.f.L - coef @ p
        cut = math.sqrt(self.f.floor)
        moved = (self.f.relative(q) > cut).any(1)
        kept = moved & (rest.norm(dim=1) > cut * self.f.row_norms)
        return rest[kept]

    def complete(self, batch: int) -> bool:
        """When the greedy pick has B - 1 or B - 2 directions (a set not tried before), add the
        candidates ``missing_direction`` or ``missing_pair`` give for the rest; True when the pool
        changed."""
        pick = tuple(sorted(self._greedy(batch, banned=-1)))
        if len(pick) not in (batch - 1, batch - 2) or batch < 3 or pick in self.completed:
            return False
        self.completed.add(pick)
        found = self.matrix[:, list(pick)]
        complete = missing_direction if len(pick) == batch - 1 else missing_pair
        candidates = complete(self.f, found, self.basis, self.inputs_map, self.bias)
        if not candidates:
            return False
        none = torch.empty(0, dtype=torch.long, device=found.device)
        return self.add(torch.stack(candidates, dim=1), torch.empty(0), [none] * len(candidates))

    def tested(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Zero sets of the directions that passed ``realizable`` and of those that failed it."""
        return (
            [self.zero_sets[i] for i, real in self.real.items() if real],
            [self.zero_sets[i] for i, real in self.real.items() if not real],
        )

    def _realizable(self, i: int) -> bool:
        if i not in self.real:
            self.real[i] = realizable(self.f, self.zero_sets[i], self.inputs_map, self.bias)
            self.rejected += not self.real[i]
        return self.real[i]

    def choices(self, batch: int) -> Iterator[list[torch.Tensor]]:
        """The greedy pick, then the greedy picks without one of its members each: a combination
        of columns that passed every test can stand in for a true column and block it."""
        first = self._greedy(batch, banned=-1)
        yield list(self.matrix[:, first].unbind(1))
        for banned in first:
            yield list(self.matrix[:, self._greedy(batch, banned)].unbind(1))

    def _greedy(self, batch: int, banned: int) -> list[int]:
        """Sec. 4.2: sparsest first, kept when realizable and independent of those kept.

        Directions with fewer than half the zeros of the least sparse column verified so far are
        not tested: when examples are alike (tables), sampling meets thousands of combinations of
        many columns, and each would cost a linear program. Examples switch off about half the
        neurons each (0.38 to 0.52 measured on MNIST, CIFAR-10 and Adult), combinations of five or
        more columns a median 0.2.
        """
        verified = [self.counts[i] for i, real in self.real.items() if real]
        least = min(verified) / 2 if verified else 0
        chosen: list[int] = []
        for i in sorted(range(len(self.counts)), key=lambda k: -self.counts[k]):
            if self.counts[i] < least:
                break
            if i == banned or self.real.get(i) is False:
                continue
            trial = self.matrix[:, [*chosen, i]]
            s = torch.linalg.svdvals(trial)
            if float(s[-1] / s[0]) > math.sqrt(self.f.floor) and self._realizable(i):
                chosen.append(i)
            if len(chosen) == batch:
                break
        return chosen
