"""Gradient-inversion attacks: plain classes over tensors, registered by name.

No module here imports flwr or touches ground truth.
"""

import inspect

from fedaudit.attacks.base import Attack, Budget, BudgetExceeded, Reconstruction
from fedaudit.attacks.dager import Dager
from fedaudit.attacks.embedding_rows import EmbeddingRows
from fedaudit.attacks.labels import LabelRecovery
from fedaudit.attacks.optimization import DLG, IDLG, TAG, InvertingGradients
from fedaudit.attacks.spear import Spear

ATTACKS: dict[str, type] = {cls.name: cls for cls in (EmbeddingRows, LabelRecovery, Dager, Spear, DLG, IDLG,
                                                      InvertingGradients, TAG)}


def make_attack(name: str, device: str = "auto", options: dict | None = None) -> Attack:
    """An attack by name; ``device`` ("auto" = CUDA when present) goes to attacks that compute on
    one, ``options`` (the scenario's ``audit.<name>`` table) to the attack's constructor."""
    cls = ATTACKS[name]
    kwargs = dict(options or {})
    if "device" in inspect.signature(cls).parameters:
        kwargs["device"] = device
    return cls(**kwargs)


__all__ = ["ATTACKS", "Attack", "Budget", "BudgetExceeded", "Reconstruction", "make_attack"]
