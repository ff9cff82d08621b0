"""SPEAR: exact recovery of a whole batch from the gradient of a fully connected ReLU layer.

Dimitrov, Müller, Petrov, Vechev, "SPEAR: Exact Gradient Inversion of Batches in Federated
Learning", NeurIPS 2024. Section numbers below refer to that paper.

For a layer z = W x + b followed by ReLU and a batch of B inputs (rows of X, B x n), the mean
loss gives G = dL/dW = D X with D = (dL/dZ)^T (m x B), and g = dL/db = D 1. Then:

* rank G = B while B <= min(m, n) (Sec. 3): the batch size is the spectral rank of G.
* With G = L R (thin SVD, L: m x B), D = L Q and X = Q^{-1} R for one unknown invertible Q
  (Theorem 3.2).
* ReLU zeroes dL/dz wherever z <= 0, so each column of D is sparse (about half its entries).
  If B - 1 rows of L, L_A, are all zero rows of column j of D, then L_A q_j = 0: q_j spans
  the kernel of L_A (Sec. 4.1). Random row subsets are sampled in batches; a kernel vector is
  kept when L q has far more zeros than the B - 1 it was built to have (the sparsity filter).
* Sampling also meets combinations of columns that look sparse; ``refine`` and ``realizable``
  reject them (see there).
* The B sparsest independent directions are picked greedily (Sec. 4.2), their scale comes from
  the bias gradient, L Q_hat s = g (Sec. 4.3), and X = Q^{-1} R.

Success needs all B - 1 sampled rows inside one column's zero set, probability about
rho^(B-1) per column for zero fraction rho: the cost is exponential in B (about 2^B samples at
rho = 1/2), and far worse when examples look alike and many neurons are on for all of them.
Additions of ours (not in the paper) cut it, all from one fact: an input known up to scale
pins down neurons it surely switches off (negative drive and non-positive bias), and those rows
of L have its column as their kernel (``_certain_kernels``). Inputs known up to scale come from
rows of L read as rows of Q^{-1}: a neuron on for one example only has its row parallel to that
example's (``row_directions``), and rows with the found examples peeled off give more
(``_Pool.deflated``); from the plane orthogonal to B - 2 found columns (``missing_pair``); and
from the line orthogonal to B - 1 (``missing_direction``). In between, rows are drawn in
proportion to their estimated chance of being zero in the columns not found yet
(``DirectionSampler.guide``). The row reads take turns with the draws, so where they give
nothing (small or unlike batches) they cost at most as much time as the draws. Before sampling,
the uniform cost goes into the diagnostics; with a budget, a ``partial`` result says how many
of the B directions were found.

What the attack checks before saying ``exact``: every neuron a recovered input switches off,
pushed through the layer's known weights, has a zero entry in that input's gradient column (a
forward-pass check the gradient alone does not force: a wrong input switches off neurons that
carry gradient), and B equals the number of examples the client reports.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pydantic import Field
from scipy.stats import poisson

from fedaudit.attacks.base import Attack, Budget, BudgetExceeded, Observation, Reconstruction, options
from fedaudit.attacks.spectral import left_singular, noise_edge, noise_row_bound, rank_above_noise, spectral_rank

if TYPE_CHECKING:
    from fedaudit.models.adapters import DenseLayer

F64 = torch.float64
CHUNK_BYTES = 64 * 2**20
"""Working-set bound of one batch of sampled row subsets."""
PROBE_ROWS = 64
"""Rows a sampled direction is first tested on (cheap pre-filter before the full check)."""
ROW_CHUNK = 32
"""Rows of L tried as rows of Q^{-1} per turn (``row_directions``)."""
FALSE_ACCEPT = 1e-12
"""Allowed chance, per sampled direction, that a wrong one passes the sparsity filter."""


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
    log_pi = (math.lgamma(zero + 1) - math.lgamma(zero - batch + 2)
              - math.lgamma(active + 1) + math.lgamma(active - batch + 2))
    harmonic = sum(1.0 / k for k in range(1, batch + 1))
    return harmonic * math.exp(-log_pi)


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
            return (torch.empty(b, 0, dtype=F64, device=self.device), torch.empty(0, device=self.device),
                    subsets[:0])
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


def refine(factors: Factors, q: torch.Tensor, subset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The direction re-fitted to its zero set, or None when it is not a column of Q.

    Besides the true columns, sampling meets combinations of two columns: a subset of B-2 rows
    that both examples switch off plus one arbitrary row has a kernel inside span(q_j, q_k),
    zero on the rows both switch off (about rho^2 of them). Such a zero set, without the rows
    the direction was built from, spans only B-2 dimensions; a true column's spans B-1 (its
    remaining zeros pin it down). The kept direction is the smallest right singular vector of
    L over the whole zero set, refitted until that set stops changing (a direction built from
    B - 1 rows is less accurate than one fitted to hundreds, and its zero set can be off by a
    row); returned with its zero set.
    """
    zero = factors.zeros(q[:, None]).flatten()
    rest = zero.clone()
    rest[subset] = False
    b = factors.batch
    if int(rest.sum()) < b - 1:
        return None
    s = torch.linalg.svdvals(factors.L[rest])
    if float(s[b - 2] / s[0]) <= math.sqrt(factors.floor):
        return None
    for _ in range(4):
        # V^T must be B x B (its last row is the null direction), full only when fewer than B rows
        # remain: the full U of a few hundred rows costs ten times the rest
        _, _, vt = torch.linalg.svd(factors.L[zero], full_matrices=int(zero.sum()) < b)
        q = vt[-1] * torch.sign(vt[-1] @ q)
        again = factors.zeros(q[:, None]).flatten()
        if int(again.sum()) < b - 1:
            return None  # the refit left the sparse direction: not a column
        if bool((again == zero).all()):
            break
        zero = again
    return q, zero


def realizable(f: Factors, zero: torch.Tensor, inputs_map: torch.Tensor, bias: torch.Tensor) -> bool:
    """Whether one input in the batch's span switches off (nearly) exactly the neurons in ``zero``.

    A column of D is zero exactly where its example's pre-activation z = W x + b is <= 0, and x
    lies in the row space of R, x = V c (V orthonormal). A combination of columns is zero on a
    set no single input produces: in a binary classifier dL/da factorizes as w_i e_j, so columns
    j and k cancel on the neurons both switch on, and such a combination is as sparse as a true
    column. The linear program finds the c that violates the sign constraints least (L1, each
    row normalized, rounding slack sqrt(floor) for inputs of up to unit size per entry); a true
    column violates only rows whose gradient entry is non-zero but at the rounding level (a
    handful), a combination violates a share of all rows. The cut between the two is the
    geometric middle between one row and all rows. ``inputs_map`` is W V (m x B).
    """
    m, batch = inputs_map.shape
    off = torch.ones(m, dtype=torch.bool, device=zero.device)
    off[f.rows] = zero
    sign = torch.where(off, 1.0, -1.0).to(F64)[:, None]
    rows = torch.cat([inputs_map, bias[:, None]], dim=1)
    rows = (sign * rows / rows.norm(dim=1, keepdim=True).clamp_min(torch.finfo(F64).tiny)).cpu().numpy()
    slack = math.sqrt(f.floor) * math.sqrt(f.R.shape[1])
    allowed = math.sqrt(m)
    # An input that violates few of the layer's rows violates few of any sample of them: a program
    # on 8 sqrt(m) rows rejects a direction whose best input violates over 1/8 of them in a
    # fraction of the time (unrealizable directions violate about half); survivors get the full one.
    sample = np.random.default_rng(int(zero.sum())).choice(m, size=min(m, int(8 * allowed)), replace=False)
    for part in (rows[np.sort(sample)], rows) if len(sample) < m else (rows,):
        if _least_violations(part, slack) > allowed:
            return False
    return True


def _least_violations(rows: np.ndarray, slack: float) -> int:
    """Fewest rows with rows[:, :-1] . c + rows[:, -1] > slack over all c (L1 relaxation, HiGHS)."""
    from scipy import sparse
    from scipy.optimize import linprog

    k, batch = rows.shape[0], rows.shape[1] - 1
    # variables: c, then one violation per row (>= 0); rows . c - violation <= slack - row bias
    a_ub = sparse.hstack([sparse.csr_matrix(rows[:, :-1]), -sparse.identity(k, format="csr")], format="csr")
    cost = np.concatenate([np.zeros(batch), np.ones(k)])
    bounds = [(None, None)] * batch + [(0, None)] * k
    result = linprog(cost, A_ub=a_ub, b_ub=slack - rows[:, -1], bounds=bounds, method="highs")
    if result.status != 0:
        return k
    return int((result.x[batch:] > slack).sum())


def _certain_kernels(f: Factors, drive: torch.Tensor, bias: torch.Tensor,
                     exact: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernels of the rows an input x surely switches off, for each sign of its unknown scale c.

    ``drive`` is W x (m x k, one input per column). For c > 0 every neuron with (W x)_i <= 0 and
    b_i <= 0 has z = c (W x)_i + b_i <= 0 and is off (for c < 0 those with (W x)_i >= 0 and
    b_i <= 0), so those rows of L lie in the input's zero set and have its column of Q as their
    kernel. Returns (B x j) the kernel for each input and sign whose rows have rank B - 1, and
    the column of ``drive`` each came from; with
    ``exact``, only where they also have rank below B (the input is one of the batch, not a
    mixture, whose off rows span all B dimensions). Rank from the Gram matrices L_off^T L_off, all
    at once: a singular value ratio below sqrt(floor) (as in ``refine``) is an eigenvalue ratio
    below floor, far above float64 rounding.
    """
    b = f.batch
    can = (bias <= 0)[f.rows, None]
    off = torch.cat([(drive[f.rows] <= 0) & can, (drive[f.rows] >= 0) & can], dim=1)
    source = torch.arange(off.shape[1], device=off.device).remainder(drive.shape[1])
    enough = off.sum(0) >= b - 1
    off, source = off[:, enough], source[enough]
    if off.shape[1] == 0:
        return torch.empty(b, 0, dtype=F64, device=f.L.device), source
    gram = (off.T.to(F64) @ f.outer).reshape(-1, b, b)
    eig, vec = torch.linalg.eigh(gram)  # ascending
    top = eig[:, -1].clamp_min(torch.finfo(F64).tiny)
    keep = eig[:, 1] / top > f.floor
    if exact:
        keep &= eig[:, 0] / top <= f.floor
    return vec[keep, :, 0].T, source[keep]


def missing_direction(f: Factors, found: torch.Tensor, basis: torch.Tensor, inputs_map: torch.Tensor,
                      bias: torch.Tensor) -> list[torch.Tensor]:
    """Candidates for the last column of Q when the other B - 1 (``found``, B x B-1) are known.

    X = Q^{-1} R, and the row p of Q^{-1} that gives the missing input is orthogonal to every
    other column of Q: with B - 1 columns known, p, and so the input x = p R, is known up to a
    scale c of either sign, and ``_certain_kernels`` gives the column. This closes the search when
    the last column is one uniform or guided draws rarely hit (an example unlike the others).
    Returns one candidate per sign whose certain set has rank B - 1; ``refine`` and
    ``realizable`` then judge them like any sampled direction.
    """
    p = torch.linalg.svd(found.T, full_matrices=True).Vh[-1]  # orthogonal to the B - 1 columns
    return list(_certain_kernels(f, (inputs_map @ (basis.T @ (f.R.T @ p)))[:, None], bias, exact=False)[0].T)


def missing_pair(f: Factors, found: torch.Tensor, basis: torch.Tensor, inputs_map: torch.Tensor,
                 bias: torch.Tensor) -> list[torch.Tensor]:
    """Candidates for the last two columns of Q when the other B - 2 (``found``) are known.

    The rows p of Q^{-1} that give the two missing inputs lie in the plane orthogonal to the
    found columns: p = cos(t) u1 + sin(t) u2. As t turns, a neuron's drive (W x)_i for x = p R
    changes sign at one angle (mod pi), so the set ``_certain_kernels`` reads off is constant
    between consecutive such angles: one probe per interval (at its middle) meets every set
    the plane can give, both missing inputs' among them (each lies inside an interval). Only
    neurons with b_i <= 0 enter the set, so there are at most as many probes as such neurons
    (one batched Gram eigendecomposition). Kept are sets of rank exactly B - 1 (a mixture's set
    spans all B dimensions).
    """
    u = torch.linalg.svd(found.T, full_matrices=True).Vh[-2:]  # 2 x B, orthogonal to the B - 2
    drive = inputs_map @ (basis.T @ (f.R.T @ u.T))  # m x 2: W x for x = u1 R and x = u2 R
    rows = f.rows[bias[f.rows] <= 0]
    cuts = torch.atan2(-drive[rows, 0], drive[rows, 1]).remainder(math.pi).sort().values
    if len(cuts) == 0:
        return []
    mids = torch.cat([(cuts[:-1] + cuts[1:]) / 2, (cuts[-1:] + cuts[:1] + math.pi) / 2])
    probes = drive @ torch.stack([mids.cos(), mids.sin()])  # m x intervals
    return list(_certain_kernels(f, probes, bias, exact=True)[0].T)


def row_directions(f: Factors, basis: torch.Tensor, inputs_map: torch.Tensor, bias: torch.Tensor,
                   rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate columns of Q (B x k) from rows of L (``rows``: k x B) read as rows of Q^{-1},
    with the row each came from (k x B, unit).

    Row i of L is L_i = D_i Q^{-1} = sum_j D_ij p_j over the examples j that switch neuron i on
    (p_j: row j of Q^{-1}). A neuron on for one example only has L_i parallel to p_j, so
    x = L_i R is that example's input up to a scale of either sign, and ``_certain_kernels``
    gives its column directly. Such neurons are common exactly where sampling is hard: when
    the examples look alike (CIFAR-10), a neuron's pre-activation is mostly w.mean + b, and
    those near the threshold are on for one or a few examples (b = 25, m = 1000: about 50 of
    840 active neurons are on for exactly one example, which gives 14 to 19 of the 25 columns).
    Rows of larger support give mixtures, whose certain rows span all B dimensions (rejected).
    Candidates still go through ``refine`` and ``realizable``. The rows need not be rows of L:
    ``_Pool.deflated`` gives rows with the found examples' part taken out.
    """
    p = rows / rows.norm(dim=1, keepdim=True)
    drive = inputs_map @ (basis.T @ (f.R.T @ p.T))  # W x for x = L_i R, one column per row
    q, source = _certain_kernels(f, drive, bias, exact=True)
    return q, p[source]


def scale_violations(f: Factors, zero: torch.Tensor, drive: torch.Tensor, bias: torch.Tensor) -> int:
    """Fewest active neurons whose on/off state disagrees with ``zero`` for the input c x, over all
    scales c of either sign (``drive``: W x).

    An input known up to scale (a row of Q^{-1} gives x = p R) must switch off exactly its
    column's zero set at its true scale: z_i = c (W x)_i + b_i <= 0 exactly where the gradient
    entry is zero. Each neuron admits a half-line of c; the sweep over their end points counts
    the best c. A column and a row of Q^{-1} that do not belong to the same example (a mixture
    on either side) disagree on a share of all neurons.
    """
    d, b0, z = drive[f.rows], bias[f.rows], zero
    best = len(d)
    for sign in (1.0, -1.0):
        # neuron i agrees for c > 0 with: off: c * s d_i <= -b_i; on: c * s d_i > -b_i
        sd = sign * d
        ends = (-b0 / sd).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
        cs = torch.cat([ends.clamp_min(0), ends.new_tensor([0.0, float(ends.abs().max()) * 2 + 1])])
        cs = torch.unique(cs)
        probes = torch.cat([(cs[:-1] + cs[1:]) / 2, cs])
        zz = probes[None, :] * sd[:, None] + b0[:, None]
        off = zz <= 0
        best = min(best, int((off != z[:, None]).sum(0).min()))
    return best


def _new_directions(q: torch.Tensor, known: torch.Tensor, tol: float = 1e-6) -> list[int]:
    """Columns of ``q`` (unit vectors) pointing along no ``known`` column nor an earlier column."""
    fresh = ((known.T @ q).abs() < 1 - tol).all(0)
    out = []
    while bool(fresh.any()):
        j = int(torch.nonzero(fresh)[0])
        out.append(j)
        fresh &= (q[:, j] @ q).abs() < 1 - tol
    return out


@options
class SpearOptions:
    """``audit.spear``."""

    layer: int = Field(default=0, ge=0)
    """Which fully connected ReLU layer to attack: 0 = the first (its inputs are the model's
    inputs), 1 = the next (its inputs are features), ..."""
    seed: int = 0
    """Seed of the row-subset sampling."""


class Spear(Attack):
    """SPEAR on one fully connected layer followed by ReLU (``audit.spear.layer``: its index
    among such layers, 0 = the first, whose inputs are the model's inputs)."""

    name = "spear"
    Options = SpearOptions

    @property
    def layer(self) -> int:
        return self.options.layer

    def _layer(self, observation: Observation) -> DenseLayer | None:
        relu = [d for d in observation.model.adapter.dense_layers if d.relu_after]
        return relu[self.layer] if self.layer < len(relu) else None

    def applicable(self, observation: Observation) -> tuple[bool, str]:
        relu = [d for d in observation.model.adapter.dense_layers if d.relu_after]
        if not relu:
            return False, ("SPEAR needs a fully connected layer followed by ReLU (the sparsity of its gradient); "
                           f"{observation.model.name} has none")
        if self.layer >= len(relu):
            return False, f"audit.spear.layer = {self.layer}, but the model has {len(relu)} ReLU fully connected layers"
        layer = relu[self.layer]
        if layer.weight not in observation.update:
            return False, f"the layer {layer.module} is frozen: the update has no gradient for it"
        if layer.bias is None:
            return False, f"the layer {layer.module} has no bias: the scale of each input cannot be fixed"
        return True, ""

    def run(self, observation: Observation, budget: Budget) -> Reconstruction:
        layer = self._layer(observation)
        grad_w = observation.gradient(layer.weight).to(self.device, F64)
        grad_b = observation.gradient(layer.bias).to(self.device, F64)
        if not (torch.isfinite(grad_w).all() and torch.isfinite(grad_b).all()):
            raise ValueError(f"the gradient of {layer.module} contains NaN or inf")
        floor = float(torch.finfo(observation.model.dtype).eps)
        noise = observation.gradient_noise_std
        f = factor(grad_w, floor, noise)
        m, n = grad_w.shape
        b, expected = f.batch, observation.protocol.num_examples
        diag: dict[str, Any] = {"layer": layer.module, "width": m, "input_dim": n, "active_rows": len(f.rows),
                                "batch_from_rank": b, "examples_reported": expected, "device": str(self.device),
                                "expected_samples_at_half_sparsity": expected_samples(len(f.rows), b, 0.5)}
        if noise > 0:
            diag.update(noise_std=noise, zero_tolerance=math.sqrt(f.floor))
        if b == 0:
            why = (f"every singular value of the gradient of {layer.module} lies below the edge of the protocol "
                   f"noise (std {noise:.3g} per entry)") if noise > 0 else f"the gradient of {layer.module} is zero"
            return Reconstruction("failed", why, diagnostics=diag)
        if b >= min(len(f.rows), n):
            return Reconstruction("partial", (
                f"batch size not identifiable: the gradient of {layer.module} has full rank {b} (width {m}, "
                f"{len(f.rows)} active neurons, input {n}), so B >= {b}; a wider layer or smaller batch would leak"),
                diagnostics=diag)
        W = observation.global_weights[layer.weight].to(self.device, F64)
        bias = observation.global_weights[layer.bias].to(self.device, F64)
        solution = _Solution(f, grad_b[f.rows], W, bias)
        started = time.perf_counter()
        ran_out = self._search(f, solution, budget, diag)
        diag.update(seconds_sampling=time.perf_counter() - started, directions_found=solution.found,
                    activation_patterns_consistent=solution.consistent_count)
        if solution.X is None:
            why = (f"found {solution.found} of the {b} directions before the budget ran out "
                   f"({diag['samples']} subsets sampled; uniform draws would need about {diag['uniform_samples_needed']:.3g})") if ran_out \
                else "no direction passed the sparsity filter"
            if noise > 0:
                why += (f"; the update carries protocol noise (std {noise:.3g} per gradient entry), so no neuron's "
                        f"gradient is exactly zero: zeros are judged at {math.sqrt(f.floor):.3g} of each row")
            return Reconstruction("partial" if ran_out else "failed", why, diagnostics=diag)
        X = solution.X.cpu()
        inputs = X.reshape(b, *observation.model.input_shape) if layer.reads_input else X
        reasons = []
        if not solution.consistent:
            reasons.append(f"{b - solution.consistent_count} of {b} recovered inputs switch off neurons that carry "
                           "gradient (a wrong direction was kept when the budget ran out)")
        if b != expected:
            reasons.append(f"the gradient has rank {b} but the client reports {expected} examples "
                           "(repeated examples, or examples that reach no active neuron, add no rank)")
        lossy = observation.protocol.lossy_transforms
        if lossy:  # e.g. pruning zeroes small gradient entries: x = dW_i / db_i is read through that loss
            reasons.append(f"the update was {' and '.join(lossy)}d before it was sent: the inputs are read "
                           "through that loss, so their values are estimates")
        if noise > 0:  # zeros are only approximate: the inputs are estimates, not proofs
            reasons.append(f"the update carries protocol noise (std {noise:.3g} per gradient entry): directions "
                           f"and scales are estimated through it")
        if reasons:
            return Reconstruction("partial", "; ".join(reasons), inputs=inputs, diagnostics=diag)
        what = "inputs" if layer.reads_input else f"inputs of {layer.module} (features)"
        return Reconstruction("exact", f"all {b} {what} recovered; each reproduces its neurons' on/off pattern",
                              inputs=inputs, diagnostics=diag)

    def _search(self, f: Factors, solution: _Solution, budget: Budget, diag: dict[str, Any]) -> bool:
        """Sample until the B sparsest independent directions give a consistent batch; True if the
        budget ran out first."""
        b = f.batch
        if b == 1:
            diag.update(samples=0, uniform_samples_needed=1.0, min_extra_zeros=0)
            solution.try_directions([torch.ones(1, dtype=F64, device=self.device)])
            return False
        gen = torch.Generator().manual_seed(self.options.seed)
        sampler = DirectionSampler(f, gen, self.device)
        diag["min_extra_zeros"] = sampler.min_extra
        pool = _Pool(f, solution.W, solution.bias)
        # Rows of L read as rows of Q^{-1} (``row_directions``), in turns with the draws: whichever
        # has used less time goes next, so neither costs more than twice what the other would alone.
        seeds = list(f.L[sampler.distinct].split(ROW_CHUNK))
        peeled = 0  # known rows of Q^{-1} at the last ``deflated``
        spent = [0.0, 0.0]  # seconds on row seeds, on draws
        none = torch.empty(0, dtype=torch.long, device=self.device)
        ran_out = False
        try:
            while not solution.consistent:
                budget.check()
                turn = time.perf_counter()
                if not seeds and len(pool.inverse) > peeled:
                    peeled = len(pool.inverse)
                    seeds = list(pool.deflated().split(ROW_CHUNK))
                if seeds and spent[0] <= spent[1]:
                    q, p = row_directions(f, pool.basis, pool.inputs_map, pool.bias, seeds.pop(0))
                    changed = pool.add(q, torch.empty(0), [none] * q.shape[1], p)
                    spent[0] += time.perf_counter() - turn
                else:
                    changed = pool.add(*sampler.draw())
                    spent[1] += time.perf_counter() - turn
                if changed:
                    _choose(pool, solution)
                    if not solution.consistent and pool.complete(b):
                        _choose(pool, solution)
                    sampler.guide(*pool.tested())
        except BudgetExceeded:
            ran_out = True
        rho = pool.zero_fraction()
        need = expected_samples(len(f.rows), b, rho)
        diag.update(samples=sampler.samples, samples_per_second=sampler.samples / max(spent[1], 1e-9),
                    seconds_on_row_seeds=spent[0], zero_fraction=rho,
                    combinations_rejected=pool.rejected, uniform_samples_needed=need,
                    uniform_seconds_needed=need / max(sampler.samples / max(spent[1], 1e-9), 1e-9))
        return ran_out


def _choose(pool: _Pool, solution: _Solution) -> None:
    for directions in pool.choices(solution.f.batch):
        solution.try_directions(directions)
        if solution.consistent:
            return


class _Pool:
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

    def add(self, q: torch.Tensor, counts: torch.Tensor, subsets: torch.Tensor | list[torch.Tensor],
            inverse_rows: torch.Tensor | None = None) -> bool:
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
        return ([self.zero_sets[i] for i, real in self.real.items() if real],
                [self.zero_sets[i] for i, real in self.real.items() if not real])

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


class _Solution:
    """The batch from B directions (Sec. 4.3) and its forward-pass check.

    Scale: the bias gradient is D 1 = L Q_hat s, solved for s by least squares; then
    X = Q^{-1} R. Check: every neuron a recovered input switches off (z < 0 beyond rounding)
    must have a zero entry in that input's column of D = L Q; a wrong input switches off
    neurons that carry gradient.
    """

    def __init__(self, f: Factors, bias_grad: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.f, self.g, self.W, self.bias = f, bias_grad, weight, bias
        self.X: torch.Tensor | None = None
        self.found = 0
        self.consistent_count = 0

    @property
    def consistent(self) -> bool:
        return self.X is not None and self.consistent_count == self.f.batch

    def try_directions(self, directions: list[torch.Tensor]) -> None:
        self.found = max(self.found, len(directions))
        if len(directions) < self.f.batch:
            return
        q_hat = torch.stack(directions, dim=1)
        s = torch.linalg.lstsq(self.f.L @ q_hat, self.g[:, None]).solution.flatten()
        Q = q_hat * s
        X, info = torch.linalg.solve_ex(Q, self.f.R)
        if int(info) != 0 or not bool(torch.isfinite(X).all()):
            return  # a zero scale: these directions do not make a batch
        z = X @ self.W.T + self.bias  # B x m
        zero = torch.ones_like(z, dtype=torch.bool)
        zero[:, self.f.rows] = self.f.zeros(Q).T
        tol = math.sqrt(self.f.floor) * z.abs().amax(1, keepdim=True)
        ok = int((~((z < -tol) & ~zero).any(1)).sum())
        if self.X is None or ok >= self.consistent_count:
            self.X, self.consistent_count = X, ok
