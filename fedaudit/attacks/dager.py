"""DAGER: exact text recovery from the gradients of a transformer's attention query projections.

Petrov, Dimitrov, Baader, Müller, Vechev, "DAGER: Exact Gradient Inversion for Large Language
Models", NeurIPS 2024. Equation numbers below refer to that paper.

The idea in four lines:

* A linear layer Y = X W has dL/dW = X^T dL/dY, so while the batch holds fewer than d token
  vectors, the input-side space of the query weight's gradient is exactly span{rows of X}
  (Lemma 5.1); an SVD gives an orthonormal basis U of it.
* A vector x is an input of that layer iff its residual ||x - U U^T x|| / ||x|| is ~0 (eq. 5).
* Layer 1 reads norm(E[v] + P[i]) for token v at position i (no position term for rotary
  models), so the check runs over the vocabulary and gives the candidate tokens per position.
* Layer 2 reads a function of the whole prefix (decoders) or sentence (encoders): decoders grow
  sentences left to right keeping extensions that pass the layer-2 check (Sec. 5.2); encoders
  search the per-position candidates jointly, scored on layer 2.

Thresholds come from the data: the rank is the largest gap of the float64 singular values; a
true input's residual is of the order of the noise ratio nu = s_{r+1}/s_r (Davis-Kahan); absent
inputs calibrate the other side (delta): at layer 1 the (r+1)-th smallest residual over all
vocabulary x position candidates, of which exactly r are present; at layer 2 random token
sequences, which are absent with overwhelming probability. The threshold is sqrt(nu * delta).

What this module adds over the reference implementation: the layer-1 check of every (token,
position) pair as Gram terms instead of materialized LayerNorm outputs (one V x d x (r + p)
product), layer-2 extensions batched over all prefixes with their first-layer keys and values
cached, the model's own forward observed through hooks (no patched transformers code), and
no per-batch-size tolerances.

Protocols. FedSGD gives the batch gradient: the check is exact up to float rounding. FedAvg
gives W_E - W_0 = -lr * sum_s g_s over S local steps, whose span is the union of the inputs at
every step's weights. Over E > 1 local epochs each input is seen at E weights: to first order in
the weight drift that is the input plus one drift direction, so the span keeps twice the
inputs' rank (``estimate_span(drift=True)``).
Candidates are formed at the midpoint weights W_0 + (W_E - W_0)/2, so a true input sits as far
from the span as the weights moved between its step and the midpoint; the layer-2 threshold is
calibrated on that distance as measured on the first position (``Dager._attack``). Approximate:
such results are ``partial`` with the reason. LoRA: see ``_input_span``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fedaudit.attacks.base import Attack, Budget, BudgetExceeded, Observation, Reconstruction
from fedaudit.attacks.spectral import gap_rank, left_singular, noise_edge, rank_above_noise, spectral_rank

if TYPE_CHECKING:
    from fedaudit.models.adapters import AttentionInput

F64 = torch.float64
CHUNK_BYTES = 256 * 2**20
"""Working-set bound for one chunk of the layer-1 check or of a layer-2 extension batch."""
KEEP_BYTES = 2 * 2**30
"""Largest layer-1 term set kept between runs (GPT-2: about 0.4 GiB)."""


# ---------------------------------------------------------------- the span check

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


def estimate_span(gradient: torch.Tensor, noise_floor: float, input_map: torch.Tensor | None = None,
                  source: str = "", min_rank: int = 0, noise_std: float = 0.0, drift: bool = False) -> Span:
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
    """
    g = gradient.to(F64)
    if not torch.isfinite(g).all():
        raise ValueError(f"the gradient of {source or 'the query projection'} contains NaN or inf")
    u, s, _ = left_singular(g)
    rel = s / s[0]
    width = int(g.shape[0])
    if noise_std > 0:
        edge = noise_edge(noise_std, *g.shape)
        rank = rank_above_noise(s, edge)
        if rank == 0:
            raise NoiseDominates(f"every singular value of the gradient of {source or 'the query projection'} "
                                 f"(largest {float(s[0]):.3g}) lies below the noise edge {edge:.3g}")
        noise = min(1.0, edge / float(s[rank - 1]))
        return Span(basis=u[:, :rank].contiguous(), rank=rank, width=width, noise=noise,
                    input_map=input_map, source=source)
    rank = gap_rank(s, noise_floor, min_rank, width // 2) if drift else spectral_rank(s, noise_floor, min_rank)
    if rank == 0:
        raise ValueError(f"the gradient of {source or 'the query projection'} is zero")
    kept = max(rank, min(2 * rank, width - rank)) if drift else rank
    noise = float(rel[kept] / rel[rank - 1]) if kept < s.numel() else 1.0
    return Span(basis=u[:, :kept].contiguous(), rank=rank, width=width, noise=noise,
                input_map=input_map, source=source)


class NoiseDominates(ValueError):
    """The update's protocol noise hides every direction of a gradient the attack needs."""


def threshold(span: Span, absent: float, present: float = 0.0) -> float:
    """Geometric middle between the residual a true input can show (the span's noise ratio, or
    ``present`` when measured larger) and the closest absent one."""
    return math.sqrt(max(span.noise, present, torch.finfo(F64).eps) * max(absent, torch.finfo(F64).eps))


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
    values = residuals.flatten().clamp_min(max(floor, torch.finfo(F64).eps)).log()
    keep = min(values.numel(), 2 * (rank + 1) * residuals.shape[1])
    low = values.topk(keep, largest=False).values
    gaps = low[1:] - low[:-1]
    if gaps.numel() == 0:
        return float(low[0].exp()), 1.0
    cut = int(gaps.argmax())
    return float(low[cut].exp()), float(low[cut + 1].exp())


# ---------------------------------------------------------------- layer 1: every token, every position

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
    """Per chunk of tokens: the raw embeddings (or F = M(gamma * c(e)) with a LoRA map), s and
    |x|^2 (rows x p each); a list when kept, else a one-pass generator (bounded memory for very
    large vocabularies)."""


def layer1_terms(inputs: FirstInputs, input_map: torch.Tensor | None, device: torch.device,
                 keep: bool) -> Layer1Terms:
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
    reads = torch.cat([P.T, A @ G.T, (A @ b)[:, None], torch.full((d, 1), 1.0 / d, dtype=F64, device=device),
                       (gamma * gamma)[:, None]], dim=1)
    squares = torch.stack([torch.ones_like(gamma), gamma * gamma], dim=1)
    g2sum = float((gamma * gamma).sum())
    rows = max(256, CHUNK_BYTES // (8 * (2 * d + 4 * npos)))

    def chunk(start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        E = inputs.tokens[start:start + rows].to(device, F64)
        read = E @ reads
        EP, FG, Fb = read[:, :npos], read[:, npos:2 * npos], read[:, 2 * npos]
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
        return stored, s, xx

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
    one (V x k) @ (k x r) product and a few (V x p) elementwise passes.
    """
    U = span.basis
    g, c = terms.G @ U, terms.b @ U
    g2, gc, c2 = (g * g).sum(-1), g @ c, float(c @ c)
    read = U if terms.reader is None else terms.reader @ U  # f = F U = e (A U)
    out = []
    for stored, s, xx in terms.chunks:
        f = stored @ read
        pp = ((f * f).sum(-1, keepdim=True) + 2 * f @ g.T + g2) / s**2 + 2 * ((f @ c)[:, None] + gc) / s + c2
        rel = ((xx - pp).clamp_min(0) / xx.clamp_min(torch.finfo(F64).tiny)).sqrt()
        out.append(torch.where(xx > 0, rel, 1.0))  # a zero input is never "present" (see Span.residual)
    return torch.cat(out)


# ---------------------------------------------------------------- layer 2: the model's own forward, observed

class _Captured(Exception):
    def __init__(self, value: torch.Tensor) -> None:
        self.value = value


@dataclass
class Layer2Probe:
    """Runs the model up to the second query projection and returns what that projection reads.

    Decoders pass first-layer keys and values (``cache``) so that extending a prefix by one token
    costs one token's forward, whatever the prefix length.
    """

    model: nn.Module
    module: str

    @contextmanager
    def _hooked(self) -> Iterator[None]:
        def stop(_module: nn.Module, args: tuple) -> None:
            raise _Captured(args[0])

        handle = self.model.get_submodule(self.module).register_forward_pre_hook(stop)
        try:
            yield
        finally:
            handle.remove()

    def inputs(self, input_ids: torch.Tensor, cache: Any = None) -> torch.Tensor:
        with self._hooked(), torch.no_grad():
            try:
                self.model(input_ids=input_ids, attention_mask=None if cache is not None else torch.ones_like(input_ids),
                           past_key_values=cache, use_cache=cache is not None)
            except _Captured as captured:
                return captured.value
        raise RuntimeError(f"the forward pass never reached {self.module}")


def _cache(keys: torch.Tensor | None = None, values: torch.Tensor | None = None) -> Any:
    """First-layer keys and values of some prefixes (empty without them), as the model's cache."""
    from transformers import DynamicCache

    return DynamicCache() if keys is None else DynamicCache(ddp_cache_data=[(keys, values)])


# ---------------------------------------------------------------- the attack

@dataclass
class _Setup:
    span1: Span
    span2: Span
    model: nn.Module
    probe: Layer2Probe
    first: FirstInputs
    max_len: int
    vocab: int
    device: torch.device


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and bool(torch.equal(a, b))
    return a == b if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor) else False


class Dager(Attack):
    """DAGER over the first two attention layers of GPT-2, LLaMA and BERT families (FedSGD, FedAvg, LoRA)."""

    name = "dager"

    def __init__(self, options: Any = None, device: str = "auto") -> None:
        super().__init__(options, device)
        self._kept: tuple[tuple, Layer1Terms] | None = None
        """The last layer-1 terms with the weights they were computed from (shared within a round)."""

    # ------------------------------------------------------------ applicability

    def applicable(self, observation: Observation) -> tuple[bool, str]:
        adapter = observation.model.adapter
        if adapter.first_input is None or len(adapter.attention_inputs) < 2:
            return False, "DAGER needs two attention layers and a known first-layer input (no adapter for this model)"
        if observation.model.task == "classification" and adapter.num_layers < 3:
            return False, (f"the model has {adapter.num_layers} layers: in a classifier the second layer's queries "
                           "reach the loss only through a third attention layer (otherwise only the pooled token's do)")
        for layer, entry in enumerate(adapter.attention_inputs, start=1):
            names = [n for p in entry.projections for n in (p.weight, p.lora_a) if n]
            if not any(n in observation.update for n in names):
                return False, f"the layer-{layer} attention projections ({entry.module}) are frozen and have no LoRA factors"
        return True, ""

    # ------------------------------------------------------------ setup

    def _input_span(self, observation: Observation, entry: AttentionInput, floor: float, layer: int,
                    min_rank: int = 0) -> Span:
        """The span of one attention layer's inputs, from the full weights or from LoRA factors.

        Full weights: the query, key and value gradients side by side (all read the same input).
        LoRA adds B A x to a projection. dL/dA = s B^T dY^T X lies in span(X) but has rank <= r;
        dL/dB = s dY^T (X A^T) sees the inputs only through A (r dimensions). While B = 0 (peft's
        initialization, so in round 1) dL/dA is exactly zero and dL/dB is used: the check runs on
        A x in R^r. Once B != 0, dL/dA spans the inputs in full dimension. Either way the factors
        separate inputs only while the batch holds fewer than r token vectors (r > B*n).
        """
        noise = observation.gradient_noise_std
        drift = observation.protocol.mode == "fedavg" and observation.protocol.local_epochs > 1
        for proj in entry.projections:
            if proj.lora_a is None or proj.lora_a not in observation.update:
                continue
            if not bool(observation.global_weights[proj.lora_b].any()):
                a = observation.global_weights[proj.lora_a].to(self.device, F64)
                grad_b = observation.gradient(proj.lora_b)  # (out, r)
                return estimate_span(grad_b.T.to(self.device), floor, input_map=a, noise_std=noise, drift=drift,
                                     source=f"{proj.lora_b} (layer {layer}; LoRA B = 0, so inputs are seen as A x)")
            return estimate_span(observation.gradient(proj.lora_a).T.to(self.device), floor, noise_std=noise, drift=drift,
                                 source=f"{proj.lora_a} (layer {layer})")
        grads = [observation.gradient(p.weight) for p in entry.projections if p.weight in observation.update]
        grads = [g if p.in_features_first else g.T for p, g in zip(entry.projections, grads)]
        names = ", ".join(p.weight for p in entry.projections if p.weight in observation.update)
        return estimate_span(torch.cat(grads, dim=1).to(self.device), floor, source=f"{names} (layer {layer})",
                             min_rank=min_rank, noise_std=noise, drift=drift)

    def _model(self, observation: Observation) -> nn.Module:
        """A private copy of the global model, or for FedAvg of the midpoint of the local
        trajectory W_0 + (W_E - W_0) / 2 (see module doc)."""
        weights = dict(observation.global_weights)
        if not observation.exact_gradient:
            weights.update({name: weights[name].double() + 0.5 * delta for name, delta in observation.update.items()})
        return observation.model_at(weights, self.device).model

    def _first_inputs(self, model: nn.Module, observation: Observation, max_len: int) -> FirstInputs:
        """A snapshot of the first layer's inputs (copies: the layer-1 terms computed from them
        may be kept for the next observation, ``_layer1_terms``, and must not hold on to the
        whole private model)."""
        spec = observation.model.adapter.first_input
        params = dict(model.named_parameters())
        tokens = params[observation.model.adapter.embedding].detach().clone()
        d = tokens.shape[1]
        if spec.positions is not None:
            positions = params[spec.positions].detach()[:max_len].to(F64, copy=True)
        else:
            positions = torch.zeros(1, d, dtype=F64, device=tokens.device)
        if spec.offset is not None:
            positions = positions + params[spec.offset].detach()[0].to(F64)
        return FirstInputs(tokens=tokens, positions=positions, weight=params[spec.norm_weight].detach().clone(),
                           bias=params[spec.norm_bias].detach().clone() if spec.norm_bias else None,
                           eps=spec.norm_eps, centered=spec.norm_kind == "layernorm")

    @staticmethod
    def _rounding_floor(observation: Observation) -> float:
        """Relative rounding noise of the update as it arrived.

        FedSGD sends the gradient in the model's dtype: eps of that dtype. FedAvg sends weights;
        their difference carries half an ulp of each weight, which relative to the update is
        eps * |W| / |W_E - W_0| (largest entries), far above eps when lr is small.
        """
        eps = float(torch.finfo(observation.model.dtype).eps)
        if observation.exact_gradient and observation.protocol.mode == "fedsgd":
            return eps
        weights = max(float(w.abs().max()) for w in observation.global_weights.values() if w.numel())
        update = max(float(u.abs().max()) for u in observation.update.values() if u.numel())
        return min(1.0, eps * weights / max(update, torch.finfo(F64).tiny))

    def _setup(self, observation: Observation) -> _Setup:
        adapter = observation.model.adapter
        floor = self._rounding_floor(observation)
        span1 = self._input_span(observation, adapter.attention_inputs[0], floor, 1)
        # Layer 2 reads one vector per distinct prefix (decoders) or position (encoders): never
        # fewer than the distinct (token, position) inputs layer 1 saw.
        span2 = self._input_span(observation, adapter.attention_inputs[1], floor, 2, min_rank=span1.rank)
        span1.centered = span2.centered = adapter.first_input.norm_kind == "layernorm"
        model = self._model(observation)
        max_len = observation.protocol.max_seq_len
        spec = adapter.first_input
        if spec.positions is not None:
            max_len = min(max_len, int(model.get_parameter(spec.positions).shape[0]))
        first = self._first_inputs(model, observation, max_len)
        return _Setup(span1=span1, span2=span2, model=model, probe=Layer2Probe(model, adapter.attention_inputs[1].module),
                      first=first, max_len=max_len, vocab=int(first.tokens.shape[0]), device=self.device)

    # ------------------------------------------------------------ run

    def run(self, observation: Observation, budget: Budget) -> Reconstruction:
        started = time.perf_counter()
        try:
            setup = self._setup(observation)
        except NoiseDominates as err:
            return Reconstruction("failed", f"protocol noise of std {observation.gradient_noise_std:.3g} per "
                                  f"gradient entry: {err}", sequences=[],
                                  diagnostics={"noise_std": observation.gradient_noise_std})
        return self._attack(observation, setup, budget, time.perf_counter() - started)

    def _attack(self, observation: Observation, setup: _Setup, budget: Budget, setup_seconds: float) -> Reconstruction:
        s1, s2 = setup.span1, setup.span2
        d = int(setup.first.tokens.shape[1])
        diag: dict[str, Any] = {}
        diag.update(vocabulary=setup.vocab, positions_checked=int(setup.first.positions.shape[0]),
                    rank_layer1=s1.rank, rank_layer2=s2.rank, tokens_implied=s1.rank, model_width=d,
                    basis_layer1=int(s1.basis.shape[1]), basis_layer2=int(s2.basis.shape[1]),
                    check_width=s1.width, span_source=s1.source, noise_layer1=s1.noise, noise_layer2=s2.noise,
                    device=str(self.device))
        if observation.gradient_noise_std > 0:
            diag.update(noise_std=observation.gradient_noise_std)
        expected = observation.protocol.num_examples
        if s1.full or s2.full:
            return Reconstruction("partial", (
                f"B*n >= d: the attention-input gradients fill the space their inputs can occupy (rank "
                f"{s1.rank}/{s2.rank} of width {s1.width}; at least that many token vectors in {expected} examples), "
                "so every input passes the span check and nothing can be singled out; "
                "smaller batches, shorter sequences or a wider layer (or a larger LoRA r) would leak"
                + ("" if observation.exact_gradient else
                   f"; over {observation.protocol.local_steps} local steps the weights drift between steps, which "
                   "spreads each input over more directions (a smaller lr or fewer steps keeps the span low)")),
                diagnostics=diag)

        # layer 1: candidates per position
        t1 = time.perf_counter()
        terms, reused = self._layer1_terms(setup)
        t_terms = time.perf_counter()
        residuals = layer1_residuals(s1, terms)
        present1, absent1 = split_at_gap(residuals, floor=s1.noise, rank=s1.rank)
        tau1 = math.sqrt(present1 * absent1)
        passing = residuals < tau1
        candidates = [torch.nonzero(passing[:, i]).flatten() for i in range(passing.shape[1])]
        tokens = set(torch.nonzero(passing.any(1)).flatten().tolist())
        diag.update(threshold_layer1=tau1, closest_absent_layer1=absent1, farthest_present_layer1=present1,
                    layer1_passing=int(passing.sum()),
                    layer1_terms_reused=reused, seconds_setup=setup_seconds,
                    seconds_layer1_terms=0.0 if reused else t_terms - t1, seconds_layer1=time.perf_counter() - t1)
        if not tokens:
            return Reconstruction("failed", "no vocabulary token passes the layer-1 span check", diagnostics=diag)
        if absent1 <= present1:  # every residual sits at the noise ratio: nothing separates present from absent
            return Reconstruction("failed", (
                f"the layer-1 span check separates nothing: every (token, position) residual lies within the noise "
                f"ratio {s1.noise:.3g} of the span ({int(passing.sum())} pass), so no sentence can be singled out"
                + (f"; the update carries protocol noise (std {observation.gradient_noise_std:.3g} per gradient entry)"
                   if observation.gradient_noise_std > 0 else "")), sequences=[], diagnostics=diag)

        # layer 2: calibrate on random sequences, then search
        random2 = self._random_layer2_residuals(setup)
        absent2 = float(random2.min()) if random2.numel() else 1.0
        tau2 = threshold(s2, absent2)
        rotary = observation.model.adapter.first_input.positions is None
        if not observation.exact_gradient:
            # Several local steps: candidates are formed at the midpoint weights, while each input
            # was seen at the weights of its own steps, so a true input sits as far from the span
            # as the weights moved, which the spectrum does not show. Calibrate on the data.
            # Decoders: position 0 reads token 0 alone, so its layer-1 candidates (first tokens,
            # and completions) and the random sequences (absent) split at the largest gap of their
            # layer-2 residuals; the side below it is how far true inputs sit. Encoders read the
            # whole sentence at every position: the layer-1 present side is the best measure.
            present = present1
            if observation.model.adapter.is_decoder and candidates[0].numel():
                first = self._first_position_residuals(setup, candidates[0])
                present, _ = split_at_gap(torch.cat([first, random2]), floor=s2.noise, rank=int(first.numel()))
            tau2 = threshold(s2, absent2, present=present)
            diag.update(farthest_present_layer2=present)
        diag.update(threshold_layer2=tau2, closest_absent_layer2=absent2)
        search = _DecoderSearch if observation.model.adapter.is_decoder else _EncoderSearch
        finder = search(setup, tau2, candidates, rotary, observation.model.tokenizer, budget, expected)
        t2 = time.perf_counter()
        try:
            finder.run()
            ran_out = False
        except BudgetExceeded:
            ran_out = True
        diag.update(seconds_layer2=time.perf_counter() - t2, explained_layer2=finder.explained(),
                    sentences_found=len(finder.found))
        sequences = finder.best()
        reasons = []
        if ran_out:
            reasons.append(f"the time budget ran out during the layer-2 search ({len(finder.found)} sentences verified)")
        if finder.explained() < s2.rank:
            reasons.append(f"the verified sentences explain {finder.explained()} of the {s2.rank} layer-2 input "
                           "vectors the gradient holds" + ("" if observation.exact_gradient else
                                                           " (under drift that rank is an upper bound)"))
        if len(finder.found) > expected:
            reasons.append(f"{len(finder.found)} sentences pass every check but the client reports {expected} "
                           "examples: the checks let some false sentences through; the best are returned")
        elif len(finder.found) < expected and finder.explained() >= s2.rank:
            reasons.append(f"{expected - len(finder.found)} of the {expected} examples repeat a recovered sentence "
                           "(repeats add no new vectors to the span, so their count is not observable)")
        elif len(finder.found) < expected:
            reasons.append(f"{len(finder.found)} of {expected} sentences verified")
        if not observation.exact_gradient:
            reasons.append(f"FedAvg over {observation.protocol.local_steps} local steps: candidates are formed at the "
                           "midpoint weights and checked against a span and thresholds widened for the weights' drift "
                           "(approximate)")
        if observation.gradient_noise_std > 0 and reasons:  # the noise explains what fell short
            reasons.append(f"the update carries protocol noise (std {observation.gradient_noise_std:.3g} per gradient "
                           f"entry): ranks {s1.rank}/{s2.rank} count the directions above the noise edge, and inputs "
                           "weaker than the noise are lost in it")
        if observation.model.task == "causal-lm":
            reasons.append("causal LM: a sequence's last token predicts nothing scored, so its query gets no "
                           "gradient and sentences are recovered without it")
        status = "exact" if not reasons and sequences else ("partial" if sequences else "failed")
        if status == "exact":
            reason = (f"all {len(sequences)} sentences pass the layer-1 and layer-2 span checks and explain all "
                      f"{s2.rank} directions of the layer-2 gradient")
        else:
            reason = "; ".join(reasons) or "no sentence passed the layer-2 span check"
        return Reconstruction(status, reason, tokens=tokens, sequences=sequences, diagnostics=diag)

    def _layer1_terms(self, setup: _Setup) -> tuple[Layer1Terms, bool]:
        """The layer-1 terms for this model: reused when its first layer equals the last one's."""
        first, input_map = setup.first, setup.span1.input_map
        key = (first.tokens, first.positions, first.weight, first.bias, input_map, first.eps, first.centered)
        kept = self._kept
        if kept is not None and all(_same(a, b) for a, b in zip(kept[0], key)):
            return kept[1], True
        k = first.tokens.shape[1] if input_map is None else input_map.shape[0]
        keep = first.tokens.shape[0] * (k + 2 * first.positions.shape[0]) * 8 <= KEEP_BYTES
        terms = layer1_terms(first, input_map, setup.device, keep)
        if keep:
            self._kept = (key, terms)
        return terms, False

    @staticmethod
    def _first_position_residuals(setup: _Setup, first: torch.Tensor) -> torch.Tensor:
        inputs = setup.probe.inputs(first.to(setup.device)[:, None], _cache())[:, 0]
        return setup.span2.residual(inputs)[:, None]

    def _random_layer2_residuals(self, setup: _Setup, samples: int = 64, length: int = 4) -> torch.Tensor:
        """Layer-2 residuals of random token sequences at positions >= 1 (absent w.h.p.), as a column."""
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(setup.vocab, (samples, min(length, setup.max_len)), generator=gen).to(setup.device)
        x = setup.probe.inputs(ids)[:, 1:]
        return setup.span2.residual(x).reshape(-1, 1)


# ---------------------------------------------------------------- sentence search

class _Search:
    def __init__(self, setup: _Setup, tau: float, candidates: list[torch.Tensor], rotary: bool,
                 tokenizer: Any, budget: Budget, limit: int) -> None:
        self.setup, self.tau, self.rotary, self.tokenizer, self.budget = setup, tau, rotary, tokenizer, budget
        self.limit = max(1, limit)
        """The client's example count: no length has more distinct prefixes than that."""
        if rotary:  # one position-free token set serves every position
            pool = candidates[0]
            self.candidates = [pool] * setup.max_len
        else:
            self.candidates = candidates
        self.found: list[tuple[list[int], float]] = []
        """Verified sentences with their largest layer-2 residual."""
        self.rejected: list[tuple[list[int], float]] = []
        """Best unverified guesses (encoders), used only to fill up to B when verification falls short."""

    def best(self) -> list[list[int]]:
        """At most ``limit`` distinct sentences: verified ones first, each group closest to the span first."""
        ranked = sorted(self.found, key=lambda item: item[1])
        ranked += sorted(self.rejected, key=lambda item: item[1])
        out: list[list[int]] = []
        for seq, _ in ranked:
            if seq not in out:
                out.append(seq)
        return out[: self.limit]

    def _cap(self, res: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """No length has more distinct prefixes than examples: keep the ``limit`` closest to the span."""
        if int(keep.sum()) > self.limit:
            keep = keep & (res <= res[keep].kthvalue(self.limit).values)
        return keep


class _DecoderSearch(_Search):
    """Grow every prefix by every candidate of the next position in one batched call (Sec. 5.2)."""

    def run(self) -> None:
        setup, device = self.setup, self.setup.device
        first = self.candidates[0].to(device)
        if first.numel() == 0:
            return
        cache = _cache()
        res = setup.span2.residual(setup.probe.inputs(first[:, None], cache)[:, 0])
        keys, values = cache.layers[0].keys, cache.layers[0].values
        keep = self._cap(res, res < self.tau)
        prefixes = first[keep][:, None]
        worst = res[keep]
        keys, values = keys[keep], values[keep]
        for t in range(1, setup.max_len):
            self.budget.check()
            cand = self.candidates[t].to(device)
            if prefixes.shape[0] == 0:
                break
            if cand.numel() == 0:
                self._finish(prefixes, worst)
                return
            parent, token, res, k_new, v_new = self._extend(keys, values, cand)
            ok = res < self.tau
            if self.rotary:
                # With rotary positions, attention over copies of one token returns that token's
                # value at every position, so "A A ... A" reads exactly like "A" at layer 2 and
                # always passes: such repeats are unobservable and not grown.
                uniform = (prefixes == prefixes[:, :1]).all(1)
                ok &= ~(uniform[parent] & (token == prefixes[parent, 0]))
            ok = self._cap(res, ok)
            ended = torch.ones(prefixes.shape[0], dtype=torch.bool, device=device)
            ended[parent[ok]] = False
            self._finish(prefixes[ended], worst[ended])
            parent, token, res = parent[ok], token[ok], res[ok]
            prefixes = torch.cat([prefixes[parent], token[:, None]], dim=1)
            worst = torch.maximum(worst[parent], res)
            keys, values = k_new[ok], v_new[ok]
        self._finish(prefixes, worst)

    def _extend(self, keys: torch.Tensor, values: torch.Tensor, cand: torch.Tensor):
        """Every prefix x every candidate, in memory-bounded chunks over cached first-layer states."""
        n_pref, n_cand = keys.shape[0], cand.numel()
        parent = torch.arange(n_pref, device=cand.device).repeat_interleave(n_cand)
        token = cand.repeat(n_pref)
        row_bytes = 3 * (keys[0].numel() + values[0].numel()) * keys.element_size() + 64 * keys.shape[1] * keys.shape[-1] * 8
        rows = max(1, CHUNK_BYTES // row_bytes)
        res, ks, vs = [], [], []
        for start in range(0, parent.numel(), rows):
            self.budget.check()
            p, tok = parent[start:start + rows], token[start:start + rows]
            cache = _cache(keys[p], values[p])
            x = self.setup.probe.inputs(tok[:, None], cache)
            res.append(self.setup.span2.residual(x[:, -1]))
            layer = cache.layers[0]
            ks.append(layer.keys)
            vs.append(layer.values)
        return parent, token, torch.cat(res), torch.cat(ks), torch.cat(vs)

    def _finish(self, prefixes: torch.Tensor, worst: torch.Tensor) -> None:
        for seq, w in zip(prefixes.tolist(), worst.tolist()):
            self.found.append((seq, w))

    def explained(self) -> int:
        """Distinct prefixes of the verified sentences: each is one distinct layer-2 input vector."""
        return len({tuple(seq[:t]) for seq, _ in self.found for t in range(1, len(seq) + 1)})


class _EncoderSearch(_Search):
    """Bidirectional layer 2 sees the whole sentence: search the per-position candidates jointly.

    For each sentence length (the positions where the separator token is a candidate), start
    from a guess built from candidates no verified sentence explains yet, then move one
    position at a time to the candidate that lowers the summed log layer-2 residual most (all
    single-position changes scored in one batched forward), until no move helps. A sentence
    whose every position passes the layer-2 check is verified. Restarts continue until the
    verified sentences explain the layer-2 rank or the budget runs out.
    """

    def run(self) -> None:
        lengths = self._lengths()
        gen = torch.Generator().manual_seed(0)
        stalls = {n: 0 for n in lengths}
        while self.explained() < self.setup.span2.rank and lengths:
            self.budget.check()
            n = lengths[0]
            seq, worst = self._descend(self._start(n, gen))
            if worst < self.tau and seq not in [s for s, _ in self.found]:
                self.found.append((seq, worst))
                stalls[n] = 0
            else:
                if worst >= self.tau:
                    self.rejected.append((seq, worst))
                stalls[n] += 1
            lengths = [m for m in lengths if stalls[m] <= self._patience(m)]
            lengths.sort(key=lambda m: (stalls[m], -self._unexplained(m)))

    def _patience(self, n: int) -> int:
        """Restarts without a new sentence before a length is given up: its candidate count per position."""
        return max(len(self.candidates[i]) for i in range(n))

    def _lengths(self) -> list[int]:
        sep = getattr(self.tokenizer, "sep_token_id", None)
        nonempty = [i for i, c in enumerate(self.candidates) if c.numel()]
        if sep is None or not nonempty:
            return [len(nonempty)] if nonempty else []
        return [i + 1 for i in nonempty if bool((self.candidates[i] == sep).any())]

    def _options(self, n: int) -> list[torch.Tensor]:
        sep = getattr(self.tokenizer, "sep_token_id", None)
        opts = []
        for i in range(n):
            c = self.candidates[i]
            if sep is not None:
                c = c[c == sep] if i == n - 1 else (c[c != sep] if bool((c != sep).any()) else c)
            opts.append(c)
        return opts

    def _used(self) -> set[tuple[int, int]]:
        return {(i, tok) for seq, _ in self.found for i, tok in enumerate(seq)}

    def _unexplained(self, n: int) -> int:
        used = self._used()
        return sum(1 for i, c in enumerate(self._options(n)) for tok in c.tolist() if (i, tok) not in used)

    def _start(self, n: int, gen: torch.Generator) -> list[int]:
        used = self._used()
        seq = []
        for i, c in enumerate(self._options(n)):
            fresh = [tok for tok in c.tolist() if (i, tok) not in used]
            pool = fresh or c.tolist()
            seq.append(pool[int(torch.randint(len(pool), (1,), generator=gen))])
        return seq

    def _descend(self, seq: list[int]) -> tuple[list[int], float]:
        opts = self._options(len(seq))
        device = self.setup.device
        while True:
            self.budget.check()
            batch = [list(seq)]
            for i, c in enumerate(opts):
                for tok in c.tolist():
                    if tok != seq[i]:
                        batch.append(seq[:i] + [tok] + seq[i + 1:])
            ids = torch.tensor(batch, device=device)
            res = self._residuals(ids)
            score = res.clamp_min(self.setup.span2.noise).log().sum(-1)
            best = int(score.argmin())
            if best == 0 or float(score[best]) >= float(score[0]):
                return seq, float(res[0].max())
            seq = batch[best]

    def _residuals(self, ids: torch.Tensor) -> torch.Tensor:
        rows = max(1, CHUNK_BYTES // (ids.shape[1] * self.setup.first.tokens.shape[1] * 64))
        parts = [self.setup.span2.residual(self.setup.probe.inputs(ids[s:s + rows])) for s in range(0, ids.shape[0], rows)]
        return torch.cat(parts)

    def explained(self) -> int:
        """Each distinct verified sentence holds one distinct layer-2 input vector per position."""
        return sum(len(seq) for seq, _ in self.found)
