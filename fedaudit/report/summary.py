"""Compact metric strings for the console, the report and ``fedaudit attack``."""

from __future__ import annotations

from typing import Any

METRIC_ABBREV = {
    "token_precision": "P",
    "token_recall": "R",
    "label_accuracy": "acc",
    "rouge1": "R-1",
    "rouge2": "R-2",
    "rougeL": "R-L",
    "exact_match": "EM",
    "psnr": "PSNR",
    "ssim": "SSIM",
    "exact_fraction": "exact",
    "max_abs_error": "max err",
    "feature_accuracy": "features",
}


def format_metrics(metrics: dict[str, Any]) -> str:
    parts = []
    for key, value in metrics.items():
        label = METRIC_ABBREV.get(key, key)
        parts.append(f"{label} {value:.2f}" if isinstance(value, (int, float)) else f"{label} {value}")
    return " ".join(parts)
