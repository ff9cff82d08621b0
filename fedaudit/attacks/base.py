"""The attack contract: ``applicable(observation)`` and ``run(observation, budget)``.

Attacks are plain classes over tensors. They receive an Observation (what the server sees)
and a Budget; they never receive ground truth, and they state honestly how sure they are.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

if TYPE_CHECKING:
    from fedaudit.audit.observation import Observation

Status = Literal["exact", "partial", "failed"]


def resolve_device(device: str) -> Any:
    """``audit.device``: "auto" is CUDA when present, else the CPU."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class BudgetExceeded(Exception):
    """Raised by ``Budget.check()`` when an attack has used up its time."""


class Budget:
    """A wall-clock allowance; long loops call ``check()`` so the auditor can move on."""

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self._deadline = time.monotonic() + self.seconds

    def remaining(self) -> float:
        return max(0.0, self._deadline - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self._deadline

    def check(self) -> None:
        if self.expired():
            raise BudgetExceeded(f"time budget of {self.seconds:g} s used up")


@dataclass
class Reconstruction:
    """What an attack recovered, in the attack's own words.

    ``tokens``: token ids known to be in the batch (unordered, no counts).
    ``sequences``: ordered token sequences, at most one per example (at most B in all).
    ``labels``: the multiset of labels, one per recovered example.
    ``inputs``: recovered examples as the model reads them (images N x C x H x W, table rows
    N x F, or an inner layer's features), at most one per example.
    """

    status: Status
    reason: str = ""
    tokens: set[int] | None = None
    sequences: list[list[int]] | None = None
    labels: list[int] | None = None
    inputs: Any = None
    diagnostics: dict[str, Any] = field(default_factory=dict)


class Attack(Protocol):
    name: ClassVar[str]

    def applicable(self, observation: Observation) -> tuple[bool, str]:
        """Whether the attack can say anything about this update, and if not, why."""

    def run(self, observation: Observation, budget: Budget) -> Reconstruction:
        """Reconstruct what the client trained on, within ``budget``."""
