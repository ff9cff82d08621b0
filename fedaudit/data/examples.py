"""What every data loader returns, and the seeded random streams they draw from."""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from fedaudit.config import ConfigError


class DataError(ConfigError):
    """A data problem, phrased as one line naming the scenario key to change."""


@dataclass(frozen=True)
class TextExamples:
    """Parallel lists of texts and class indices, plus the name of each class."""

    texts: list[str]
    labels: list[int]
    label_names: list[str]

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")
        if not self.label_names:
            raise ValueError("label_names must name at least one class")

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Iterable[int]) -> TextExamples:
        """The examples at ``indices``, in that order; the label names stay the same."""
        idx = [int(i) for i in indices]
        return TextExamples(
            texts=[self.texts[i] for i in idx],
            labels=[self.labels[i] for i in idx],
            label_names=list(self.label_names),
        )


def seeded_rng(seed: int, purpose: str) -> np.random.Generator:
    """A generator for one purpose, so that e.g. subsetting and partitioning draw independent
    streams from the same scenario seed (and negative seeds work)."""
    return np.random.default_rng([zlib.crc32(purpose.encode()), seed % 2**64])
