"""DAGER's set-up: the spans of both attention layers' inputs (full weights or LoRA factors),
the rounding floor of the update as it arrived, and a private copy of the model at the weights
the candidates are formed at (the global weights, or the FedAvg midpoint)."""

from __future__ import annotations

import math
import weakref
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fedaudit.attacks.base import Observation
from fedaudit.attacks.dager.encoder_peel import start_peel
from fedaudit.attacks.dager.encoder_positions import position_shares
from fedaudit.attacks.dager.layer1 import FirstInputs
from fedaudit.attacks.dager.search import Setup
from fedaudit.attacks.dager.span import F64, Span, estimate_span
from fedaudit.models.probe import Layer2Probe

if TYPE_CHECKING:
    from fedaudit.models.adapters import AttentionInput, Projection


def input_span(
    observation: Observation, entry: AttentionInput, floor: float, layer: int, device: torch.device, min_rank: int = 0
) -> Span:
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
    if layer == 2 and pooled_reads(observation) is not None:
        min_rank = 0  # the layer-2 gradient may hold fewer directions than the inputs
    for proj in entry.projections:
        if proj.lora_a is None or proj.lora_a not in observation.update:
            continue
        if not bool(observation.global_weights[proj.lora_b].any()):
            a = observation.global_weights[proj.lora_a].to(device, F64)
            grad_b = observation.gradient(proj.lora_b)  # (out, r)
            return estimate_span(
                grad_b.T.to(device),
                floor,
                input_map=a,
                noise_std=noise,
                drift=drift,
                rounding=_transposed(rounding_std(observation, proj.lora_b)),
                source=f"{proj.lora_b} (layer {layer}; LoRA B = 0, so inputs are seen as A x)",
            )
        return estimate_span(
            observation.gradient(proj.lora_a).T.to(device),
            floor,
            noise_std=noise,
            drift=drift,
            rounding=_transposed(rounding_std(observation, proj.lora_a)),
            source=f"{proj.lora_a} (layer {layer})",
        )
    sent = [p for p in entry.projections if p.weight in observation.update]

    def input_side(t: torch.Tensor, p: Projection) -> torch.Tensor:
        return t if p.in_features_first else t.T

    grads = [input_side(observation.gradient(p.weight), p) for p in sent]
    stds = [rounding_std(observation, p.weight) for p in sent]
    rounding = None if stds[0] is None else torch.cat([input_side(s, p) for p, s in zip(sent, stds)], 1)
    return estimate_span(
        torch.cat(grads, dim=1).to(device),
        floor,
        source=f"{', '.join(p.weight for p in sent)} (layer {layer})",
        min_rank=min_rank,
        noise_std=noise,
        drift=drift,
        rounding=rounding,
    )


def rounding_std(observation: Observation, name: str) -> torch.Tensor | None:
    """Per-entry std of the rounding in ``observation.gradient(name)`` when FedAvg weights were
    trained and sent in a float type narrower than float64 (None otherwise: FedSGD's gradient
    and float64 weights carry only the relative floor of ``rounding_floor``).

    Each local step stores W_{s+1} = fl(W_s - lr g_s), off by up to half an ulp of that weight
    (uniform: std ulp / sqrt(12)); S steps add up to sqrt(S / 12) ulp per entry, and the
    server's W_E - W_0 of two floats it holds is exact. In gradient units: divided by lr * S.
    Entries of large weights have large ulps: a per-entry floor, not one global epsilon.
    """
    w0 = observation.global_weights[name]
    if observation.protocol.mode != "fedavg" or not w0.is_floating_point() or w0.dtype == F64:
        return None
    magnitude = (w0.to(F64) + observation.update[name].to(F64)).abs().to(w0.dtype)
    ulp = (torch.nextafter(magnitude, torch.full_like(magnitude, math.inf)) - magnitude).to(F64)
    steps, lr = observation.protocol.local_steps, observation.protocol.lr
    return ulp * math.sqrt(steps / 12) / (lr * steps)


def _transposed(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.T


def pooled_reads(observation: Observation) -> int | None:
    """Directions per example in the layer-2 gradient of a classifier with two attention layers.

    Only the pooled token's layer-2 query reaches the loss. Per head h its key gradient is
    X^T (c^h q^h^T) and its value gradient X^T (a^h d^h^T) (a^h: the pooled token's attention
    weights), so each head adds two combinations X^T c^h, X^T a^h of the sentence's inputs:
    at most 2H + 1 directions per example, all of its inputs only while n <= 2H + 1.
    None when every position's query reaches the loss (deeper models, causal LMs).
    """
    adapter = observation.model.adapter
    if observation.model.task != "classification" or adapter.num_layers != 2:
        return None
    return 2 * adapter.attention_heads + 1


def midpoint_model(observation: Observation, device: torch.device) -> nn.Module:
    """A private copy of the global model, or for FedAvg of the midpoint of the local
    trajectory W_0 + (W_E - W_0) / 2 (see module doc)."""
    weights = dict(observation.global_weights)
    if not observation.exact_gradient:
        weights.update({name: weights[name].double() + 0.5 * delta for name, delta in observation.update.items()})
    return observation.model_at(weights, device).model


class KeptModel:
    """The attack's own copy of the global model, kept while the global weights it was made from
    are the same tensors, unchanged in place (torch's version counter): the clients of a round
    then share one copy instead of paying for a copy each. FedAvg midpoints differ per client and
    are made fresh every time."""

    def __init__(self) -> None:
        self._kept: tuple[Any, list[tuple[torch.Tensor, int]], torch.device, nn.Module] | None = None

    def get(self, observation: Observation, device: torch.device) -> nn.Module:
        if not observation.exact_gradient:
            return midpoint_model(observation, device)
        weights = [(t, t._version) for t in observation.global_weights.values()]
        kept = self._kept
        if (
            kept is not None
            and kept[0] is observation.model
            and kept[2] == device
            and len(kept[1]) == len(weights)
            and all(a is b and va == vb for (a, va), (b, vb) in zip(kept[1], weights))
        ):
            return kept[3]
        self._kept = None  # let the old copy go before the new one is made
        model = midpoint_model(observation, device)
        self._kept = (observation.model, weights, device, model)
        return model


def first_inputs(model: nn.Module, observation: Observation, max_len: int) -> FirstInputs:
    """The first layer's inputs: views of the attack's private model, no copies per attack. What
    the attack keeps of them for the next observation (``Dager._layer1_terms``: the terms and the
    tensors they came from) holds at most the embedding tensor, never the model around it."""
    spec = observation.model.adapter.first_input
    params = dict(model.named_parameters())
    tokens = params[observation.model.adapter.embedding].detach()
    d = tokens.shape[1]
    if spec.positions is not None:
        positions = params[spec.positions].detach()[:max_len].to(F64, copy=True)
    else:
        positions = torch.zeros(1, d, dtype=F64, device=tokens.device)
    if spec.offset is not None:
        positions = positions + params[spec.offset].detach()[0].to(F64)
    return FirstInputs(
        tokens=tokens,
        positions=positions,
        weight=params[spec.norm_weight].detach().clone(),
        bias=params[spec.norm_bias].detach().clone() if spec.norm_bias else None,
        eps=spec.norm_eps,
        centered=spec.norm_kind == "layernorm",
    )


def rounding_floor(observation: Observation) -> float:
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


_per_model: weakref.WeakKeyDictionary[nn.Module, tuple[Layer2Probe, FirstInputs, int]] = weakref.WeakKeyDictionary()
"""One probe and one ``FirstInputs`` per private model (``KeptModel`` keeps a model for a round):
what the probe has read at those weights serves the round's next clients (``Layer2Probe.inputs``),
and ``Dager`` gets the same tensors back each time as the key of the layer-1 terms it kept."""


def build_setup(observation: Observation, device: torch.device, model: nn.Module) -> Setup:
    """Both spans, the attack's ``model`` (at the right weights: ``KeptModel``), its probe and the
    first layer's inputs."""
    adapter = observation.model.adapter
    floor = rounding_floor(observation)
    span1 = input_span(observation, adapter.attention_inputs[0], floor, 1, device)
    # Layer 2 reads one vector per distinct prefix (decoders) or position (encoders): never
    # fewer than the distinct (token, position) inputs layer 1 saw.
    span2 = input_span(observation, adapter.attention_inputs[1], floor, 2, device, min_rank=span1.rank)
    span1.centered = span2.centered = adapter.first_input.norm_kind == "layernorm"
    max_len = observation.protocol.max_seq_len
    spec = adapter.first_input
    if spec.positions is not None:
        max_len = min(max_len, int(model.get_parameter(spec.positions).shape[0]))
    kept = _per_model.get(model)
    if kept is None or kept[0].module != adapter.attention_inputs[1].module or kept[2] != max_len:
        probe = Layer2Probe(model, adapter.attention_inputs[1].module)
        kept = _per_model[model] = (probe, first_inputs(model, observation, max_len), max_len)
    probe, first, _ = kept
    shares = position_shares(observation, device)
    return Setup(
        span1=span1,
        span2=span2,
        model=model,
        probe=probe,
        first=first,
        max_len=max_len,
        vocab=int(first.tokens.shape[0]),
        device=device,
        shares=shares,
        peel=start_peel(observation, shares),
    )
