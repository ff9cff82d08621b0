"""Layer 1: the span check of every vocabulary token at every position, in Gram form."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fedaudit.attacks.dager.span import CHUNK_BYTES, F64, Span


@dataclass
class FirstInputs:
    """Layer-1 query inputs are norm(tokens[v] + positions[i]), norm = LayerNorm or RMSNorm."""

    tokens: torch.Tensor
    """(V, d) token embeddings."""
    positions: torch.Tensor
    """(p, d) position vectors (one zero row for rotary models, whose first input has none)."""
    weight: torch.Tensor
    bias: torch.Tensor | None
    eps: float
    centered: bool
    """LayerNorm subtracts the mean; RMSNorm does not."""

    def materialize(self, input_ids: torch.Tensor) -> torch.Tensor:
        """norm(tokens[v] + positions[i]) for a (B, n) batch, formed explicitly (what the Gram form avoids)."""
        z = self.tokens[input_ids].to(F64)
        z = z + self.positions[torch.arange(input_ids.shape[1]) % self.positions.shape[0]].to(z)
        if self.centered:
            z = z - z.mean(-1, keepdim=True)
        x = z / ((z * z).mean(-1, keepdim=True) + self.eps).sqrt() * self.weight.to(z)
        return x + self.bias.to(z) if self.bias is not None else x


@dataclass
class Layer1Terms:
    """The span-independent part of the layer-1 check (see ``layer1_residuals``).

    It depends only on the global model's first layer (and LoRA's A), so every client of a round
    shares it: ``Dager`` keeps the last one and reuses it while those weights are unchanged.
    """

    G: torch.Tensor
    """(p, k) M(gamma * c(p_i)) per position."""
    b: torch.Tensor
    """(k,) M beta."""
    reader: torch.Tensor | None
    """(d, k) A with F = e A for the raw token e, when chunks store e itself (no LoRA map), else None."""
    chunks: Any
    """Per chunk of tokens: the raw embeddings (or F = M(gamma * c(e)) with a LoRA map), 1/s,
    1/s^2 and -1/|x|^2 (0 for a zero input; rows x p each): the reciprocals once per round, so
    that each client's check is multiplications only; a list when kept, else a one-pass
    generator (bounded memory for very large vocabularies)."""


def layer1_terms(inputs: FirstInputs, input_map: torch.Tensor | None, device: torch.device, keep: bool) -> Layer1Terms:
    """Per-token and per-position terms of the layer-1 residual, float64, in memory-bounded chunks.

    Centering is a symmetric projection C, so c(e).y = e.C y: every inner product of a centered,
    scaled token F = M(gamma * c(e)) = e A (A = C diag(gamma) M^T) with a fixed vector is one
    column of a single product of the raw embeddings, E @ [C P^T, A G^T, A b, 1/d, gamma^2]. Only
    |e|^2 and sum(gamma^2 e^2) need an elementwise pass, so each token row is read about three
    times instead of once per term.
    """
    d = inputs.tokens.shape[1]
    center = (lambda t: t - t.mean(-1, keepdim=True)) if inputs.centered else (lambda t: t)
    gamma = inputs.weight.to(device, F64)
    P = center(inputs.positions.to(device, F64))
    G = P * gamma
    b = inputs.bias.to(device, F64) if inputs.bias is not None else torch.zeros(d, dtype=F64, device=device)
    M = None if input_map is None else input_map.to(device, F64)
    # A = C diag(gamma) M^T (C centers along the d axis; M = I without LoRA)
    A = center((gamma[:, None] * (torch.eye(d, dtype=F64, device=device) if M is None else M.T)).T).T
    if M is not None:
        G, b = G @ M.T, b @ M.T
    p2, G2, Gb, b2 = (P * P).sum(-1), (G * G).sum(-1), G @ b, float(b @ b)
    npos = P.shape[0]
    reads = torch.cat(
        [
            P.T,
            A @ G.T,
            (A @ b)[:, None],
            torch.full((d, 1), 1.0 / d, dtype=F64, device=device),
            (gamma * gamma)[:, None],
        ],
        dim=1,
    )
    squares = torch.stack([torch.ones_like(gamma), gamma * gamma], dim=1)
    g2sum = float((gamma * gamma).sum())
    rows = max(256, CHUNK_BYTES // (8 * (2 * d + 4 * npos)))

    def chunk(start: int) -> tuple[torch.Tensor, ...]:
        E = inputs.tokens[start : start + rows].to(device, F64)
        read = E @ reads
        EP, FG, Fb = read[:, :npos], read[:, npos : 2 * npos], read[:, 2 * npos]
        mean, g2e = (read[:, 2 * npos + 1], read[:, 2 * npos + 2]) if inputs.centered else (0.0, read[:, 2 * npos + 2])
        e2, g2e2 = ((E * E) @ squares).unbind(1)
        c2 = e2 - d * mean**2 if inputs.centered else e2
        s = ((c2[:, None] + 2 * EP + p2) / d + inputs.eps).sqrt()
        if M is None:  # |gamma * (e - mean)|^2 from the two passes
            F2, stored = g2e2 - 2 * mean * g2e + mean**2 * g2sum, E
        else:
            stored = E @ A
            F2 = (stored * stored).sum(-1)
        xx = (F2[:, None] + 2 * FG + G2) / s**2 + 2 * (Fb[:, None] + Gb) / s + b2
        # A zero input (e.g. a zeroed padding embedding) adds nothing to any gradient: never
        # "present" (see Span.residual); -1/|x|^2 = 0 makes its residual 1.
        neg_inv_xx = torch.where(xx > 0, -1.0 / xx.clamp_min(torch.finfo(F64).tiny), 0.0)
        return stored, 1.0 / s, s.pow(-2), neg_inv_xx

    chunks = (chunk(start) for start in range(0, inputs.tokens.shape[0], rows))
    return Layer1Terms(G=G, b=b, reader=A if M is None else None, chunks=list(chunks) if keep else chunks)


def layer1_residuals(span: Span, terms: Layer1Terms) -> torch.Tensor:
    """Residual (eq. 5) of norm(tokens[v] + positions[i]) for every (v, i): (V, p), float64.

    With z = e + p, c(z) its centered form (or z itself for RMSNorm) and s(z)^2 = |c(z)|^2/d + eps,
    the input is x = (gamma*c(e) + gamma*c(p)) / s + beta; after the input map M (identity or
    LoRA's A) write F = M(gamma*c(e)), G = M(gamma*c(p)), b = M beta. Then

        |x|^2      = (|F|^2 + 2 F.G + |G|^2) / s^2 + 2 (F.b + G.b) / s + |b|^2
        |U^T x|^2  = the same with f = U^T F, g = U^T G, c = U^T b
        residual^2 = (|x|^2 - |U^T x|^2) / |x|^2

    and s^2 needs c(e).c(p): every term is a per-token or per-position quantity or one
    (V x k) @ (k x p) product, so no (V x p x d) tensor is ever formed. Everything but the terms
    with U is the same for every client of a round (``Layer1Terms``); per client the check costs
    one (V x k) @ (k x r) product and a few in-place (V x p) passes:
    residual^2 = 1 - |U^T x|^2 / |x|^2 with the reciprocals of s and |x|^2 kept in the terms.
    """
    U = span.basis
    g, c = terms.G @ U, terms.b @ U
    g2, gc, c2 = (g * g).sum(-1), g @ c, float(c @ c)
    read = U if terms.reader is None else terms.reader @ U  # f = F U = e (A U)
    kept = isinstance(terms.chunks, list)  # sizes known: write into one result, no concatenation
    rows = sum(chunk[0].shape[0] for chunk in terms.chunks) if kept else 0
    result = torch.empty(rows, g.shape[0], dtype=F64, device=U.device) if kept else None
    out, start = [], 0
    for stored, inv_s, inv_s2, neg_inv_xx in terms.chunks:
        f = stored @ read
        pp = torch.addmm(g2, f, g.T, alpha=2, out=None if result is None else result[start : start + f.shape[0]])
        start += f.shape[0]
        pp.add_((f * f).sum(-1, keepdim=True)).mul_(inv_s2)  # (|f|^2 + 2 f.g + |g|^2) / s^2
        pp.addcmul_(inv_s, (f @ c)[:, None], value=2).addcmul_(inv_s, gc, value=2).add_(c2)
        out.append(pp.mul_(neg_inv_xx).add_(1).clamp_min_(0).sqrt_())
    return result if result is not None else torch.cat(out)
