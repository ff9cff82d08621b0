"""The one entry point of local training: plain FedSGD/FedAvg, or DP-SGD through Opacus."""

from __future__ import annotations

from fedaudit.config import DPSGDConfig, TrainingConfig
from fedaudit.models import ModelBundle
from fedaudit.training.dp import dp_local_update
from fedaudit.training.local import Batch, LocalUpdate, fedavg, fedsgd


def local_update(
    bundle: ModelBundle, batch: Batch, training: TrainingConfig, seed: int, dp: DPSGDConfig | None = None
) -> LocalUpdate:
    """What a client computes from the global weights already loaded into ``bundle``
    (with ``dp``: DP-SGD through Opacus)."""
    bundle.model.train()
    if dp is not None:
        return dp_local_update(bundle, batch, training, dp, seed)
    if training.mode == "fedsgd":
        return fedsgd(bundle, batch)
    return fedavg(bundle, batch, training, seed)
