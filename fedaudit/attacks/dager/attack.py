"""The DAGER attack: applicability, then layer 1 (candidate tokens per position), the layer-2
thresholds calibrated on the data, the sentence search, and the verdict."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from fedaudit.attacks.base import Attack, Budget, BudgetExceeded, Observation, Reconstruction
from fedaudit.attacks.dager import verdict
from fedaudit.attacks.dager.decoder import DecoderSearch
from fedaudit.attacks.dager.encoder import EncoderSearch
from fedaudit.attacks.dager.layer1 import Layer1Terms, layer1_residuals, layer1_terms
from fedaudit.attacks.dager.search import Setup
from fedaudit.attacks.dager.setup import KeptModel, build_setup
from fedaudit.attacks.dager.span import NoiseDominates, resolution, split_at_gap, threshold

KEEP_BYTES = 2 * 2**30
"""Largest layer-1 term set kept between runs (GPT-2: about 0.4 GiB)."""


def _same(a: Any, b: Any) -> bool:
    if a is b:  # the kept first-layer inputs of a round's private model: no full compare of the embedding
        return True
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and bool(torch.equal(a, b))
    return a == b if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor) else False


def _nearest(residuals: torch.Tensor, passing: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` smallest residuals of each position up to the last one where any token passes."""
    reached = torch.nonzero(passing.any(0)).flatten()
    out = torch.zeros_like(passing)
    if reached.numel():
        last = int(reached.max()) + 1
        rows = residuals[:, :last].topk(min(k, residuals.shape[0]), dim=0, largest=False).indices
        out[:, :last].scatter_(0, rows, True)
    return out


class Dager(Attack):
    """DAGER over the first two attention layers of GPT-2, LLaMA and BERT families (FedSGD, FedAvg, LoRA)."""

    name = "dager"

    def __init__(self, options: Any = None, device: str = "auto") -> None:
        super().__init__(options, device)
        self._kept: tuple[tuple, Layer1Terms] | None = None
        """The last layer-1 terms with the weights they were computed from (shared within a round)."""
        self._model = KeptModel()

    def applicable(self, observation: Observation) -> tuple[bool, str]:
        adapter = observation.model.adapter
        if adapter.first_input is None or len(adapter.attention_inputs) < 2:
            return False, "DAGER needs two attention layers and a known first-layer input (no adapter for this model)"
        for layer, entry in enumerate(adapter.attention_inputs, start=1):
            names = [n for p in entry.projections for n in (p.weight, p.lora_a) if n]
            if not any(n in observation.update for n in names):
                return (
                    False,
                    f"the layer-{layer} attention projections ({entry.module}) are frozen and have no LoRA factors",
                )
        return True, ""

    def run(self, observation: Observation, budget: Budget) -> Reconstruction:
        started = time.perf_counter()
        try:
            setup = build_setup(observation, self.device, self._model.get(observation, self.device))
        except NoiseDominates as err:
            return Reconstruction(
                "failed",
                f"protocol noise of std {observation.gradient_noise_std:.3g} per gradient entry: {err}",
                sequences=[],
                diagnostics={"noise_std": observation.gradient_noise_std},
            )
        diag = self._diagnostics(observation, setup, time.perf_counter() - started)
        if setup.span1.full or setup.span2.full:
            return verdict.span_full(observation, setup.span1, setup.span2, diag)
        nearest = observation.protocol.num_examples if observation.gradient_noise_std > 0 else 0
        candidates, tokens, present1, passing = self._layer1(setup, diag, nearest)
        if not tokens:
            return Reconstruction("failed", "no vocabulary token passes the layer-1 span check", diagnostics=diag)
        if diag["closest_absent_layer1"] <= present1:  # every residual sits at the noise ratio
            return verdict.layer1_inseparable(observation, setup.span1, passing, diag)
        tau2 = self._layer2_threshold(observation, setup, candidates, present1, diag)
        outcome = self._search(observation, setup, tau2, candidates, budget, diag)
        if outcome.ran_out and not outcome.sequences:  # nothing in hand when time ran out: a timeout, not a verdict
            raise BudgetExceeded(stage="during the layer-2 search, with no sentence verified or guessed")
        outcome.tokens = tokens
        return verdict.verdict(observation, setup.span1, setup.span2, outcome, diag)

    def _diagnostics(self, observation: Observation, setup: Setup, setup_seconds: float) -> dict[str, Any]:
        s1, s2 = setup.span1, setup.span2
        diag: dict[str, Any] = dict(
            vocabulary=setup.vocab,
            positions_checked=int(setup.first.positions.shape[0]),
            rank_layer1=s1.rank,
            rank_layer2=s2.rank,
            tokens_implied=s1.rank,
            model_width=int(setup.first.tokens.shape[1]),
            basis_layer1=int(s1.basis.shape[1]),
            basis_layer2=int(s2.basis.shape[1]),
            check_width=s1.width,
            span_source=s1.source,
            noise_layer1=s1.noise,
            noise_layer2=s2.noise,
            edge_layer1=s1.edge,
            edge_layer2=s2.edge,
            device=str(self.device),
            seconds_setup=setup_seconds,
        )
        if observation.gradient_noise_std > 0:
            diag.update(noise_std=observation.gradient_noise_std)
        return diag

    def _layer1(
        self, setup: Setup, diag: dict[str, Any], nearest: int = 0
    ) -> tuple[list[torch.Tensor], set[int], float, int]:
        """Candidate tokens per position (eq. 5 over the vocabulary), split at the residuals' gap:
        (candidates, tokens, farthest present residual, count passing). ``nearest``: under
        protocol noise, also the ``nearest`` closest tokens at each position up to the last one
        anything passes at (a true token the noise pushed past the threshold stays in reach;
        layer 2 decides, and ``tokens`` keeps only those that passed)."""
        s1 = setup.span1
        t1 = time.perf_counter()
        terms, reused = self._layer1_terms(setup)
        t_terms = time.perf_counter()
        residuals = layer1_residuals(s1, terms)
        present1, absent1 = split_at_gap(residuals, floor=resolution(s1), rank=s1.rank)
        tau1 = math.sqrt(present1 * absent1)
        passing = residuals < tau1
        tokens = set(torch.nonzero(passing.any(1)).flatten().tolist())
        if nearest:
            passing = passing | _nearest(residuals, passing, nearest)
        candidates = [torch.nonzero(passing[:, i]).flatten() for i in range(passing.shape[1])]
        diag.update(
            threshold_layer1=tau1,
            closest_absent_layer1=absent1,
            farthest_present_layer1=present1,
            layer1_passing=int(passing.sum()),
            layer1_terms_reused=reused,
            seconds_layer1_terms=0.0 if reused else t_terms - t1,
            seconds_layer1=time.perf_counter() - t1,
        )
        return candidates, tokens, present1, int(passing.sum())

    def _layer2_threshold(
        self,
        observation: Observation,
        setup: Setup,
        candidates: list[torch.Tensor],
        present1: float,
        diag: dict[str, Any],
    ) -> float:
        """Between random sequences (absent w.h.p.) and how far true inputs can sit from the span.

        Several local steps: candidates are formed at the midpoint weights, while each input was
        seen at the weights of its own steps, so a true input sits as far from the span as the
        weights moved, which the spectrum does not show. Calibrate on the data. Decoders:
        position 0 reads token 0 alone, so its layer-1 candidates (first tokens, and
        completions) and the random sequences (absent) split at the largest gap of their layer-2
        residuals; the side below it is how far true inputs sit. Encoders read the whole
        sentence at every position: the layer-1 present side is the best measure.
        """
        random2 = self._random_layer2_residuals(setup)
        absent2 = float(random2.min()) if random2.numel() else 1.0
        tau2 = threshold(setup.span2, absent2)
        if not observation.exact_gradient or setup.span2.edge > 0:  # drift or noise: measure how far
            present = present1
            if observation.model.adapter.is_decoder and candidates[0].numel():
                first = self._first_position_residuals(setup, candidates[0])
                present, _ = split_at_gap(
                    torch.cat([first, random2]), floor=resolution(setup.span2), rank=int(first.numel())
                )
            tau2 = threshold(setup.span2, absent2, present=present)
            diag.update(farthest_present_layer2=present)
        diag.update(threshold_layer2=tau2, closest_absent_layer2=absent2)
        return tau2

    def _search(
        self,
        observation: Observation,
        setup: Setup,
        tau2: float,
        candidates: list[torch.Tensor],
        budget: Budget,
        diag: dict[str, Any],
    ) -> verdict.SearchOutcome:
        rotary = observation.model.adapter.first_input.positions is None
        search = DecoderSearch if observation.model.adapter.is_decoder else EncoderSearch
        finder = search(
            setup, tau2, candidates, rotary, observation.model.tokenizer, budget, observation.protocol.num_examples
        )
        t2 = time.perf_counter()
        try:
            finder.run()
            ran_out = False
        except BudgetExceeded:
            ran_out = True
        diag.update(
            seconds_layer2=time.perf_counter() - t2,
            explained_layer2=finder.explained(),
            sentences_found=len(finder.found),
            layer2_choice=finder.note,
        )
        every = finder.explained() >= setup.span2.rank and setup.peel is not None
        return verdict.SearchOutcome(
            sequences=finder.best(),
            found=len(finder.found),
            explained=finder.explained(),
            ran_out=ran_out,
            tokens=set(),
            choice=finder.note,
            unexplained=setup.peel.unexplained() if every else 0,
        )

    def _layer1_terms(self, setup: Setup) -> tuple[Layer1Terms, bool]:
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
    def _first_position_residuals(setup: Setup, first: torch.Tensor) -> torch.Tensor:
        inputs = setup.probe.start(first.to(setup.device)[:, None])[0][:, 0]
        return setup.span2.residual(inputs)[:, None]

    def _random_layer2_residuals(self, setup: Setup, samples: int = 64, length: int = 4) -> torch.Tensor:
        """Layer-2 residuals of random token sequences at positions >= 1 (absent w.h.p.), as a column."""
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(setup.vocab, (samples, min(length, setup.max_len)), generator=gen).to(setup.device)
        x = setup.probe.inputs(ids)[:, 1:]
        return setup.span2.residual(x).reshape(-1, 1)
