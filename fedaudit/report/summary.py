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


#: Longer reasons (a client's out-of-memory report with the machine's process list) are cut here
#: for display; the records keep the whole text.
CLIP_AT = 300


def compact(value: Any, column_max: float | None = None) -> str | None:
    """A number for a table cell: at most 6 significant digits, an integral value without
    decimals (``21.000000356`` -> ``21``, ``149637.0005`` -> ``149637``); None for a non-number.
    With ``column_max`` (the largest magnitude in the value's column) the 6 digits are the
    column's: ``-1.2e-05`` in a column that reaches 914 shows as ``0``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, int) or not math.isfinite(value):
        return str(value)
    if column_max and math.isfinite(column_max) and column_max > 0:
        quantum = 10.0 ** (math.floor(math.log10(column_max)) - 5)
        value = round(value / quantum) * quantum
    if 1e6 <= abs(value) < 1e15:
        return str(round(value))
    text = f"{value:.6g}"
    return "0" if text == "-0" else text


def clip(text: str, limit: int = CLIP_AT) -> str:
    """``text`` cut to about ``limit`` characters at a word, with an ellipsis and its full length."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    if " " in cut[limit // 2 :]:
        cut = cut[: cut.rindex(" ")]
    return f"{cut.rstrip()} … ({len(text):,} characters in all; records.jsonl keeps the whole text)"


def format_metrics(metrics: dict[str, Any]) -> str:
    """``R-1 0.98 EM 0.50``; a metric without a finite value shows as such (``PSNR inf``, ``SSIM -``)."""
    return " ".join(f"{METRIC_ABBREV.get(key, key)} {fixed(value, 2)}" for key, value in metrics.items())


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 round``, ``3 rounds``; ``many`` for an irregular plural (``1 batch``, ``2 batches``)."""
    return f"{count} {word if count == 1 else (many or word + 's')}"
