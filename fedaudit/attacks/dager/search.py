"""Layer 2: what a sentence search needs, and what every search shares (a capped, ranked list of
verified sentences). The decoder and encoder searches are ``decoder.py`` and ``encoder.py``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedaudit.attacks.base import Budget
from fedaudit.attacks.dager.encoder_peel import Peel
from fedaudit.attacks.dager.layer1 import FirstInputs
from fedaudit.attacks.dager.span import CHUNK_BYTES, Span
from fedaudit.models.probe import Layer2Probe


@dataclass
class Setup:
    span1: Span
    span2: Span
    model: nn.Module
    probe: Layer2Probe
    """The model's own forward, stopped at the second attention layer's input."""
    first: FirstInputs
    max_len: int
    vocab: int
    device: torch.device
    shares: tuple[torch.Tensor, torch.Tensor] | None = None
    """The batch's tokens and each one's share of each position (``encoder_positions``), where
    the embedding gradients tell."""
    peel: Peel | None = None
    """The embedding gradients less the verified sentences' (``encoder_peel``), where they can be replayed."""


class Search:
    def __init__(
        self,
        setup: Setup,
        tau: float,
        candidates: list[torch.Tensor],
        rotary: bool,
        tokenizer: Any,
        budget: Budget,
        limit: int,
    ) -> None:
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
        """Best unverified guesses (encoders) with their mean log layer-2 residual, used only to fill
        up to B when verification falls short."""
        self.note = ""
        """How sure the choice among the verified sentences is, in words (decoders; empty if nothing was chosen)."""

    @property
    def special(self) -> set[int]:
        """The tokenizer's special tokens ([CLS], [SEP]): every sentence holds them, so they tell no sentence apart."""
        return set(getattr(self.tokenizer, "all_special_ids", []))

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

    def extensions(
        self, keys: torch.Tensor, values: torch.Tensor, cand: torch.Tensor
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        """Every prefix x every candidate, in memory-bounded chunks over the prefixes' cached
        first-layer keys and values: per chunk (parent, token, layer-2 residual of the new last
        position, extended keys, extended values)."""
        n_pref, n_cand = keys.shape[0], cand.numel()
        parent = torch.arange(n_pref, device=cand.device).repeat_interleave(n_cand)
        token = cand.repeat(n_pref)
        row_bytes = (
            3 * (keys[0].numel() + values[0].numel()) * keys.element_size() + 64 * keys.shape[1] * keys.shape[-1] * 8
        )
        rows = max(1, CHUNK_BYTES // row_bytes)
        for start in range(0, parent.numel(), rows):
            self.budget.check()
            p, tok = parent[start : start + rows], token[start : start + rows]
            x, k, v = self.setup.probe.extend(tok[:, None], keys[p], values[p])
            yield p, tok, self.setup.span2.residual(x[:, -1]), k, v
