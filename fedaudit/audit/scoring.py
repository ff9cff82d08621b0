"""Score a reconstruction against the ground truth (the only place both meet)."""

from __future__ import annotations

from itertools import chain

import numpy as np

from fedaudit.attacks.base import Reconstruction
from fedaudit.audit.comparison import Images, as_array, recovered_image_paths
from fedaudit.audit.truth import GroundTruth
from fedaudit.metrics import label_accuracy, text_metrics, token_precision_recall
from fedaudit.metrics.arrays import image_metrics, table_metrics
from fedaudit.models import ModelBundle


def score(rec: Reconstruction, truth: GroundTruth, bundle: ModelBundle) -> dict[str, float]:
    """Fractions in [0, 1] (PSNR in dB). Token sets are compared as sets, token sequences as
    multisets; recovered inputs are compared with the true ones when they have their shape."""
    metrics: dict[str, float] = {}
    if bundle.is_text:
        metrics.update(_text(rec, truth, bundle))
    elif rec.inputs is not None and truth.features is not None:
        predicted, reference = as_array(rec.inputs), as_array(truth.features)
        if predicted.shape[1:] == reference.shape[1:]:  # an inner layer's features have another shape
            schema = bundle.table_schema
            metrics.update(
                table_metrics(predicted, reference, schema)
                if schema is not None
                else image_metrics(predicted, reference)
            )
    if rec.labels is not None:
        metrics["label_accuracy"] = label_accuracy(rec.labels, truth.labels.tolist())
    return metrics


def _text(rec: Reconstruction, truth: GroundTruth, bundle: ModelBundle) -> dict[str, float]:
    tokenizer, references = bundle.tokenizer, truth.sequences()
    if rec.sequences is not None:
        predicted = [tokenizer.decode(seq) for seq in rec.sequences]
        out = text_metrics(predicted, [tokenizer.decode(seq) for seq in references])
        p, r = token_precision_recall(chain.from_iterable(rec.sequences), chain.from_iterable(references))
        return {**out, "token_precision": p, "token_recall": r}
    if rec.tokens is not None:
        p, r = token_precision_recall(set(rec.tokens), set(chain.from_iterable(references)))
        return {"token_precision": p, "token_recall": r}
    return {}


def preview(rec: Reconstruction, bundle: ModelBundle, cap: int, prefix: str) -> tuple[dict, Images]:
    """A JSON-ready view of what was recovered (at most ``cap`` examples; ``total`` says how many
    there were) and the recovered images under their run-directory paths (``prefix``...)."""
    out: dict = {}
    images: Images = {}
    tokenizer = bundle.tokenizer
    if rec.sequences is not None and tokenizer is not None:
        out["texts"] = [tokenizer.decode(seq) for seq in rec.sequences[:cap]]
        out["total"] = len(rec.sequences)
    elif rec.tokens is not None and tokenizer is not None:
        # Longest first: whole words and numbers say more about what leaked than punctuation.
        pieces = sorted((tokenizer.decode([t]) for t in rec.tokens), key=lambda s: (-len(s.strip()), s))
        out["tokens"] = pieces[:cap]
        out["tokens_total"] = len(pieces)
    if rec.inputs is not None:
        inputs = as_array(rec.inputs)
        out["inputs"] = {"count": int(inputs.shape[0]), "shape": list(inputs.shape[1:])}
        out["total"] = int(inputs.shape[0])
        if bundle.table_schema is not None and inputs.shape[1:] == (bundle.table_schema.width,):
            out["records"] = [bundle.table_schema.decode(row) for row in inputs[:cap]]
        elif inputs.ndim == 4 and inputs.shape[1] in (1, 3):  # images, not an inner layer's features
            out["images"] = recovered_image_paths(len(inputs), prefix, cap)
            images = dict(zip(out["images"], np.clip(inputs, 0.0, 1.0)))
    if rec.labels is not None:
        out["labels"] = list(rec.labels)[:cap]
    if "total" in out:
        out["shown"] = min(out["total"], cap)
    return out, images
