"""Decoders (DAGER, Sec. 5.2): the layer-2 input at position t depends only on tokens <= t, so
sentences grow left to right, keeping the extensions whose layer-2 input passes the span check.
Every kept prefix is a node of a tree; the sentences are chosen from it (``choice``)."""

from __future__ import annotations

import torch

from fedaudit.attacks.dager.choice import choose, settled
from fedaudit.attacks.dager.search import Search


class DecoderSearch(Search):
    """Grow every prefix by every candidate of the next position in one batched call (Sec. 5.2)."""

    def run(self) -> None:
        self._nodes: dict[tuple[int, ...], float] = {}
        self._open: set[tuple[int, ...]] = set()
        try:
            self._grow()
        finally:  # also when the budget runs out: what was verified so far
            self.choice = choose(self._nodes, self._open, self.tau, self.setup.span2.rank, self.limit)
            self.found = [(list(seq), self._nodes[seq]) for seq in self.choice.leaves]
            self.note = self.choice.note

    def best(self) -> list[list[int]]:
        return self.choice.sentences

    def _grow(self) -> None:
        setup, device = self.setup, self.setup.device
        first = self.candidates[0].to(device)
        if first.numel() == 0:
            return
        x, keys, values = setup.probe.start(first[:, None])
        res = setup.span2.residual(x[:, 0])
        keep = self._cap(res, res < self.tau)
        prefixes = first[keep][:, None]
        worst = res[keep]
        keys, values = keys[keep], values[keep]
        self._record(prefixes, worst)
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
            self._record(prefixes, worst)
            if settled(self._nodes, self._open, self.tau, setup.span2.rank):
                break  # every layer-2 direction is accounted for; what still grows is false
        self._finish(prefixes, worst)

    def _extend(self, keys: torch.Tensor, values: torch.Tensor, cand: torch.Tensor):
        """Every prefix x every candidate (``Search.extensions``), all chunks together."""
        parts = list(zip(*self.extensions(keys, values, cand)))
        return tuple(torch.cat(part) for part in parts)

    def _record(self, prefixes: torch.Tensor, worst: torch.Tensor) -> None:
        """Kept prefixes become tree nodes, open until their extensions have been checked."""
        seqs = [tuple(seq) for seq in prefixes.tolist()]
        self._open = set(seqs)
        self._nodes.update(zip(seqs, worst.tolist()))

    def _finish(self, prefixes: torch.Tensor, worst: torch.Tensor) -> None:
        """Prefixes that no extension continues: checked to the end (the tree already holds them)."""
        self._open -= {tuple(seq) for seq in prefixes.tolist()}

    def explained(self) -> int:
        """Distinct layer-2 input vectors the chosen sentences account for (``Choice.explained``)."""
        return self.choice.explained
