"""Encoders (DAGER, Sec. 5.3): a bidirectional layer 2 reads the whole sentence at every
position, so the per-position candidates are searched jointly and scored on layer 2."""

from __future__ import annotations

import torch

from fedaudit.attacks.dager.search import Search
from fedaudit.attacks.dager.span import CHUNK_BYTES


class EncoderSearch(Search):
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
                        batch.append(seq[:i] + [tok] + seq[i + 1 :])
            ids = torch.tensor(batch, device=device)
            res = self._residuals(ids)
            score = res.clamp_min(self.setup.span2.noise).log().sum(-1)
            best = int(score.argmin())
            if best == 0 or float(score[best]) >= float(score[0]):
                return seq, float(res[0].max())
            seq = batch[best]

    def _residuals(self, ids: torch.Tensor) -> torch.Tensor:
        rows = max(1, CHUNK_BYTES // (ids.shape[1] * self.setup.first.tokens.shape[1] * 64))
        parts = [
            self.setup.span2.residual(self.setup.probe.inputs(ids[s : s + rows])) for s in range(0, ids.shape[0], rows)
        ]
        return torch.cat(parts)

    def explained(self) -> int:
        """Each distinct verified sentence holds one distinct layer-2 input vector per position."""
        return sum(len(seq) for seq, _ in self.found)
