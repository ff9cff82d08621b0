"""Gradient-inversion attacks: plain classes over tensors, registered by name.

No module here imports flwr or touches ground truth.
"""

import inspect

from fedaudit.attacks.base import Attack, Budget, BudgetExceeded, Reconstruction
from fedaudit.attacks.dager import Dager
from fedaudit.attacks.embedding_rows import EmbeddingRows
from fedaudit.attacks.labels import LabelRecovery

ATTACKS: dict[str, type] = {cls.name: cls for cls in (EmbeddingRows, LabelRecovery, Dager)}


def make_attack(name: str, device: str = "auto") -> Attack:
    """An attack by name; ``device`` ("auto" = CUDA when present) goes to attacks that compute on one."""
    cls = ATTACKS[name]
    if "device" in inspect.signature(cls).parameters:
        return cls(device=device)
    return cls()


__all__ = ["ATTACKS", "Attack", "Budget", "BudgetExceeded", "Reconstruction", "make_attack"]
