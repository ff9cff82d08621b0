"""Compact metric strings for the console, the report and ``fedaudit attack``."""

from __future__ import annotations

import math
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


def fixed(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals; "nan"/"inf" as such, and "-" for a missing one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    return f"{value:.{digits}f}" if math.isfinite(value) else str(float(value))


def format_metrics(metrics: dict[str, Any]) -> str:
    """``R-1 0.98 EM 0.50``; a metric without a finite value shows as such (``PSNR inf``, ``SSIM -``)."""
    return " ".join(f"{METRIC_ABBREV.get(key, key)} {fixed(value, 2)}" for key, value in metrics.items())


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 round``, ``3 rounds``; ``many`` for an irregular plural (``1 batch``, ``2 batches``)."""
    return f"{count} {word if count == 1 else (many or word + 's')}"
