"""Sampling row subsets (Sec. 4.1): B - 1 rows of L that are all zero in one column of D give that
column as their kernel; draws are guided by each row's estimated chance of being zero."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from scipy.stats import poisson

from fedaudit.attacks.spear.factors import F64, Factors

CHUNK_BYTES = 64 * 2**20
"""Working-set bound of one batch of sampled row subsets."""
PROBE_ROWS = 64
"""Rows a sampled direction is first tested on (cheap pre-filter before the full check)."""
ROW_CHUNK = 32
"""Rows of L tried as rows of Q^{-1} per turn (``row_directions``)."""
FALSE_ACCEPT = 1e-12
"""Allowed chance, per sampled direction, that a wrong one passes the sparsity filter."""

if TYPE_CHECKING:
    pass


def _distinct_rows(L: torch.Tensor, decimals: int = 5) -> torch.Tensor:
    """One row index per direction of the rows of L (sign-free, to ``decimals`` after normalizing)."""
    unit = L / L.norm(dim=1, keepdim=True).clamp_min(torch.finfo(F64).tiny)
    lead = unit.gather(1, unit.abs().argmax(1, keepdim=True))
    key = torch.round(unit * lead.sign() * 10**decimals)
    _, group = torch.unique(key.cpu(), dim=0, return_inverse=True)
    first = torch.full((int(group.max()) + 1,), L.shape[0], dtype=torch.long)
    first.scatter_reduce_(0, group, torch.arange(L.shape[0]), reduce="amin")
    return first.sort().values


class DirectionSampler:
    """Kernel vectors of random (B-1)-row subsets of L that pass the sparsity filter (Sec. 4.1)."""

    def __init__(self, factors: Factors, generator: torch.Generator, device: torch.device) -> None:
        self.f, self.gen, self.device = factors, generator, device
        m, b = factors.L.shape
        self.L32 = factors.L.to(device, torch.float32)
        self.L = factors.L.to(device)
        self.probe = torch.randperm(m, generator=generator)[: min(PROBE_ROWS, m)].to(device)
        self.probe_norms = self.L32[self.probe].norm(dim=1)
        self.distinct = _distinct_rows(factors.L)
        """Subsets are drawn from rows of distinct direction: parallel rows (neurons whose gradient
        rows are proportional, common in binary classifiers) state the same constraint twice."""
        self.largest = max(256, CHUNK_BYTES // (4 * b * b))
        self.chunk = min(1024, self.largest)
        """Grows while draws come back empty: small batches find directions in the first few hundred."""
        self.min_extra = self._calibrate()
        self.samples = 0
        self.log_weights: torch.Tensor | None = None
        """Row weights of guided draws (``guide``); None draws uniformly."""

    def _calibrate(self, directions: int = 256) -> int:
        """Extra zeros a true direction must show: random directions (wrong with probability 1)
        give the chance rate of rounding-level entries; allow FALSE_ACCEPT per sample."""
        m, b = self.f.L.shape
        q = torch.randn(b, directions, generator=self.gen, dtype=F64).to(self.device)
        rate = float(self.f.zeros(q).double().mean())
        free = m - (b - 1)
        lam = max(rate * free, 1.0 / directions)
        return int(poisson.isf(FALSE_ACCEPT, lam)) + 1

    def guide(self, found: list[torch.Tensor], spurious: list[torch.Tensor]) -> None:
        """Draw rows in proportion to their estimated chance of being zero in a column not found yet.

        The columns' zero sets are correlated: when the examples look alike (natural images in
        [0, 1]), many neurons are on for the whole batch and lie in no zero set, and a uniform
        draw of B - 1 rows almost never avoids them (CIFAR-10, b = 16: about one draw in 3e6
        finds a given column). Two kinds of evidence, each as a Laplace rate (hits + 1) / (n + 2):

        * a row zero in many of the n ``found`` (realizable) columns is likely zero in the others;
        * before any column is found: a row zero in most of the ``spurious`` directions (sparse,
          but no input's pattern) is likely on for the whole batch. The gradient rows of neurons
          that share an on-pattern lie in a subspace of dimension at most classes - 1
          (dL/da = W_head^T (p - y) on them), and the directions orthogonal to it are such
          spurious sparse vectors. Later spurious directions are mostly mixtures with the columns
          still missing and mark those columns' rows: on CIFAR-10, b = 20, weighting by them cut
          the last column's share of the draw weight below uniform.

        The weight is the square of the rate; every row keeps a non-zero weight, so a wrong
        estimate slows the search but never excludes a column.
        """
        rows = self._pool()
        if found:
            rate = (torch.stack(found, 1)[rows].sum(1).to(F64) + 1) / (len(found) + 2)
        elif spurious:
            rate = (len(spurious) - torch.stack(spurious, 1)[rows].sum(1).to(F64) + 1) / (len(spurious) + 2)
        else:
            return
        self.log_weights = (2 * rate.log()).to(self.device)

    def _pool(self) -> torch.Tensor:
        b = self.f.batch
        return self.distinct if len(self.distinct) >= b - 1 else torch.arange(self.f.L.shape[0])

    def _subsets(self, n: int) -> torch.Tensor:
        """n subsets of B-1 distinct rows, uniform (sorted draws plus 0, 1, ..., B-2 are strictly
        increasing) or guided (weighted draws without replacement: the top B-1 Gumbel-perturbed
        log weights)."""
        b, pool = self.f.batch, self._pool()
        if self.log_weights is None:
            draws = torch.randint(len(pool) - b + 2, (n, b - 1), generator=self.gen).sort(dim=1).values
            return pool[draws + torch.arange(b - 1)].to(self.device)
        u = torch.rand(n, len(pool), generator=self.gen, dtype=torch.float32).to(self.device)
        keys = self.log_weights.float() - (-u.clamp_min(1e-30).log()).log()
        return pool.to(self.device)[keys.topk(b - 1, dim=1).indices]

    def draw(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One batch of samples: accepted unit directions (B x k), their zero counts (k) and the
        row subsets they were built from (k x B-1)."""
        m, b = self.f.L.shape
        subsets = self._subsets(self.chunk)
        self.samples += self.chunk
        # Kernel of L_A as q = [y; 1] with L_A[:, :-1] y = -L_A[:, -1] (float32 first: it only pre-selects).
        a = self.L32[subsets]
        y, info = torch.linalg.solve_ex(a[:, :, :-1], -a[:, :, -1:])
        q = torch.cat([y, torch.ones_like(y[:, :1])], dim=1).squeeze(-1)
        ok = (info == 0) & torch.isfinite(q).all(1)
        probe = (self.L32[self.probe] @ q.T).abs() / (self.probe_norms[:, None] * q.norm(dim=1)).clamp_min(1e-30)
        ok &= (probe <= 1e-3).sum(0) >= max(2, len(self.probe) // 8)
        if not bool(ok.any()):
            self.chunk = min(2 * self.chunk, self.largest)
            return (torch.empty(b, 0, dtype=F64, device=self.device), torch.empty(0, device=self.device), subsets[:0])
        # Float64 kernel and the full sparsity filter for the few that got through.
        subsets = subsets[ok]
        a64 = self.L[subsets]
        y, info = torch.linalg.solve_ex(a64[:, :, :-1], -a64[:, :, -1:])
        q = torch.cat([y, torch.ones_like(y[:, :1])], dim=1).squeeze(-1).T
        q = q / q.norm(dim=0, keepdim=True)
        # (rows of L can be parallel, e.g. neurons active for one example only: singular subsets)
        usable = (info == 0) & torch.isfinite(q).all(0)
        # zeros lie at or below sqrt(floor) (see Factors.zeros): count those first, sort only the rest
        usable &= (self.f.relative(q) <= math.sqrt(self.f.floor)).sum(0) >= (b - 1) + self.min_extra
        counts = self.f.zeros(q[:, usable]).sum(0)
        keep = counts >= (b - 1) + self.min_extra
        return q[:, usable][:, keep], counts[keep], subsets[usable][keep]
