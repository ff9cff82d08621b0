"""DAGER's verdict: how sure the attack is, and why, in words a user can act on.

Every status and reason DAGER returns is built here, from what the checks measured; the attack
itself only measures. ``exact`` needs every condition at once: a FedSGD gradient without noise,
verified sentences that explain every direction of the layer-2 gradient (and, where their
gradient can be replayed, every token's row of the embedding gradient), and no more sentences
than the client reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fedaudit.attacks.base import Observation, Reconstruction
from fedaudit.attacks.dager.setup import pooled_reads
from fedaudit.attacks.dager.span import Span


@dataclass
class SearchOutcome:
    """What the layer-2 search verified."""

    sequences: list[list[int]]
    """At most B sentences, verified ones first."""
    found: int
    """Sentences that passed every check."""
    explained: int
    """Distinct layer-2 input vectors those sentences account for."""
    ran_out: bool
    tokens: set[int]
    """Tokens that passed the layer-1 check."""
    choice: str = ""
    """How sure the choice of these sentences among all that pass is (``choice.choose``), or empty."""
    unexplained: int = 0
    """Tokens whose embedding gradient the verified sentences, replayed and subtracted, leave
    (``encoder_peel``; 0 where they cannot be replayed or do not explain the layer-2 rank)."""


def _drift(observation: Observation) -> str:
    if observation.exact_gradient:
        return ""
    return (
        f"; over {observation.protocol.local_steps} local steps the weights drift between steps, which "
        "spreads each input over more directions (a smaller lr or fewer steps keeps the span low)"
    )


def _noise(observation: Observation) -> str:
    return f"the update carries protocol noise (std {observation.gradient_noise_std:.3g} per gradient entry)"


def span_full(observation: Observation, s1: Span, s2: Span, diag: dict[str, Any]) -> Reconstruction:
    """B*n >= d: every input passes the span check, so nothing can be singled out."""
    expected = observation.protocol.num_examples
    return Reconstruction(
        "partial",
        (
            f"B*n >= d: the attention-input gradients fill the space their inputs can occupy (rank "
            f"{s1.rank}/{s2.rank} of width {s1.width}; at least that many token vectors in {expected} examples), "
            "so every input passes the span check and nothing can be singled out; "
            "smaller batches, shorter sequences or a wider layer (or a larger LoRA r) would leak" + _drift(observation)
        ),
        diagnostics=diag,
    )


def layer1_inseparable(observation: Observation, s1: Span, passing: int, diag: dict[str, Any]) -> Reconstruction:
    """Every (token, position) residual sits at the noise ratio: nothing separates present from absent."""
    return Reconstruction(
        "failed",
        (
            f"the layer-1 span check separates nothing: every (token, position) residual lies within the noise "
            f"ratio {s1.noise:.3g} of the span ({passing} pass), so no sentence can be singled out"
            + (f"; {_noise(observation)}" if observation.gradient_noise_std > 0 else "")
        ),
        sequences=[],
        diagnostics=diag,
    )


def _shortfalls(observation: Observation, s1: Span, s2: Span, outcome: SearchOutcome) -> list[str]:
    expected, found = observation.protocol.num_examples, outcome.found
    reasons = []
    if outcome.ran_out:
        reasons.append(f"the time budget ran out during the layer-2 search ({_count(found, 'sentence')} verified)")
    if outcome.explained < s2.rank:
        reasons.append(
            f"the verified sentences explain {outcome.explained} of the {s2.rank} layer-2 input "
            "vectors the gradient holds"
            + ("" if observation.exact_gradient else " (under drift that rank is an upper bound)")
        )
    if outcome.unexplained:  # the span checks pass a sentence a token off; the replay does not
        reasons.append(
            f"replayed and subtracted, the verified sentences leave the embedding gradient of "
            f"{_count(outcome.unexplained, 'token')} unexplained: some sentence holds a wrong token "
            "that passes the span checks (or an example repeats a sentence)"
        )
    if found > expected:  # more than B at the true inputs' level: no gap or rank singles B out
        reasons.append(
            f"{found} sentences pass every check but the client reports {_count(expected, 'example')}: "
            "the checks let some false sentences through; the best are returned"
            + (f" ({outcome.choice})" if outcome.choice else "")
        )
    elif found < expected and outcome.explained >= s2.rank:
        reasons.append(
            f"{expected - found} of the {expected} examples repeat a recovered sentence "
            "(repeats add no new vectors to the span, so their count is not observable)"
        )
    elif found < expected:
        reasons.append(f"{found} of {expected} sentences verified")
    if len(outcome.sequences) > found:
        reasons.append(
            f"{_count(len(outcome.sequences) - found, 'sentence')} returned unverified: the search's best "
            "guesses (lowest layer-2 residual), scored as they are"
        )
    return reasons


def verdict(
    observation: Observation, s1: Span, s2: Span, outcome: SearchOutcome, diag: dict[str, Any]
) -> Reconstruction:
    """The final status and reason after the layer-2 search."""
    reasons = _shortfalls(observation, s1, s2, outcome)
    if not observation.exact_gradient:
        reasons.append(
            f"FedAvg over {observation.protocol.local_steps} local steps: candidates are formed at the "
            "midpoint weights and checked against a span and thresholds widened for the weights' drift "
            "(approximate)"
        )
    sent = observation.model.dtype
    if reasons and not observation.exact_gradient and sent != torch.float64 and s1.edge > 0:
        reasons.append(
            f"the weights were sent in {str(sent).removeprefix('torch.')}: each weight's rounding (about half an "
            f"ulp per local step) sets a noise edge at {s1.edge:.2g} of the strongest layer-1 direction "
            f"({s2.edge:.2g} at layer 2), and weaker directions, the weights' drift among them, are lost in it "
            "(float64 weights would keep them)"
        )
    reads = pooled_reads(observation)
    if reads is not None and reasons:  # short sentences verify; longer ones cannot
        reasons.append(
            f"a classifier with 2 attention layers: only the pooled token's layer-2 query reaches the loss, "
            f"so the layer-2 gradient holds at most {reads} directions per example (the query and the key and "
            f"value reads of its {observation.model.adapter.attention_heads} heads), and sentences longer than "
            f"{reads} tokens cannot be verified at layer 2 (a deeper model would leak them)"
        )
    if observation.gradient_noise_std > 0 and reasons:  # the noise explains what fell short
        reasons.append(
            f"{_noise(observation)}: ranks {s1.rank}/{s2.rank} count the directions above the noise "
            f"edge ({s1.edge:.2g}/{s2.edge:.2g} of the strongest direction; the weakest kept stands at noise ratio "
            f"{s1.noise:.2g}/{s2.noise:.2g}), and inputs weaker than the noise are lost in it"
        )
    if observation.model.task == "causal-lm":
        reasons.append(
            "causal LM: a sequence's last token predicts nothing scored, so its query gets no "
            "gradient and sentences are recovered without it"
        )
    sequences = outcome.sequences
    status = "exact" if not reasons and sequences else ("partial" if sequences else "failed")
    if status == "exact":
        one = len(sequences) == 1
        reason = (
            f"{'the sentence passes' if one else f'all {len(sequences)} sentences pass'} the layer-1 and "
            f"layer-2 span checks and explain{'s' if one else ''} all {s2.rank} directions of the layer-2 gradient"
        ) + (f"; {outcome.choice}" if outcome.choice else "")
    else:
        reason = "; ".join(reasons) or "no sentence passed the layer-2 span check"
    return Reconstruction(status, reason, tokens=outcome.tokens, sequences=sequences, diagnostics=diag)


def _count(n: int, noun: str) -> str:
    """``1 sentence``, ``3 sentences``: reasons reach the console and the report."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
