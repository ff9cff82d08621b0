"""What the scorer alone reads: the examples a client really trained on (simulation only).

Attacks never see a GroundTruth: the auditor keeps it beside the Observation it hands out and
meets the two only when it scores a Reconstruction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GroundTruth:
    """The examples a client really used this round: token ids with their mask (text) or the
    float inputs (images, table rows), and the labels."""

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
