"""Text data for the federation: loading, the synthetic demo records, and client partitions."""

from fedaudit.data.demo import generate_demo_records
from fedaudit.data.partition import holdout_split, partition
from fedaudit.data.text import DataError, TextExamples, load_text

__all__ = [
    "DataError",
    "TextExamples",
    "generate_demo_records",
    "holdout_split",
    "load_text",
    "partition",
]
