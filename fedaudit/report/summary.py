"""Shared views of records: which metric headlines an attack, and compact metric strings."""

from __future__ import annotations

from collections import Counter
from statistics import mean
from typing import Any

METRIC_ABBREV = {"token_precision": "P", "token_recall": "R", "label_accuracy": "acc", "rouge1": "R-1",
                 "rouge2": "R-2", "rougeL": "R-L", "exact_match": "EM", "psnr": "PSNR", "ssim": "SSIM",
                 "exact_fraction": "exact", "max_abs_error": "max err", "feature_accuracy": "features"}


def format_metrics(metrics: dict[str, Any]) -> str:
    parts = []
    for key, value in metrics.items():
        label = METRIC_ABBREV.get(key, key)
        parts.append(f"{label} {value:.2f}" if isinstance(value, (int, float)) else f"{label} {value}")
    return " ".join(parts)


def attack_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("type", "attack") == "attack" and r.get("attack")]


def utility_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted((r for r in records if r.get("type") == "utility"), key=lambda r: r["round"])


def mean_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean of each metric over the records that report it as a number."""
    keys = dict.fromkeys(k for r in rows for k in r["metrics"])
    values = {k: [r["metrics"][k] for r in rows if isinstance(r["metrics"].get(k), (int, float))] for k in keys}
    return {k: mean(v) for k, v in values.items() if v}


def status_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    return dict(Counter(r["status"] for r in rows))
