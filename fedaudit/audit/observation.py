"""What the server legitimately sees of one client's round, and what it must never hand to attacks.

An :class:`Observation` holds only what an honest-but-curious server has: the round, which
client, the model it sent out (architecture, tokenizer, global weights), the update that came
back and the public protocol parameters. The client's true examples travel separately as a
:class:`GroundTruth`, which only the scorer reads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import torch

from fedaudit.models import ModelBundle


@dataclass(frozen=True)
class Protocol:
    """Public training protocol: the server sets these, so a real server knows them."""

    mode: Literal["fedsgd", "fedavg"]
    lr: float
    local_epochs: int
    batch_size: int
    mini_batch_size: int
    max_seq_len: int
    num_examples: int
    """Examples behind the update (Flower's ``num-examples``; under secure aggregation, the group's total)."""
    optimizer: Literal["sgd", "adam"] = "sgd"
    group_size: int = 1
    """Clients whose updates the server sees only as one sum (secure aggregation); 1 = one client."""
    lossy_transforms: tuple[str, ...] = ()
    """Update defenses that changed values before sending (pruning, quantization): public settings."""
    noise_std: float = 0.0
    """Standard deviation of the noise each entry of the update carries by protocol (DP-SGD, local
    DP, a noise defense), in the units of ``Observation.update``: public, like the defense settings."""

    @property
    def local_steps(self) -> int:
        """Local steps each client took (FedAvg: epochs times mini-batches of its share of examples)."""
        if self.mode == "fedsgd":
            return 1
        return self.local_epochs * math.ceil(self.num_examples / self.group_size / self.mini_batch_size)


@dataclass(frozen=True)
class Observation:
    round: int
    client: str
    model: ModelBundle
    """Public architecture knowledge: attacks may run it, but must load ``global_weights`` first."""
    global_weights: Mapping[str, torch.Tensor]
    update: Mapping[str, torch.Tensor]
    """FedSGD: the gradient the client sent. FedAvg: weights after local training minus
    ``global_weights``, in float64."""
    protocol: Protocol
    privacy: Mapping[str, float] = field(default_factory=dict)
    """What the client reported of its privacy budget (DP-SGD: ``epsilon`` at ``delta``)."""

    def __post_init__(self) -> None:
        for key in ("global_weights", "update", "privacy"):
            object.__setattr__(self, key, MappingProxyType(dict(getattr(self, key))))

    @property
    def gradient_noise_std(self) -> float:
        """``protocol.noise_std`` in the units of ``gradient()`` (FedAvg divides the update by lr * S)."""
        if self.protocol.mode == "fedsgd":
            return self.protocol.noise_std
        return self.protocol.noise_std / (self.protocol.lr * self.protocol.local_steps)

    @property
    def exact_gradient(self) -> bool:
        """True when ``gradient()`` is the batch gradient itself, not an estimate (one SGD step)."""
        return self.protocol.local_steps == 1 and self.protocol.optimizer == "sgd"

    def global_model(self) -> torch.nn.Module:
        """The public model with the round's global weights loaded, in eval mode."""
        self.model.load_state(dict(self.global_weights))
        return self.model.model.eval()

    def gradient(self, name: str) -> torch.Tensor:
        """The mean batch gradient of parameter ``name``, or its estimate after several steps.

        FedAvg with plain SGD gives W_E = W_0 - lr * sum_s g_s, so -(W_E - W_0) / (lr * S) is the
        mean of the S step gradients: exact for S = 1, and for S > 1 each g_s is taken at
        moving weights (and rows touched by any step stay non-zero). With Adam the step is
        rescaled per entry, so this is only a direction-preserving-per-entry proxy.
        """
        value = self.update[name]
        if self.protocol.mode == "fedsgd":
            return value
        return -value / (self.protocol.lr * self.protocol.local_steps)


@dataclass(frozen=True)
class GroundTruth:
    """The examples a client really used this round (simulation only; never given to attacks):
    token ids with their mask (text) or the float inputs (images, table rows), and the labels."""

    labels: torch.Tensor
    input_ids: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    features: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.labels.shape[0])

    def sequences(self) -> list[list[int]]:
        """Token ids of every example, padding removed (empty for non-text data)."""
        if self.input_ids is None:
            return []
        return [ids[mask.bool()].tolist() for ids, mask in zip(self.input_ids, self.attention_mask)]
