"""The side-by-side view of a scored reconstruction, for the report.

Each true example is set beside what the attack recovered for it, paired exactly as the scorer
pairs them (``metrics.text.match`` for sentences, ``metrics.arrays.match_arrays`` for images
and table rows), with its own score; private identifiers that came back verbatim are counted
(``metrics.pii.leaked``). Like the scores, this reads the ground truth and so is built only
here, in the auditor, never by an attack.

At most ``cap`` examples are kept per record, so a run of many clients stays small; ``total``
says how many there were. Images are not put in the record: they are returned as arrays under
run-directory paths (``<prefix>-original-NN.png``) for the run store to write as PNG files.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedaudit.attacks.base import Reconstruction
from fedaudit.audit.truth import GroundTruth
from fedaudit.metrics import pii
from fedaudit.metrics.arrays import EXACT_TOLERANCE, match_arrays, psnr, ssim
from fedaudit.metrics.text import match
from fedaudit.models import ModelBundle

Images = dict[str, np.ndarray]


def as_array(x: Any) -> np.ndarray:
    return x.detach().cpu().double().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=np.float64)


def recovered_image_paths(count: int, prefix: str, cap: int) -> list[str]:
    return [f"{prefix}-recovered-{i:02d}.png" for i in range(min(count, cap))]


def compare(
    rec: Reconstruction, truth: GroundTruth, bundle: ModelBundle, cap: int, prefix: str
) -> tuple[dict[str, Any] | None, Images]:
    """The comparison table of ``rec`` against ``truth`` and the original images it names."""
    out: dict[str, Any] = {}
    images: Images = {}
    if bundle.is_text and rec.sequences is not None:
        out = _text_pairs(rec, truth, bundle, cap)
    elif rec.inputs is not None and truth.features is not None:
        predicted, reference = as_array(rec.inputs), as_array(truth.features)
        if predicted.shape[1:] == reference.shape[1:]:
            if bundle.table_schema is not None:
                out = _table_pairs(predicted, reference, bundle.table_schema, cap)
            elif reference.ndim == 4:
                out, images = _image_pairs(predicted, reference, cap, prefix)
    if rec.labels is not None:
        out["labels"] = {"true": truth.labels.tolist()[:cap], "recovered": list(rec.labels)[:cap]}
    return out or None, images


def _text_pairs(rec: Reconstruction, truth: GroundTruth, bundle: ModelBundle, cap: int) -> dict[str, Any]:
    tokenizer = bundle.tokenizer
    predicted = [tokenizer.decode(seq) for seq in rec.sequences]
    originals = [tokenizer.decode(seq) for seq in truth.sequences()]
    by_reference = {j: (i, scores) for i, j, scores in match(predicted, originals)}
    pairs = []
    for j, original in enumerate(originals[:cap]):
        i, scores = by_reference.get(j, (None, {}))
        recovered = None if i is None else predicted[i]
        pairs.append(
            {
                "original": original,
                "recovered": recovered,
                "exact": recovered is not None and recovered.strip() == original.strip(),
                "score": {"rouge1": scores.get("rouge1", 0.0)},
            }
        )
    return {
        "kind": "text",
        "pairs": pairs,
        "total": len(originals),
        "shown": len(pairs),
        "pii": pii.leaked(predicted, originals),
    }


def _image_pairs(predicted: np.ndarray, reference: np.ndarray, cap: int, prefix: str) -> tuple[dict[str, Any], Images]:
    by_reference = {j: i for i, j in match_arrays(predicted, reference)}
    recovered_paths = recovered_image_paths(len(predicted), prefix, cap)
    clipped = np.clip(predicted, 0.0, 1.0)
    pairs, images = [], {}
    for j in range(min(len(reference), cap)):
        original = f"{prefix}-original-{j:02d}.png"
        images[original] = reference[j]
        i = by_reference.get(j)
        pair: dict[str, Any] = {"original": original, "recovered": None, "exact": False, "score": {}}
        if i is not None:
            error = float(np.abs(predicted[i] - reference[j]).max())
            pair["recovered"] = recovered_paths[i] if i < len(recovered_paths) else None
            pair["exact"] = error <= EXACT_TOLERANCE
            pair["score"] = {"psnr": psnr(clipped[i], reference[j]), "ssim": ssim(clipped[i], reference[j])}
        pairs.append(pair)
    return {"kind": "image", "pairs": pairs, "total": len(reference), "shown": len(pairs)}, images


def _table_pairs(predicted: np.ndarray, reference: np.ndarray, schema: Any, cap: int) -> dict[str, Any]:
    by_reference = {j: i for i, j in match_arrays(predicted, reference)}
    names = [c.name for c in schema.columns]
    pairs = []
    for j in range(min(len(reference), cap)):
        i = by_reference.get(j)
        pair: dict[str, Any] = {"original": schema.decode(reference[j]), "recovered": None, "exact": False}
        pair["score"], pair["differs"] = {}, list(names)
        if i is not None:
            hits = schema.feature_hits(predicted[i], reference[j])
            pair["recovered"] = schema.decode(predicted[i])
            pair["exact"] = bool(hits.all())
            pair["score"] = {"feature_accuracy": float(hits.mean())}
            pair["differs"] = [name for name, hit in zip(names, hits) if not hit]
        pairs.append(pair)
    return {"kind": "table", "pairs": pairs, "total": len(reference), "shown": len(pairs)}
