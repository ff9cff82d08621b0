"""Gradient-inversion attacks: plain classes over tensors, registered by name in ``REGISTRY``.

The contract (Observation, Protocol, Budget, Reconstruction, Attack, Registry) is
``fedaudit.attacks.base``. No module here imports flwr or touches ground truth.
"""

from fedaudit.attacks.base import Attack, Budget, BudgetExceeded, Observation, Protocol, Reconstruction, Registry
from fedaudit.attacks.dager import Dager
from fedaudit.attacks.embedding_rows import EmbeddingRows
from fedaudit.attacks.labels import LabelRecovery
from fedaudit.attacks.optimization import DLG, IDLG, InvertingGradients
from fedaudit.attacks.spear import Spear
from fedaudit.attacks.tag import TAG

REGISTRY = Registry([EmbeddingRows, LabelRecovery, Dager, Spear, DLG, IDLG, InvertingGradients, TAG])

__all__ = ["REGISTRY", "Attack", "Budget", "BudgetExceeded", "Observation", "Protocol", "Reconstruction"]
