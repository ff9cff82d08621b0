"""Leakage metrics."""

from fedaudit.metrics.text import label_accuracy, match, text_metrics, token_precision_recall

__all__ = ["label_accuracy", "match", "text_metrics", "token_precision_recall"]
