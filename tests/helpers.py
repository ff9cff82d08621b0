"""Build real client updates for tests, exactly as a client computes them."""

from __future__ import annotations

from fedaudit import federation
from fedaudit.audit.observation import GroundTruth, Observation
from fedaudit.config import Scenario, load_scenario
from fedaudit.training import local_update


def scenario(*overrides: str) -> Scenario:
    return load_scenario(None, list(overrides))


def client_updates(sc: Scenario, batches: int, seed: int = 0) -> list[tuple[Observation, GroundTruth]]:
    """``batches`` (Observation, GroundTruth) pairs from the scenario's data."""
    data = federation.federated_data(sc)
    public = federation.build_global_model(sc, data.examples.num_labels)
    client = federation.build_global_model(sc, data.examples.num_labels)
    initial = {k: v.clone() for k, v in public.trainable_state().items()}
    out = []
    for k, index in enumerate(federation.sample_batches(data, sc, batches, seed)):
        client.load_state(initial)
        batch = federation.encode_examples(client, data.examples.subset(index), sc)
        update = local_update(client, batch, sc.training, seed=k)
        obs = federation.observe(sc, 1, f"batch-{k}", public, initial, update.tensors, update.num_examples)
        out.append((obs, federation.ground_truth(batch)))
    return out
