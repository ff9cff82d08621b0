"""The client's update: local training per the scenario, then the update defenses it applies
before sending (what leaves the client is exactly what the server audits)."""

from __future__ import annotations

from dataclasses import replace

from fedaudit.config import Scenario
from fedaudit.defenses import apply_update_defenses
from fedaudit.models import ModelBundle
from fedaudit.training.local import Batch, LocalUpdate
from fedaudit.training.update import local_update


def client_update(bundle: ModelBundle, batch: Batch, scenario: Scenario, seed: int) -> LocalUpdate:
    """What a client sends: local training from the weights loaded in ``bundle``, then the update
    defenses of ``[defenses]`` (FedAvg: applied to the weight difference, which is re-added)."""
    start = {k: v.clone() for k, v in bundle.trainable_state().items()}
    update = local_update(bundle, batch, scenario.training, seed=seed, dp=scenario.defenses.dp_sgd)
    if not scenario.defenses.order:
        return update
    if update.kind == "gradient":
        return replace(update, tensors=apply_update_defenses(update.tensors, scenario.defenses, seed))
    delta = {k: v.double() - start[k].double() for k, v in update.tensors.items()}
    delta = apply_update_defenses(delta, scenario.defenses, seed)
    return replace(update, tensors={k: (start[k].double() + d).to(start[k].dtype) for k, d in delta.items()})
