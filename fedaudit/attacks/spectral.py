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


SKETCH_MIN = 256
"""Smallest side at which a sketch pays: below it LAPACK's dense SVD takes a few milliseconds."""
OVERSAMPLE = 16
"""Sketch columns past the last signal direction (Halko, Martinsson and Tropp 2011, Sec. 4.2: 5 to
10 suffice for a Gaussian test matrix; more keep the first rounding value well resolved)."""
MAX_POWER = 3
"""Power iterations at most: with q of them the sketch's basis errs by (s_{k+1}/s_k)^(2q+1)
(ibid., Cor. 10.10), float64-exact after q = 3 for any drop of 180x or more."""
ROUNDING = float(torch.finfo(torch.float32).eps)
"""Relative level (to the top value) at or below which a tail is rounding of numbers sent in float32."""
_sizes: dict[tuple[int, int], int] = {}
"""Signal count of the last matrix of each shape: where the next sketch starts (a round's clients
and the two layers of one update have nearly the same rank)."""


def left_singular(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD (U, S, V^T) in float64: through ``low_rank_svd`` when the matrix was sent in
    float32 (every entry a float32 number, so no caller reads a gap below float32's rounding) and
    its signal is far narrower than its smaller side (a batch's gradient); otherwise LAPACK's
    dense SVD, whose tall path (QR first) is markedly faster than its wide one, so a wide matrix
    is factored through its transpose."""
    g = matrix.to(F64)
    if g.shape[0] > g.shape[1]:
        v, s, ut = left_singular(g.T)
        return ut.T, s, v.T
    if g.shape[0] >= SKETCH_MIN and bool(g.any()) and bool((g.float().double() == g).all()):
        found = low_rank_svd(g)
        if found is not None:
            return found
    v, s, ut = torch.linalg.svd(g.T, full_matrices=False)
    return ut.T, s, v.T


def low_rank_svd(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The SVD of a wide float64 ``g`` (m <= n) whose spectrum drops into rounding after k << m
    values, from a randomized sketch (Halko, Martinsson and Tropp 2011, Alg. 4.4 and 5.1), or
    None when no such drop shows (the caller then runs the dense SVD).

    A sketch of L = k + OVERSAMPLE columns, refined by power iterations until its basis is
    float64-exact, gives the top L singular triplets: the first k (the signal) equal the dense
    SVD's to rounding; the next ones are the top of the rounding tail (Ritz values, each at most
    the true value: within a few percent of it on GPT-2's gradients). Accepted only when the
    drop after the k-th value is sharp enough for that (ratio <= eps^(1/(2 MAX_POWER + 1))), lands
    at float32 rounding or below, and the tail seen does not drop sharply again: every value the
    sketch did not see is then below the first tail value and, for numbers sent in float32 (see
    ``left_singular``), below their rounding floor, where the rank logic reads no gap. Those
    values are reported as the sketch's last one; U is completed by orthonormal directions of the
    tail in no particular order, V^T by zero rows (right vectors of rounding, which no caller reads).
    """
    m, n = g.shape
    size = min(m // 3, int(1.5 * _sizes.get((m, n), 8)) + OVERSAMPLE)
    while size <= m // 3:
        found, grow = _sketch(g, size)
        if found is not None:
            u, s, vt, k = found
            _sizes[(m, n)] = k
            tail = torch.full((m - size,), float(s[-1]), dtype=F64, device=g.device)
            rest = torch.zeros(m - size, n, dtype=F64, device=g.device)  # the tail's right vectors: not needed
            return _complete(u, m), torch.cat([s, tail]), torch.cat([vt, rest])
        if not grow:
            return None
        size *= 2
    return None


def _sketch(g: torch.Tensor, size: int) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int] | None, bool]:
    """Top ``size`` singular triplets of ``g`` by subspace iteration from a Gaussian start, with k,
    the count of values above float32 rounding: (triplets and k, False), (None, True) when the
    signal may extend past the sketch, (None, False) when it does not end in one sharp drop."""
    gen = torch.Generator(device=g.device).manual_seed(0)
    q = torch.linalg.qr(g @ torch.randn(g.shape[1], size, generator=gen, dtype=F64, device=g.device)).Q
    eps = float(torch.finfo(F64).eps)
    sharp = eps ** (1 / (2 * MAX_POWER + 1))
    for power in range(1, MAX_POWER + 1):
        q = torch.linalg.qr(g @ torch.linalg.qr(g.T @ q).Q).Q
        ub, s, vt = torch.linalg.svd(q.T @ g, full_matrices=False)
        rel = (s / s[0]).clamp_min(torch.finfo(F64).tiny)
        k = int((rel > ROUNDING).sum())
        if k + OVERSAMPLE > size:
            return None, True
        drops = rel[1:] / rel[:-1]
        # The tail must start with one sharp drop and not drop sharply again (a second group).
        if float(drops[k - 1]) > sharp or float(drops[k:].min()) <= sharp:
            return None, False
        if float(drops[k - 1]) ** (2 * power + 1) <= eps:
            break
    return (q @ ub, s, vt, k), False


def _complete(basis: torch.Tensor, total: int) -> torch.Tensor:
    """``basis`` (n x L, orthonormal columns) and then total - L orthonormal columns orthogonal to it."""
    n, size = basis.shape
    if total <= size:
        return basis[:, :total]
    a, tau = torch.geqrf(basis)
    a = torch.cat([a, torch.zeros(n, total - size, dtype=a.dtype, device=a.device)], dim=1)
    return torch.cat([basis, torch.linalg.householder_product(a, tau)[:, size:]], dim=1)
