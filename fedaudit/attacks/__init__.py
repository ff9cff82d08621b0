"""Gradient-inversion attacks: plain classes over tensors, registered by name.

No module here imports flwr or touches ground truth.
"""

from fedaudit.attacks.base import Attack, Budget, BudgetExceeded, Reconstruction
from fedaudit.attacks.embedding_rows import EmbeddingRows
from fedaudit.attacks.labels import LabelRecovery

ATTACKS: dict[str, type] = {cls.name: cls for cls in (EmbeddingRows, LabelRecovery)}


def make_attack(name: str) -> Attack:
    return ATTACKS[name]()


__all__ = ["ATTACKS", "Attack", "Budget", "BudgetExceeded", "Reconstruction", "make_attack"]
