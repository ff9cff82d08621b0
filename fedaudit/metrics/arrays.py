"""Image and table leakage metrics over a one-to-one matching of reconstructions to references.

At most B reconstructions are paired with the B references by the Hungarian method on mean
squared error; references left unpaired score zero. PSNR of identical images is infinite:
it is reported capped at ``PSNR_CAP`` dB. SSIM is scikit-image's (window up to 7 pixels, smaller
for tiny images such as the 8 x 8 digits). An input counts as exactly recovered when its largest
absolute error is at most ``EXACT_TOLERANCE`` (inputs in [0, 1]).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

PSNR_CAP = 100.0
EXACT_TOLERANCE = 1e-4


def match_arrays(predictions: np.ndarray, references: np.ndarray) -> list[tuple[int, int]]:
    """Hungarian pairs (prediction, reference) minimizing the mean squared error."""
    if len(predictions) > len(references):
        raise ValueError(
            f"{len(predictions)} reconstructions for {len(references)} references: "
            "an attack may return at most one reconstruction per example"
        )
    if len(predictions) == 0:
        return []
    p = predictions.reshape(len(predictions), -1).astype(np.float64)
    r = references.reshape(len(references), -1).astype(np.float64)
    cost = ((p[:, None, :] - r[None, :, :]) ** 2).mean(-1)
    rows, cols = linear_sum_assignment(cost)
    return [(int(i), int(j)) for i, j in zip(rows, cols)]


def psnr(prediction: np.ndarray, reference: np.ndarray) -> float:
    if np.array_equal(prediction, reference):
        return PSNR_CAP
    return min(PSNR_CAP, float(peak_signal_noise_ratio(reference, prediction, data_range=1.0)))


def ssim(prediction: np.ndarray, reference: np.ndarray) -> float:
    """SSIM of two C x H x W images in [0, 1]; NaN (undefined) below 3 x 3, the smallest window."""
    side = min(reference.shape[-2:])
    if side < 3:
        return math.nan
    window = min(7, side if side % 2 else side - 1)
    return float(structural_similarity(reference, prediction, data_range=1.0, channel_axis=0, win_size=window))


def image_metrics(predictions: np.ndarray, references: np.ndarray) -> dict[str, float]:
    """Mean PSNR (dB), SSIM and exactly-recovered share over the references; the largest error of the pairs."""
    pairs = match_arrays(predictions, references)
    n = len(references)
    clipped = np.clip(predictions.astype(np.float64), 0.0, 1.0)
    refs = references.astype(np.float64)
    errors = [float(np.abs(predictions[i].astype(np.float64) - refs[j]).max()) for i, j in pairs]
    return {
        "psnr": sum(psnr(clipped[i], refs[j]) for i, j in pairs) / n,
        "ssim": sum(ssim(clipped[i], refs[j]) for i, j in pairs) / n,
        "exact_fraction": sum(e <= EXACT_TOLERANCE for e in errors) / n,
        "max_abs_error": max(errors) if errors else float("inf"),
    }


def table_metrics(predictions: np.ndarray, references: np.ndarray, schema: Any) -> dict[str, float]:
    """Share of features that read back right (``TableSchema.feature_hits``) and of whole records."""
    pairs = match_arrays(predictions, references)
    n, width = len(references), len(schema.columns)
    hits = [schema.feature_hits(predictions[i], references[j]) for i, j in pairs]
    return {
        "feature_accuracy": sum(float(h.sum()) for h in hits) / (n * width),
        "exact_fraction": sum(bool(h.all()) for h in hits) / n,
    }
