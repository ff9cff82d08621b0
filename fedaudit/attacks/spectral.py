"""The rank of a gradient from its singular values: the largest gap between signal and rounding noise."""

from __future__ import annotations

import math

import torch

F64 = torch.float64


def spectral_rank(singular_values: torch.Tensor, noise_floor: float, min_rank: int = 0) -> int:
    """Rank at the largest log-gap of the singular values (descending) that separates signal from noise.

    ``noise_floor`` is the relative rounding level of the numbers the gradient was sent in. A cut
    must leave every value above it on the signal side (rel > floor) and put the next one below
    sqrt(floor), the geometric middle between that floor and the top value; a spectrum that
    stays above sqrt(floor) has no noise part, so every direction is signal. A dominant first
    direction (inputs that are nearly alike) is therefore never mistaken for the whole signal.
    ``min_rank``: no cut below it (a rank known from elsewhere, e.g. another layer of the same batch).
    """
    s = singular_values.to(F64)
    if s.numel() == 0 or s[0] <= 0:
        return 0
    rel = (s / s[0]).clamp_min(torch.finfo(F64).eps * 1e-3)
    if float(rel[-1]) > math.sqrt(noise_floor):
        return int(s.numel())
    gaps = rel[:-1].log() - rel[1:].log()
    gaps[rel[:-1] <= noise_floor] = -math.inf
    gaps[rel[1:] >= math.sqrt(noise_floor)] = -math.inf
    gaps[: max(0, min_rank - 1)] = -math.inf
    return int(gaps.argmax()) + 1 if bool(torch.isfinite(gaps).any()) else int(s.numel())


def gap_rank(singular_values: torch.Tensor, noise_floor: float, min_rank: int = 0, max_rank: int | None = None) -> int:
    """Rank at the largest log-gap of the singular values (descending) with both sides above
    ``noise_floor`` (relative to the top value), with no cut below ``min_rank`` or above ``max_rank``.

    For spectra whose signal fades smoothly into a tail before dropping to rounding noise (inputs
    seen at drifting weights, see ``dager.estimate_span``): the sharpest drop within the signal
    is where the inputs end and their drift begins; the drop into rounding noise ends the tail.
    """
    s = singular_values.to(F64)
    if s.numel() == 0 or s[0] <= 0:
        return 0
    rel = (s / s[0]).clamp_min(torch.finfo(F64).eps * 1e-3)
    gaps = rel[:-1].log() - rel[1:].log()
    gaps[rel[1:] <= noise_floor] = -math.inf
    gaps[: max(0, min_rank - 1)] = -math.inf
    if max_rank is not None:
        gaps[max_rank:] = -math.inf
    return int(gaps.argmax()) + 1 if bool(torch.isfinite(gaps).any()) else int(s.numel())


def noise_edge(noise_std: float, rows: int, cols: int) -> float:
    """Largest singular value pure noise of std ``noise_std`` per entry reaches in a rows x cols matrix.

    For i.i.d. Gaussian entries, s_max <= sigma (sqrt(rows) + sqrt(cols) + t) with probability
    at least 1 - exp(-t^2 / 2) (Davidson and Szarek 2001, Thm. II.13); t = sqrt(2 ln(rows + cols))
    makes a false signal direction rarer than one in rows + cols. Singular values above the edge
    are signal; directions of the inputs weaker than the noise are lost in it.
    """
    return noise_std * (math.sqrt(rows) + math.sqrt(cols) + math.sqrt(2 * math.log(rows + cols)))


def noise_row_bound(noise_std: float, width: int, rows: int) -> float:
    """Largest norm a row of ``width`` pure-noise entries (std ``noise_std``) reaches among ``rows``
    such rows: sigma (sqrt(width) + sqrt(2 ln rows)), exceeded with chance below 1 / rows
    (Gaussian concentration of the norm, a 1-Lipschitz function). Rows above it carry signal."""
    return noise_std * (math.sqrt(width) + math.sqrt(2 * math.log(max(rows, 2))))


def rank_above_noise(singular_values: torch.Tensor, edge: float) -> int:
    """How many singular values stand above the noise edge."""
    return int((singular_values.to(F64) > edge).sum())


def left_singular(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD (U, S, V^T) in float64; LAPACK's tall path (QR first) is markedly faster than its
    wide one, so a wide matrix is factored through its transpose."""
    g = matrix.to(F64)
    if g.shape[0] >= g.shape[1]:
        return torch.linalg.svd(g, full_matrices=False)
    v, s, ut = torch.linalg.svd(g.T, full_matrices=False)
    return ut.T, s, v.T
