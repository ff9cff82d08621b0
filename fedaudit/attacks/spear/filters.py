"""The filters a sampled direction must pass: sparse enough to be a column (``refine``), and
realizable by some input through the layer's known weights (``realizable``)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from fedaudit.attacks.spear.factors import F64, Factors

if TYPE_CHECKING:
    pass


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
