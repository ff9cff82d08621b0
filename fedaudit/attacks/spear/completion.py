"""Our additions to SPEAR (not in the paper): directions read from rows of L as rows of Q^{-1}, and
the last one or two columns completed from the ones found, through neurons an input surely
switches off."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from fedaudit.attacks.spear.factors import F64, Factors

if TYPE_CHECKING:
    pass


def _certain_kernels(
    f: Factors, drive: torch.Tensor, bias: torch.Tensor, exact: bool
) -> tuple[torch.Tensor, torch.Tensor]:
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


def missing_direction(
    f: Factors, found: torch.Tensor, basis: torch.Tensor, inputs_map: torch.Tensor, bias: torch.Tensor
) -> list[torch.Tensor]:
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


def missing_pair(
    f: Factors, found: torch.Tensor, basis: torch.Tensor, inputs_map: torch.Tensor, bias: torch.Tensor
) -> list[torch.Tensor]:
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


def row_directions(
    f: Factors, basis: torch.Tensor, inputs_map: torch.Tensor, bias: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
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
    ``Pool.deflated`` gives rows with the found examples' part taken out.
    """
    p = rows / rows.norm(dim=1, keepdim=True)
    drive = inputs_map @ (basis.T @ (f.R.T @ p.T))  # W x for x = L_i R, one column per row
    q, source = _certain_kernels(f, drive, bias, exact=True)
    return q, p[source]
