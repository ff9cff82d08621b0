"""Update transforms, each a pure function from an update (name -> tensor) to the update sent.

* ``prune``: gradient pruning as in DLG (Zhu et al., NeurIPS 2019, Sec. 5): per tensor, the
  ``fraction`` of entries smallest in magnitude become zero (or every |x| < threshold).
* ``quantize``: fp16 rounding, or int8 with one symmetric scale per tensor, s = max|x| / 127,
  x -> round(x / s) * s, so every entry moves by at most s / 2.
* ``noise``: i.i.d. Gaussian or Laplace noise of standard deviation ``scale`` on every entry.
* ``clip``: the whole update (all tensors as one vector) scaled to L2 norm <= ``max_norm``.

Every transform keeps each tensor's dtype and shape, so what the client sends stays a valid update.
"""

from __future__ import annotations

import math

import torch

from fedaudit.config import ClipDefense, DefensesConfig, NoiseDefense, PruneDefense, QuantizeDefense

Update = dict[str, torch.Tensor]


def prune(update: Update, settings: PruneDefense) -> Update:
    out = {}
    for name, x in update.items():
        magnitude = x.abs()
        if settings.threshold is not None:
            keep = magnitude >= settings.threshold
        else:
            drop = math.floor(settings.fraction * x.numel())
            keep = torch.ones_like(x, dtype=torch.bool)
            if drop:
                # exactly ``drop`` entries go: ties at the cut are broken by position, not all dropped
                order = magnitude.flatten().argsort(stable=True)
                keep.view(-1)[order[:drop]] = False
        out[name] = torch.where(keep, x, torch.zeros_like(x))
    return out


def quantize(update: Update, settings: QuantizeDefense) -> Update:
    out = {}
    for name, x in update.items():
        if settings.format == "fp16":
            out[name] = x.to(torch.float16).to(x.dtype)
            continue
        scale = x.abs().max() / 127
        out[name] = x if scale == 0 else (torch.round(x / scale).clamp(-127, 127) * scale).to(x.dtype)
    return out


def noise(update: Update, settings: NoiseDefense, seed: int) -> Update:
    if settings.scale == 0:
        return dict(update)
    generator = torch.Generator().manual_seed((settings.seed * 1_000_003 + seed) % 2**63)
    out = {}
    for name, x in update.items():
        if settings.distribution == "gaussian":
            draw = torch.randn(x.shape, generator=generator, dtype=torch.float64) * settings.scale
        else:  # Laplace(b) has variance 2 b^2, so b = scale / sqrt(2); inverse CDF of a uniform draw
            u = torch.rand(x.shape, generator=generator, dtype=torch.float64) - 0.5
            draw = -settings.scale / math.sqrt(2) * u.sign() * torch.log1p(-2 * u.abs())
        out[name] = (x.double() + draw).to(x.dtype)
    return out


def clip(update: Update, settings: ClipDefense) -> Update:
    norm = math.sqrt(sum(float(x.double().pow(2).sum()) for x in update.values()))
    if norm <= settings.max_norm:
        return dict(update)
    factor = settings.max_norm / norm
    return {name: (x.double() * factor).to(x.dtype) for name, x in update.items()}


def apply_update_defenses(update: Update, defenses: DefensesConfig, seed: int) -> Update:
    """The update after every configured transform, in the scenario's order; ``seed`` varies the
    noise per client and round."""
    for name, settings in defenses.update_transforms():
        if name == "prune":
            update = prune(update, settings)
        elif name == "quantize":
            update = quantize(update, settings)
        elif name == "noise":
            update = noise(update, settings, seed)
        else:
            update = clip(update, settings)
    return update
