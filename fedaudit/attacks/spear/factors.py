"""SPEAR's factorization G = L R (Theorem 3.2): the batch size from the spectral rank, the rows
that carry gradient, and the zero test of a direction."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import torch

from fedaudit.attacks.spectral import left_singular, noise_edge, noise_row_bound, rank_above_noise, spectral_rank

if TYPE_CHECKING:
    pass

F64 = torch.float64


@dataclass
class Factors:
    """G = L R restricted to the rows that are not zero for the whole batch (Theorem 3.2)."""

    L: torch.Tensor
    """(m_active, B) float64."""
    R: torch.Tensor
    """(B, n) float64."""
    rows: torch.Tensor
    """Indices of the active rows in the layer."""
    floor: float
    """Relative rounding level of the gradient."""

    @property
    def batch(self) -> int:
        return int(self.L.shape[1])

    @cached_property
    def row_norms(self) -> torch.Tensor:
        return self.L.norm(dim=1)

    @cached_property
    def outer(self) -> torch.Tensor:
        """L_i^T L_i per row, flattened (m_active x B^2): Gram matrices of row sets as one product."""
        return (self.L[:, :, None] * self.L[:, None, :]).reshape(len(self.L), -1)

    def relative(self, q: torch.Tensor) -> torch.Tensor:
        """|L q| entrywise over |row of L| |q| (the cosine of each row with each column of ``q``).

        The gradient's rounding is relative to each neuron's own gradient row, so a true zero of
        dL/dz is small against its row, not against the column's largest entry: rows of neurons
        with a tiny gradient (relative to the largest) would otherwise look zero for every
        direction, and directions through them look sparse."""
        scale = self.row_norms[:, None] * q.norm(dim=0, keepdim=True)
        return (self.L @ q).abs() / scale.clamp_min(torch.finfo(F64).tiny)

    def zeros(self, q: torch.Tensor) -> torch.Tensor:
        """Entries of L q (q: B x k) at the rounding level, per column.

        The cut is the largest gap of the sorted log ``relative`` whose lower side is at most
        sqrt(floor): exact zeros of dL/dz sit at rounding level, while a small non-zero entry (a
        neuron whose upstream gradient is small) stays orders of magnitude above it.
        """
        # Below the rounding floor nothing is resolved: the B - 1 rows a direction was built from
        # are zero to 1e-16, its other zeros only to the gradient's rounding (1e-7 in float32).
        rel = self.relative(q).clamp_min(self.floor).log()
        ordered = rel.sort(0).values
        gaps = ordered[1:] - ordered[:-1]
        limit = 0.5 * math.log(self.floor)
        gaps[ordered[:-1] > limit] = -math.inf
        best = gaps.argmax(0, keepdim=True)
        cut = 0.5 * (ordered.gather(0, best) + ordered.gather(0, best + 1))
        cut = torch.where(torch.isfinite(gaps.gather(0, best)), cut, torch.full_like(cut, limit))
        return rel <= cut


def factor(gradient: torch.Tensor, floor: float, noise_std: float = 0.0) -> Factors:
    """Active rows, batch size (spectral rank) and the factors L, R of the weight gradient.

    With protocol noise of std ``noise_std`` per entry, the batch size is the count of singular
    values above the noise edge (``spectral.noise_edge``) and the floor becomes the noise relative
    to the weakest of them, squared (zeros are judged at sqrt(floor)): a neuron counts as off when
    its row is as small as the noise can make it.
    """
    g = gradient.to(F64)
    norms = g.norm(dim=1)
    # Under noise a neuron off for the whole batch still has a row: noise alone (``noise_row_bound``).
    m, n = g.shape
    cut = max(floor * float(norms.max()), noise_row_bound(noise_std, n, m))
    rows = torch.nonzero(norms > cut).flatten()
    u, s, vt = left_singular(g[rows])
    if noise_std > 0:
        edge = noise_edge(noise_std, len(rows), n)
        b = rank_above_noise(s, edge)
        if b:
            floor = max(floor, min(1.0, edge / float(s[b - 1])) ** 2)
        return Factors(L=u[:, :b].contiguous(), R=(s[:b, None] * vt[:b]).contiguous(), rows=rows, floor=floor)
    b = spectral_rank(s, floor)
    return Factors(L=u[:, :b].contiguous(), R=(s[:b, None] * vt[:b]).contiguous(), rows=rows, floor=floor)


def expected_samples(active: int, batch: int, rho: float) -> float:
    """Coupon-collector estimate of the subsets to sample until every column is hit: H_B / pi with
    pi = C(rho m, B-1) / C(m, B-1), the chance that one subset lies in a given column's zero set."""
    if batch <= 1:
        return 1.0
    zero = max(batch - 1, int(rho * active))
    log_pi = (
        math.lgamma(zero + 1)
        - math.lgamma(zero - batch + 2)
        - math.lgamma(active + 1)
        + math.lgamma(active - batch + 2)
    )
    harmonic = sum(1.0 / k for k in range(1, batch + 1))
    return harmonic * math.exp(-log_pi)
