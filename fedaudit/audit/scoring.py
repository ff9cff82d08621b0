"""Score a reconstruction against the ground truth (the only place both meet)."""

from __future__ import annotations

from itertools import chain

from transformers import PreTrainedTokenizerBase

from fedaudit.attacks.base import Reconstruction
from fedaudit.audit.observation import GroundTruth
from fedaudit.metrics import label_accuracy, text_metrics, token_precision_recall


def score(rec: Reconstruction, truth: GroundTruth, tokenizer: PreTrainedTokenizerBase) -> dict[str, float]:
    """Fractions in [0, 1]. Token sets are compared as sets, token sequences as multisets."""
    metrics: dict[str, float] = {}
    references = truth.sequences()
    if rec.sequences is not None:
        predicted = [tokenizer.decode(seq) for seq in rec.sequences]
        metrics.update(text_metrics(predicted, [tokenizer.decode(seq) for seq in references]))
        p, r = token_precision_recall(chain.from_iterable(rec.sequences), chain.from_iterable(references))
        metrics.update(token_precision=p, token_recall=r)
    elif rec.tokens is not None:
        p, r = token_precision_recall(set(rec.tokens), set(chain.from_iterable(references)))
        metrics.update(token_precision=p, token_recall=r)
    if rec.labels is not None:
        metrics["label_accuracy"] = label_accuracy(rec.labels, truth.labels.tolist())
    return metrics


def preview(rec: Reconstruction, tokenizer: PreTrainedTokenizerBase, limit: int = 40) -> dict:
    """A short, JSON-ready view of what was recovered, for records and reports."""
    out: dict = {}
    if rec.sequences is not None:
        out["texts"] = [tokenizer.decode(seq) for seq in rec.sequences[:limit]]
    elif rec.tokens is not None:
        # Longest first: whole words and numbers say more about what leaked than punctuation.
        pieces = sorted((tokenizer.decode([t]) for t in rec.tokens), key=lambda s: (-len(s.strip()), s))
        out["tokens"] = pieces[:limit]
        out["tokens_total"] = len(pieces)
    if rec.labels is not None:
        out["labels"] = list(rec.labels)
    return out
