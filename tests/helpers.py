"""Build real client updates for tests, exactly as a client computes them."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from fedaudit import federation
from fedaudit.attacks import Observation, Reconstruction
from fedaudit.audit.truth import GroundTruth
from fedaudit.config import Scenario
from fedaudit.federation.sampled import sampled_updates
from fedaudit.scenario import load_scenario


def scenario(*overrides: str) -> Scenario:
    return load_scenario(None, list(overrides))


def client_updates(sc: Scenario, batches: int, seed: int = 0) -> list[tuple[Observation, GroundTruth]]:
    """``batches`` (Observation, GroundTruth) pairs from the scenario's data."""
    data = federation.federated_data(sc)
    public = federation.build_global_model(sc, data.examples)
    return list(sampled_updates(sc, data, public, batches, seed))


class Returns:
    """A stand-in attack that returns a fixed reconstruction: for checking what the auditor
    and the run store make of it (scoring, comparison, files), not an attack's skill."""

    name = "returns"

    def __init__(self, reconstruction: Reconstruction) -> None:
        self.reconstruction = reconstruction

    def applicable(self, observation: Observation) -> tuple[bool, str]:
        return True, ""

    def run(self, observation: Observation, budget: object) -> Reconstruction:
        return self.reconstruction


def train_message(weights: dict[str, torch.Tensor], node: int, server_round: int = 1) -> Message:
    """The training instruction a server sends to ``node`` (needs the ``flower_identity`` fixture)."""
    content = RecordDict(
        {"arrays": ArrayRecord.from_torch_state_dict(weights), "config": ConfigRecord({"server-round": server_round})}
    )
    return Message(content=content, dst_node_id=node, message_type="train")


def when_and_where_aside(value: object) -> object:
    """A record (or summary) without what differs between equal runs: times (an attack's own
    ``seconds_*`` too), memory, the run id and which worker ran each audit (``worker_*``)."""
    if isinstance(value, dict):
        drop = ("seconds", "worker_", "peak_mem_mb", "run_id")
        return {k: when_and_where_aside(v) for k, v in value.items() if not k.startswith(drop)}
    if isinstance(value, list):
        return [when_and_where_aside(v) for v in value]
    return value
