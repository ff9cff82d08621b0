"""The span check (DAGER, Lemma 5.1 and eq. 5): the inputs of a linear layer from its weight
gradient, the rank at the spectral gap, and thresholds taken from the data."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedaudit.attacks.spectral import gap_rank, left_singular, noise_edge, rank_above_noise, spectral_rank

F64 = torch.float64
CHUNK_BYTES = 256 * 2**20
"""Working-set bound for one chunk of the layer-1 check or of a layer-2 extension batch."""


@dataclass
class Span:
    """Orthonormal basis of the inputs of one linear layer, estimated from its weight gradient."""

    basis: torch.Tensor
    """(k, r) float64, orthonormal columns."""
    rank: int
    width: int
    noise: float
    """s_{r+1} / s_r: how far from the span a true input can appear."""
    input_map: torch.Tensor | None = None
    """(k, d): the span lives in the image of this map (LoRA factor A), or in input space if None."""
    source: str = ""

    centered: bool = False
    """Inputs come from a LayerNorm: minus its bias they sum to zero, so they fill at most width - 1 dims."""
    edge: float = 0.0
    """The noise edge relative to the top singular value (0: no protocol noise or rounding modelled)."""

    @property
    def full(self) -> bool:
        return self.rank >= self.width - int(self.centered and self.input_map is None)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """Relative distance of each row of ``x`` (..., d) to the span (eq. 5), float64."""
        x = x.to(device=self.basis.device, dtype=F64)
        if self.input_map is not None:
            x = x @ self.input_map.T
        rest = x - (x @ self.basis) @ self.basis.T
        norm = x.norm(dim=-1)
        # A zero input (e.g. a zeroed padding embedding) adds nothing to any gradient: never "present".
        return torch.where(norm > 0, rest.norm(dim=-1) / norm.clamp_min(torch.finfo(F64).tiny), 1.0)


def estimate_span(
    gradient: torch.Tensor,
    noise_floor: float,
    input_map: torch.Tensor | None = None,
    source: str = "",
    min_rank: int = 0,
    noise_std: float = 0.0,
    drift: bool = False,
    rounding: torch.Tensor | None = None,
) -> Span:
    """Span of the input-side space of ``gradient`` (k_in x m): rank at the largest spectral gap.

    ``noise_floor`` is the relative rounding level of the numbers the gradient was sent in: a
    spectrum whose smallest value stays above sqrt(noise_floor) (the geometric middle between
    rounding noise and the top singular value) has no noise part, so the span is full.
    ``noise_std``: noise per entry added by protocol (DP-SGD, a noise defense). Then the rank is
    the count of singular values above the noise edge (``spectral.noise_edge``), and the noise
    ratio is the edge over the weakest signal value: how far a true input may sit from the span.
    ``drift``: the gradient sums each input as seen at several weights (FedAvg over several local
    epochs). Input i at step s is x_i(w_s) = x_i + (w_s - w_0) . dx_i/dw + O(|w_s - w_0|^2), so
    the update spans {x_i} plus their drift: to first order 2r directions for r inputs, with the
    drift's singular values fading smoothly below the inputs' (down to rounding after E r
    directions for E epochs). The rank r is the sharpest drop within the signal
    (``spectral.gap_rank``) among the first width / 2 values (first-order drift needs as many
    directions again). The basis keeps 2r directions, but leaves at least r outside so that
    absent inputs keep a residual of order sqrt(r / width). A true input's residual is then of
    second order: the noise ratio is the first direction left out over the weakest input one.
    ``rounding``: per-entry std of the rounding the numbers were sent with (``setup.rounding_std``),
    in the gradient's units; then, as for protocol noise, the rank counts the directions above
    the noise edge, and drift weaker than the rounding is lost in it.
    """
    g = gradient.to(F64)
    if not torch.isfinite(g).all():
        raise ValueError(f"the gradient of {source or 'the query projection'} contains NaN or inf")
    if noise_std > 0 or rounding is not None:
        return _span_above_noise(g, noise_std, rounding, input_map, source)
    u, s, _ = left_singular(g)
    rel = s / s[0]
    width = int(g.shape[0])
    rank = gap_rank(s, noise_floor, min_rank, width // 2) if drift else spectral_rank(s, noise_floor, min_rank)
    if rank == 0:
        raise ValueError(f"the gradient of {source or 'the query projection'} is zero")
    kept = max(rank, min(2 * rank, width - rank)) if drift else rank
    noise = float(rel[kept] / rel[rank - 1]) if kept < s.numel() else 1.0
    return Span(basis=u[:, :kept].contiguous(), rank=rank, width=width, noise=noise, input_map=input_map, source=source)


def _span_above_noise(
    g: torch.Tensor, noise_std: float, rounding: torch.Tensor | None, input_map: torch.Tensor | None, source: str
) -> Span:
    """The directions of ``g`` above the edge of its noise: i.i.d. protocol noise of std
    ``noise_std`` (``spectral.noise_edge``), plus per-entry rounding of stds ``rounding``.

    Per-entry stds sigma_ij: the output-side columns are whitened first (scaling columns keeps
    the input-side space), and the largest singular value of the noise is bounded by the largest
    row norm plus the largest column norm of sigma, plus max sigma_ij sqrt(2 ln(rows + cols))
    (Bandeira and van Handel 2016, Thm. 1.1; for equal stds this is ``noise_edge``).
    """
    if rounding is None:
        edge = noise_edge(noise_std, *g.shape)
    else:
        std = (rounding.to(g.device, F64).square() + noise_std**2).sqrt()
        col = std.square().mean(0).sqrt().clamp_min(torch.finfo(F64).tiny)
        g, std = g / col, std / col
        rows_cols = float(std.square().sum(1).sqrt().max() + std.square().sum(0).sqrt().max())
        edge = rows_cols + float(std.max()) * math.sqrt(2 * math.log(sum(g.shape)))
    u, s, _ = left_singular(g)
    rank = rank_above_noise(s, edge)
    if rank == 0:
        kind = "noise" if rounding is None else "rounding" if noise_std == 0 else "rounding and noise"
        raise NoiseDominates(
            f"every singular value of the gradient of {source or 'the query projection'} "
            f"(largest {float(s[0]):.3g}) lies below the {kind} edge {edge:.3g}"
        )
    noise = min(1.0, edge / float(s[rank - 1]))
    return Span(
        basis=u[:, :rank].contiguous(),
        rank=rank,
        width=int(g.shape[0]),
        noise=noise,
        input_map=input_map,
        source=source,
        edge=edge / float(s[0]),
    )


class NoiseDominates(ValueError):
    """The update's protocol noise hides every direction of a gradient the attack needs."""


def threshold(span: Span, absent: float, present: float = 0.0) -> float:
    """Geometric middle between the residual a true input can show (the span's noise ratio, or
    ``present`` when measured larger) and the closest absent one."""
    return math.sqrt(max(resolution(span), present) * max(absent, torch.finfo(F64).eps))


def resolution(span: Span) -> float:
    """The smallest residual that tells anything apart: the noise ratio where rounding to the
    gradient's own precision is the only noise. Above a noise edge, the ratio edge / s_r bounds
    only the weakest direction (Davis-Kahan), while an input's residual mixes all of its
    directions, mostly strong ones: there the data decide (measured present residuals)."""
    return max(span.noise if span.edge == 0 else 0.0, torch.finfo(F64).eps)


def split_at_gap(residuals: torch.Tensor, floor: float, rank: int) -> tuple[float, float]:
    """(largest present, smallest absent) residual, split at the largest gap of the sorted log residuals.

    Layer 1 has no fixed count of present candidates: besides the batch's own (token, position)
    pairs, a LayerNorm without bias makes LN(e_v + p_i) a combination of LN(e_v + p_j),
    LN(e_w + p_i) and LN(e_w + p_j) whenever those three are present, so such "completions"
    pass too (layer 2 rejects them). What separates present from absent is the gap between
    residuals at the noise level and residuals of order one; residuals below ``floor`` (the noise
    ratio, the finest the gradient resolves) count as equal. Present candidates pair one of the
    batch's tokens (at most about ``rank`` distinct ones; 2 * rank allows for dependent vectors)
    with a position, so the gap lies among the 2 * (rank + 1) * positions smallest residuals.
    """
    flat = residuals.flatten()
    keep = min(flat.numel(), 2 * (rank + 1) * residuals.shape[1])
    low = flat.topk(keep, largest=False).values.clamp_min(max(floor, torch.finfo(F64).eps)).log()
    gaps = low[1:] - low[:-1]
    if gaps.numel() == 0:
        return float(low[0].exp()), 1.0
    cut = int(gaps.argmax())
    return float(low[cut].exp()), float(low[cut + 1].exp())
