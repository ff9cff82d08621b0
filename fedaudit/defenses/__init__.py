"""Update defenses: what a client does to its update before it leaves (pruning, quantization,
noise, clipping). DP-SGD is part of local training (``fedaudit.training``); Flower's central and
local DP are Flower settings (``server_strategies``, ``clients``)."""

from fedaudit.defenses.updates import apply_update_defenses, clip, noise, prune, quantize

__all__ = ["apply_update_defenses", "clip", "noise", "prune", "quantize"]
