"""Watching a transformer's own forward pass: the input of its second attention layer.

DAGER checks candidate sentences against the span of the second attention layer's input. That
input is whatever the model computes after its first block, so the probe runs the model itself
(no copied forward code) and stops it at the second query projection with a forward pre-hook.
Decoders carry the first layer's keys and values of each prefix in the model's own KV cache, so
extending a prefix by one token costs one token's forward, whatever the prefix length. The
cache is transformers' ``DynamicCache``: only this module knows it.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers import DynamicCache

FIRST_TOKENS = 4096
"""Largest first batch kept (tokens): calibration batches are a few hundred."""


class _Captured(Exception):
    def __init__(self, value: torch.Tensor) -> None:
        self.value = value


class Layer2Probe:
    """Runs ``model`` up to ``module`` (the second attention layer's query projection, an
    ``AttentionInput.module`` of the adapter) and returns what that projection reads."""

    def __init__(self, model: nn.Module, module: str) -> None:
        self._model = weakref.ref(model)  # a probe kept beside its model must not keep it alive
        self.module = module
        self._first: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def model(self) -> nn.Module:
        model = self._model()
        if model is None:
            raise RuntimeError("the probed model is gone")
        return model

    def inputs(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, n, d) second-layer inputs of whole sequences (B, n).

        The first batch this probe reads is kept and served again when asked for the same ids
        (the attack's calibration sequences, the same for every client of a round: a probe lives
        as long as the model's weights do, see ``dager.setup.build_setup``)."""
        first = self._first
        if first is not None and first[0].shape == input_ids.shape and bool(torch.equal(first[0], input_ids)):
            return first[1].clone()
        x = self._run(input_ids, None)
        if first is None and input_ids.numel() <= FIRST_TOKENS:
            self._first = (input_ids.clone(), x.clone())
        return x

    def start(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Second-layer inputs of prefixes (B, n) read from scratch, with the first layer's keys
        and values of those prefixes (to ``extend`` them later)."""
        cache = DynamicCache()
        x = self._run(input_ids, cache)
        return x, cache.layers[0].keys, cache.layers[0].values

    def extend(
        self, input_ids: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Second-layer inputs of ``input_ids`` (B, m) appended to prefixes whose first-layer
        ``keys``/``values`` are given (one prefix per row), and the extended keys and values."""
        cache = DynamicCache(ddp_cache_data=[(keys, values)])
        x = self._run(input_ids, cache)
        return x, cache.layers[0].keys, cache.layers[0].values

    def each_in_place(
        self, input_ids: torch.Tensor, positions: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> torch.Tensor:
        """(m, d) second-layer inputs of each token of ``input_ids`` (m,) put alone in one
        sentence (its first-layer ``keys``/``values``, (1, h, n, hd)) in place of the token at its
        position (``positions`` (m,)). An encoder reads its cached keys as a set, so a 4D mask
        lets each new token see the cache less its own position, and itself: one forward reads
        them all, and the cache is never copied per token."""
        n, m, device = keys.shape[2], input_ids.numel(), keys.device
        low, rows = torch.finfo(keys.dtype).min, torch.arange(m, device=device)
        mask = torch.full((1, 1, m, n + m), low, dtype=keys.dtype, device=device)
        mask[..., :n] = 0
        mask[0, 0, rows, positions] = low
        mask[0, 0, rows, n + rows] = 0
        cache = DynamicCache(ddp_cache_data=[(keys, values)])
        return self._run(input_ids[None], cache, positions[None], mask)[0]

    @contextmanager
    def _hooked(self) -> Iterator[None]:
        def stop(_module: nn.Module, args: tuple) -> None:
            raise _Captured(args[0])

        handle = self.model.get_submodule(self.module).register_forward_pre_hook(stop)
        try:
            yield
        finally:
            handle.remove()

    def _run(
        self,
        input_ids: torch.Tensor,
        cache: DynamicCache | None,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if mask is None and cache is None:
            mask = torch.ones_like(input_ids)
        with self._hooked(), torch.no_grad():
            try:
                self.model(
                    input_ids=input_ids,
                    attention_mask=mask,
                    position_ids=positions,
                    past_key_values=cache,
                    use_cache=cache is not None,
                )
            except _Captured as captured:
                return captured.value
        raise RuntimeError(f"the forward pass never reached {self.module}")
