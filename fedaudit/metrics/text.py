"""Text leakage metrics over a one-to-one matching of predictions to references.

At most B predictions are scored against the B references; the matching (Hungarian, on
ROUGE-1 + ROUGE-2 F1) pairs each prediction with at most one reference, so an attack cannot
gain by guessing many times, and the references never choose among extra guesses.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np
from rouge_score import rouge_scorer, tokenizers
from scipy.optimize import linear_sum_assignment


@lru_cache(maxsize=1)
def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)


def match(predictions: Sequence[str], references: Sequence[str]) -> list[tuple[int, int, dict[str, float]]]:
    """Hungarian matching; returns (prediction index, reference index, ROUGE F1s) per pair."""
    if len(predictions) > len(references):
        raise ValueError(
            f"{len(predictions)} predictions for {len(references)} references: "
            "an attack may return at most one prediction per example"
        )
    scores = [
        [{k: v.fmeasure for k, v in _scorer().score(ref, pred).items()} for ref in references] for pred in predictions
    ]
    if not scores:
        return []
    gain = np.array([[s["rouge1"] + s["rouge2"] for s in row] for row in scores])
    rows, cols = linear_sum_assignment(gain, maximize=True)
    return [(int(i), int(j), scores[i][j]) for i, j in zip(rows, cols)]


def _has_bigram(text: str) -> bool:
    return len(tokenizers.DefaultTokenizer(use_stemmer=False).tokenize(text)) >= 2


def text_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 and exact-match rate over the references (unmatched ones score 0).

    ROUGE-2 is undefined for a one-word reference (no bigrams; rouge-score reports 0 even for
    a perfect prediction), so it is averaged over the references that have a bigram (1.0 when
    none has).
    """
    pairs = match(predictions, references)
    n = len(references)
    out = {k: sum(s[k] for _, _, s in pairs) / n for k in ("rouge1", "rougeL")}
    bigrams = [j for j, ref in enumerate(references) if _has_bigram(ref)]
    by_ref = {j: s["rouge2"] for _, j, s in pairs}
    out["rouge2"] = sum(by_ref.get(j, 0.0) for j in bigrams) / len(bigrams) if bigrams else 1.0
    out["exact_match"] = sum(predictions[i].strip() == references[j].strip() for i, j, _ in pairs) / n
    return out


def token_precision_recall(predicted: Iterable[int], reference: Iterable[int]) -> tuple[float, float]:
    """Precision and recall of predicted tokens; multisets (Counter) or sets, as given."""
    pred, ref = Counter(predicted), Counter(reference)
    hits = sum((pred & ref).values())
    precision = hits / sum(pred.values()) if pred else 0.0
    recall = hits / sum(ref.values()) if ref else 1.0
    return precision, recall


def label_accuracy(predicted: Sequence[int], reference: Sequence[int]) -> float:
    """Share of the reference labels matched one-to-one by the predicted multiset."""
    if not reference:
        return 1.0
    return sum((Counter(predicted) & Counter(reference)).values()) / len(reference)
