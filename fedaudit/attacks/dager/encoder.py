"""Encoders (DAGER, Sec. 5.3): a bidirectional layer 2 reads the whole sentence at every
position, so the per-position candidates are searched jointly and scored on layer 2."""

from __future__ import annotations

import torch

from fedaudit.attacks.base import BudgetExceeded
from fedaudit.attacks.dager.encoder_beam import read_left_to_right
from fedaudit.attacks.dager.encoder_guesses import fill, repeats
from fedaudit.attacks.dager.encoder_lengths import alive, layer1_order, plan_lengths
from fedaudit.attacks.dager.encoder_positions import lead, likely_tokens, placed_counts, token_shares
from fedaudit.attacks.dager.encoder_reread import log_score, paired, read_moved, reread, resized, shifted
from fedaudit.attacks.dager.search import Search
from fedaudit.attacks.dager.span import CHUNK_BYTES

SEED_READS = 6
"""Left-to-right readings re-read per planned sentence of their length, closest first."""

NARROWED = 2 / 3
"""The likely tokens are read left to right again once the peel (``encoder_peel``) leaves this
fraction of them or fewer. Measured on pretrained MiniLM-L6, SST-2 validation batches 8-15 of 8
(55 s each), with the lengths replanned from the peel: R-1 0.906 -> 0.972, 51 -> 59 of 64
sentences exact; a read costs 0.2-5 s."""


class EncoderSearch(Search):
    """Bidirectional layer 2 sees the whole sentence: search the per-position candidates jointly.

    Where the embedding gradients tell which token sits where (``encoder_positions``), those
    likely tokens lead each position's candidates, and the length plan respects them. First
    sentences are read left to right (``encoder_beam``) over the likely tokens and finished at
    every candidate end: those that pass are verified, the closest of the planned lengths are
    cleared of the verified sentences' tokens and re-read, and the best others start the search
    below. Then, for each sentence length (where the separator is a candidate), start from a
    guess built from candidates no verified sentence explains yet, the likely ones first. Each
    guess is re-read in place (``encoder_reread``), then descends: one position at a time moves
    to the candidate that lowers the summed log layer-2 residual most (all its changes scored
    in one batched forward), until no move helps. One wrong token lifts every position's
    residual, so a true stretch read a position or two off, or two wrong tokens that fit each
    other, form local minima no single move leaves: there, shift a stretch (``_shift``) or
    change the worst position and one other jointly (``paired``), and descend again while that
    helps. Each failure also tries the closest guess yet a token or two shorter or longer. A
    sentence whose every position passes the layer-2 check is verified; where its gradient can be
    replayed, it is peeled off the embedding gradients (``encoder_peel``), the other sentences'
    lengths are replanned, and once their likely tokens have narrowed enough they are read left
    to right again. Restarts continue until the verified sentences explain the layer-2 rank or
    the budget runs out.
    """

    def run(self) -> None:
        lengths = self._lengths()
        sep = getattr(self.tokenizer, "sep_token_id", None)
        self.order, self.ends = layer1_order(self.setup, self.candidates, sep, max(lengths, default=0))
        self.plan: list[int] = []
        self._replan()
        self.likely = self._likely()
        self.read_size = 0
        """How many likely tokens the last left-to-right read had."""
        self.level = 0
        self.current: tuple[list[int], float] | None = None  # with its mean log layer-2 residual
        self.seeds: dict[int, list[tuple[float, list[int]]]] = {}
        self.resized: set[tuple[int, ...]] = set()
        try:
            self._read_left_to_right(lengths)
            gen = torch.Generator().manual_seed(0)
            self._restarts(lengths, {n: 0 for n in lengths}, gen)
        except BudgetExceeded:
            # The guess in progress and the readings not searched yet are the best guesses of
            # their lengths: without them a missing sentence falls back to the layer-1 guess.
            if self.current is not None:
                self.rejected.append(self.current)
            self.rejected += [(seq, score) for group in self.seeds.values() for score, seq in group]
            raise

    def _restarts(self, lengths: list[int], stalls: dict[int, int], gen: torch.Generator) -> None:
        while self.explained() < self.setup.span2.rank and lengths:
            self.budget.check()
            if self.likely is not None and sum(map(len, self.likely)) <= self.read_size * NARROWED:
                self._read_left_to_right(lengths)
            n = min(lengths, key=lambda m: self._promise(m, stalls))
            self.level = stalls[n] // 2  # widen the options every second failure
            self.current = (self._start(n, gen, stalls[n]), float("inf"))
            self.current = (reread(self, self.current[0], self._reading_options(n)), float("inf"))
            seq, res = self._solve(self.current[0])
            if float(res.max()) >= self.tau:
                self.rejected.append((seq, self._closeness(res)))
                seq, res = self._resize_closest() or (seq, res)
            if float(res.max()) < self.tau and self._accept(seq, float(res.max())):
                stalls[n] = 0
            else:
                stalls[n] += 1
            lengths = [m for m in lengths if stalls[m] <= self._patience(m)]

    def _promise(self, n: int, stalls: dict[int, int]) -> tuple:
        """Which length to search next (least first): planned lengths still missing a sentence,
        the least tried, then the one whose next reading is closest to the span (mean log layer-2
        residual: a search of a long guess can take much of the budget, so the readings most
        likely to finish go first), then the one with most candidates unexplained."""
        seed = self.seeds[n][0][0] if self.seeds.get(n) else float("inf")
        return self._planned_left(n) <= 0, stalls[n], seed, -self._unexplained(n)

    def _replan(self) -> None:
        """Plan the lengths (``encoder_lengths``) around the verified sentences' lengths, which are
        known: a sentence verified at an unplanned length corrects the plan of the others. Once
        they are peeled off (``encoder_peel``), the shares left are the other sentences' alone:
        those are planned alone, to the rank left, at the ends the peeled positions still reach."""
        fixed = [len(seq) for seq, _ in self.found]
        sep = getattr(self.tokenizer, "sep_token_id", None)
        peeled = self.setup.peel.shares() if self.setup.peel is not None else None
        if peeled is not None and len(fixed) < self.limit:
            ends = {n: r for n, r in self.ends.items() if n <= peeled[1].shape[1]}
            rank, count = self.setup.span2.rank - self.explained(), self.limit - len(fixed)
            if rest := plan_lengths(ends, rank, count, placed_counts(peeled), [], token_shares(peeled, sep)):
                self.plan = sorted(fixed + rest, reverse=True)
                return
        placed, at_end = placed_counts(self.setup.shares), token_shares(self.setup.shares, sep)
        self.plan = plan_lengths(self.ends, self.setup.span2.rank, self.limit, placed, fixed, at_end) or self.plan

    def _planned_left(self, n: int) -> int:
        """Planned sentences of length n not verified yet (0 for an unplanned length)."""
        return self.plan.count(n) - sum(1 for seq, _ in self.found if len(seq) == n)

    def _patience(self, n: int) -> int:
        """Restarts without a new sentence before a length is given up: twice the doublings to
        reach every candidate, plus its candidate count per position."""
        most = max(len(self.candidates[i]) for i in range(n))
        return 2 * most.bit_length() + most

    def _lengths(self) -> list[int]:
        sep = getattr(self.tokenizer, "sep_token_id", None)
        nonempty = [i for i, c in enumerate(self.candidates) if c.numel()]
        if sep is None or not nonempty:
            return [len(nonempty)] if nonempty else []
        return [i + 1 for i in nonempty if bool((self.candidates[i] == sep).any())]

    def _likely(self) -> list[torch.Tensor] | None:
        """Where the embedding gradients tell which token sits where (``encoder_positions``):
        the likely candidates of each position, largest share first, of the sentences not
        verified yet where the verified ones can be peeled off (``encoder_peel``), else of all.
        They lead ``self.order`` (``lead``), and only they are read left to right. None without
        shares."""
        peeled = self.setup.peel.shares() if self.setup.peel is not None else None
        if (shares := peeled or self.setup.shares) is None:
            return None
        missing = list(self.plan)
        for seq, _ in self.found if peeled else []:
            if len(seq) in missing:
                missing.remove(len(seq))
        alive_at = [alive(missing, i) if self.plan else self.limit for i in range(shares[1].shape[1])]
        sep = getattr(self.tokenizer, "sep_token_id", None)
        likely, self.order = lead(self.order, likely_tokens(*shares, alive_at), sep)
        return likely

    def _options(self, n: int, widest: bool = False) -> list[torch.Tensor]:
        """Per position: the candidates a sentence of length n may hold there (the separator
        last), in ``self.order``; all of them if ``widest``, else the likely ones (or, without
        shares, as many as the planned sentences alive there), doubled at each widening."""
        sep = getattr(self.tokenizer, "sep_token_id", None)
        opts = []
        for i in range(n):
            c = self.order[i] if i < len(self.order) else self.candidates[i]
            if sep is not None:
                c = c[c == sep] if i == n - 1 else (c[c != sep] if bool((c != sep).any()) else c)
            if self.likely is not None and not widest and i < len(self.likely):
                c = c[: max(1, len(self.likely[i])) << self.level]  # the likely ones lead the order
            elif self.plan and not widest:
                c = c[: max(1, alive(self.plan, i)) << self.level]
            opts.append(c)
        return opts

    def _used(self) -> set[tuple[int, int]]:
        return {(i, tok) for seq, _ in self.found for i, tok in enumerate(seq)}

    def _unexplained(self, n: int) -> int:
        used = self._used()
        return sum(1 for i, c in enumerate(self._options(n)) for tok in c.tolist() if (i, tok) not in used)

    def _read_left_to_right(self, lengths: list[int]) -> None:
        """Sentences read left to right (``encoder_beam``), finished at every candidate end: the
        plan is a guess, but a finished sentence's separator is read exactly, so the sentences
        whose separator passes go to the whole-sentence check, at any length. Of the planned
        lengths, the closest few per planned sentence are re-read first: a reading loses the true
        prefix early in a long sentence but often holds most of its positions, and a re-read
        then finishes it (``_reread_seeds``)."""
        sep = getattr(self.tokenizer, "sep_token_id", None)
        if sep is None or not self.plan:
            return
        options = self.order if self.likely is None else self.likely
        self.read_size = sum(map(len, options))
        finished = read_left_to_right(self, options, sep, set(lengths))
        ranked = {}
        for n in sorted(set(lengths)):
            group = [seq for seq, last in finished if len(seq) == n and (n in self.plan or last < self.tau)]
            if group:
                ranked[n] = self._verify(group)
        for n, rest in ranked.items():
            self._reread_seeds(n, rest)

    def _verify(self, group: list[list[int]]) -> list[tuple[float, list[int]]]:
        """Verify the sentences of ``group`` that pass; the others with their scores, best first."""
        res = self.residuals(torch.tensor(group, device=self.setup.device))
        rest: list[tuple[float, list[int]]] = []
        for j, score in sorted(enumerate(self._score(res).tolist()), key=lambda item: item[1]):
            if float(res[j].max()) < self.tau:
                self._accept(group[j], float(res[j].max()))
            elif group[j] not in [seq for _, seq in rest]:
                rest.append((score, group[j]))
        return rest

    def _accept(self, seq: list[int], worst: float) -> bool:
        """Record a verified sentence (False if it was already) and plan the rest around it."""
        if seq in [s for s, _ in self.found]:
            return False
        self.found.append((seq, worst))
        if self.setup.peel is not None:
            self.setup.peel.off(self.setup.model, seq)
        self._replan()
        if self.setup.peel is not None:
            self.likely = self._likely()
        return True

    def _reread_seeds(self, n: int, rest: list[tuple[float, list[int]]]) -> None:
        """Re-read the ``SEED_READS`` closest unverified readings per planned sentence of length n,
        each cleared of the verified sentences first (``_fresh``), and verify those that pass;
        the best of the others (twice as many as planned) start descents. None once the planned
        sentences of length n are verified: the others would read them again."""
        for k, (_, seq) in enumerate(rest[: SEED_READS * self.plan.count(n)]):
            if self._planned_left(n) <= 0 or self.explained() >= self.setup.span2.rank:
                break
            self.current = (seq, float("inf"))
            seq = reread(self, self._fresh(seq), self._reading_options(n))
            r = self.residuals(torch.tensor([seq], device=self.setup.device))[0]
            if float(r.max()) < self.tau:
                self._accept(seq, float(r.max()))
            rest[k] = (float(self._score(r)) if float(r.max()) >= self.tau else float("inf"), seq)
        others: list[list[int]] = []
        for score, seq in sorted(rest, key=lambda item: item[0]):
            if len(others) == 2 * self.plan.count(n) or score == float("inf"):
                break
            if (fresh := self._fresh(seq)) not in others:
                others.append(fresh)
        if self._planned_left(n) <= 0 or not others:  # searched last, if at all: not worth a forward
            self.seeds[n] = [(float("inf"), seq) for seq in others]
            return
        scores = self._score(self.residuals(torch.tensor(others, device=self.setup.device)))
        self.seeds[n] = sorted(((float(v) / n, seq) for v, seq in zip(scores, others)), key=lambda item: item[0])

    def _fresh(self, seq: list[int]) -> list[int]:
        """``seq`` with each token a verified sentence holds at the same position replaced by the
        first option there that none holds: the readings of one length are mostly another
        sentence cut short or run on (docs/attacks.md), and re-read as they are they read that
        sentence again. Special tokens ([CLS], [SEP]) sit in every sentence and stay."""
        used, special = self._used(), self.special
        out = []
        for i, (tok, options) in enumerate(zip(seq, self._options(len(seq)))):
            if (i, tok) in used and tok not in special:
                tok = next((t for t in options.tolist() if (i, t) not in used), tok)
            out.append(tok)
        return out

    def _reading_options(self, n: int) -> list[torch.Tensor]:
        """What a re-read may choose from: the likely tokens where the embedding gradients
        tell, else every candidate."""
        return self._options(n, widest=self.likely is None)

    def _start(self, n: int, gen: torch.Generator, attempt: int) -> list[int]:
        """A sentence read left to right first, while any is left; then at each position the
        unexplained candidate closest to the layer-1 span; later ones draw among the unexplained
        candidates at random."""
        if self.seeds.get(n):
            return self._fresh(self.seeds[n].pop(0)[1])
        used = self._used()
        seq = []
        for i, c in enumerate(self._options(n)):
            fresh = [tok for tok in c.tolist() if (i, tok) not in used]
            pool = fresh or c.tolist()
            pick = 0 if attempt == 0 else int(torch.randint(len(pool), (1,), generator=gen))
            seq.append(pool[pick])
        return seq

    def _better(self, batch: list[list[int]], score: float) -> tuple[list[int], float, torch.Tensor] | None:
        """The best of ``batch`` (sequence, score, residuals) if it scores below ``score``."""
        if not batch:
            return None
        cand = self.residuals(torch.tensor(batch, device=self.setup.device))
        scores = self._score(cand)
        best = int(scores.argmin())
        return (batch[best], float(scores[best]), cand[best]) if float(scores[best]) < score else None

    def _solve(self, seq: list[int]) -> tuple[list[int], torch.Tensor]:
        """Descend, then leave each local minimum by the best shift of a stretch or, failing
        that, the best joint change of two positions, and descend again while that helps."""
        seq, score, res = self._descend(seq)
        while float(res.max()) >= self.tau:
            cand = None
            for escape in (self._shift, self._pair):
                moved = escape(seq, res)
                cand = self._descend(moved) if moved is not None else None
                if cand is not None and cand[1] < score:
                    break
            if cand is None or cand[1] >= score:
                break
            seq, score, res = cand
        return seq, res

    def _shift(self, seq: list[int], res: torch.Tensor) -> list[int] | None:
        """The best guess with one stretch moved a position or two (``shifted``), or None.
        Position embeddings move a pretrained encoder's reading little, so a guess often holds
        a true stretch one or two positions off (``read_moved`` re-reads the closest few)."""
        moves = shifted(seq)
        if not moves:
            return None
        best = self._better(read_moved(self, moves, self._widest), float(self._score(res)))
        return best[0] if best is not None else None

    def _resize_closest(self) -> tuple[list[int], torch.Tensor] | None:
        """The closest unverified guess not resized yet (repeating no verified sentence) re-read a
        token or two shorter or longer (``resized``): the best, with its residuals, or None. A
        true sentence searched at a wrong length ends close, a word dropped or repeated (MiniLM-L6:
        the 10 closest final guesses of 3 SST-2 validation batches of 8 gave 7 new sentences)."""
        verified, special = [s for s, _ in self.found], self.special
        todo = [(c, s) for s, c in self.rejected if tuple(s) not in self.resized and not repeats(s, verified, special)]
        seq = min(todo, key=lambda item: item[0])[1] if todo else []
        self.resized.add(tuple(seq))
        if not (moves := resized(seq, set(self.ends))):
            return None
        tried = read_moved(self, moves, self._widest)
        res = [self.residuals(torch.tensor([guess], device=self.setup.device))[0] for guess in tried]
        best = min(range(len(tried)), key=lambda j: self._closeness(res[j]))
        if float(res[best].max()) >= self.tau:
            self.rejected.append((tried[best], self._closeness(res[best])))
        return tried[best], res[best]

    def _widest(self, n: int) -> list[torch.Tensor]:
        return self._options(n, widest=True)

    def _score(self, res: torch.Tensor) -> torch.Tensor:
        return log_score(self, res)

    def _closeness(self, res: torch.Tensor) -> float:
        """Mean log layer-2 residual of one guess: comparable across lengths."""
        return float(self._score(res)) / res.numel()

    def _descend(self, seq: list[int]) -> tuple[list[int], float, torch.Tensor]:
        """Sweep the positions that fail the check, worst layer-2 residual first, each moved at
        once to its best candidate (one batched forward per position), until a sweep moves
        nothing or every position passes (a passing position holds its true token: a wrong one
        anywhere lifts every position)."""
        opts = self._options(len(seq))
        res = self.residuals(torch.tensor([seq], device=self.setup.device))[0]
        score = float(self._score(res))
        self.current = (seq, self._closeness(res))
        moved = True
        while moved and float(res.max()) >= self.tau:
            moved = False
            for i in res.argsort(descending=True).tolist():
                if float(res[i]) < self.tau:
                    continue
                self.budget.check()
                moves = [seq[:i] + [tok] + seq[i + 1 :] for tok in opts[i].tolist() if tok != seq[i]]
                better = self._better(moves, score)
                if better is not None:
                    (seq, score, res), moved = better, True
                    self.current = (seq, self._closeness(res))
        return seq, score, res

    def _pair(self, seq: list[int], res: torch.Tensor) -> list[int] | None:
        return paired(self, seq, res, self._options(len(seq)), self._widest(len(seq)))

    def residuals(self, ids: torch.Tensor) -> torch.Tensor:
        rows = max(1, CHUNK_BYTES // (ids.shape[1] * self.setup.first.tokens.shape[1] * 64))
        parts = []
        for s in range(0, ids.shape[0], rows):
            self.budget.check()
            parts.append(self.setup.span2.residual(self.setup.probe.inputs(ids[s : s + rows])))
        return torch.cat(parts)

    def best(self) -> list[list[int]]:
        """Verified sentences, then the unverified guesses closest to the span that repeat none of
        them (``encoder_guesses``), then the layer-1 guess of each planned length still missing a
        sentence that no search got to: at most ``limit`` distinct sentences."""
        verified = [seq for seq, _ in sorted(self.found, key=lambda item: item[1])]
        out = fill(verified, self.rejected, self.limit, self.special)
        missing = list(getattr(self, "plan", []))
        for seq in out:
            if len(seq) in missing:
                missing.remove(len(seq))
        for n in missing if hasattr(self, "order") else []:
            if len(out) < self.limit and (guess := self._start(n, torch.Generator(), 0)) not in out:
                out.append(guess)
        return out

    def explained(self) -> int:
        """Each distinct verified sentence holds one distinct layer-2 input vector per position."""
        return sum(len(seq) for seq, _ in self.found)
