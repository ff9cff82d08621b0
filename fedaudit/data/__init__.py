"""Federation data: text, images and tables; loading, the synthetic demo records, client partitions."""

from __future__ import annotations

from fedaudit.config import DataConfig
from fedaudit.data.arrays import ArrayExamples, TableSchema, load_images, load_table, modality
from fedaudit.data.demo import generate_demo_records
from fedaudit.data.examples import DataError, TextExamples
from fedaudit.data.partition import holdout_split, partition
from fedaudit.data.text import limit, load_text

Examples = TextExamples | ArrayExamples


def load_examples(cfg: DataConfig, seed: int) -> Examples:
    """The examples ``cfg`` describes, whatever their modality (``data.modality``)."""
    kind = modality(cfg)
    if kind == "text":
        return load_text(cfg, seed)
    examples = load_images(cfg) if kind == "image" else load_table(cfg)
    return limit(examples, cfg.max_examples, seed)


__all__ = [
    "ArrayExamples",
    "DataError",
    "Examples",
    "TableSchema",
    "TextExamples",
    "generate_demo_records",
    "holdout_split",
    "load_examples",
    "load_text",
    "partition",
]
