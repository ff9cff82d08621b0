"""The ClientApp produces exactly the update the server sees, and the strategy audits and
aggregates it correctly (FedSGD: the server applies the step; FedAvg: weights)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from clients.app import client_round
from fedaudit import federation
from fedaudit.audit.auditor import Auditor
from server_strategies.strategy import AuditingStrategy
from tests.conftest import TINY_GPT2
from tests.helpers import scenario


@pytest.fixture(autouse=True)
def flower_identity(monkeypatch):
    """Messages need a run id, which Flower's runtime normally sets."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1, raising=False)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1, raising=False)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1, raising=False)


def _train_message(weights: dict[str, torch.Tensor], server_round: int, node: int) -> Message:
    content = RecordDict(
        {"arrays": ArrayRecord.from_torch_state_dict(weights), "config": ConfigRecord({"server-round": server_round})}
    )
    return Message(content=content, dst_node_id=node, message_type="train")


def _reference_gradient(sc, weights, partition_id: int, num_partitions: int, server_round: int):
    """Independent computation of the client's batch gradient with plain autograd."""
    data = federation.federated_data(sc)
    bundle = federation.build_global_model(sc, data.examples)
    bundle.load_state(weights)
    shard = federation.client_shard(data, sc, partition_id, num_partitions)
    index = federation.round_examples(shard, sc, server_round, partition_id)
    batch = federation.encode_examples(bundle, data.examples.subset(index), sc)
    names, params = zip(*[(n, p) for n, p in bundle.model.named_parameters() if p.requires_grad])
    logits = bundle.logits(batch.inputs())
    grads = torch.autograd.grad(F.cross_entropy(logits, batch.labels), params, allow_unused=True)
    return {n: (g if g is not None else torch.zeros_like(p)) for n, g, p in zip(names, grads, params)}, batch


def _strategy(sc, sink):
    data = federation.federated_data(sc)
    public = federation.build_global_model(sc, data.examples)
    inner = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=2, min_available_nodes=2)
    return AuditingStrategy(
        inner, Auditor.for_scenario(sc.audit, sink=sink.append), sc, public, sink=sink.append
    ), public


def test_fedsgd_client_sends_the_gradient_and_server_applies_the_step(cola_path) -> None:
    sc = scenario(
        *TINY_GPT2, f"data.source={cola_path}", "federation.clients=2", "training.batch_size=4", "training.lr=0.5"
    )
    records: list[dict] = []
    strategy, public = _strategy(sc, records)
    weights = {k: v.clone() for k, v in public.trainable_state().items()}
    strategy._global = {1: weights}
    replies = [client_round(sc, _train_message(weights, 1, node=10 + p), p, 2) for p in range(2)]
    expected = []
    for p, reply in enumerate(replies):
        sent = reply.content["arrays"].to_torch_state_dict()
        reference, batch = _reference_gradient(sc, weights, p, 2, 1)
        for name, grad in reference.items():
            torch.testing.assert_close(sent[name], grad, rtol=1e-5, atol=1e-7)
        truth = reply.content["audit"].to_torch_state_dict()
        assert torch.equal(truth["input_ids"], batch.input_ids) and torch.equal(truth["labels"], batch.labels)
        assert reply.content["metrics"]["num-examples"] == 4
        expected.append(reference)

    arrays, metrics = strategy.aggregate_train(1, replies)
    strategy.schedule.wait()  # the round's audits, recorded
    new = arrays.to_torch_state_dict()
    for name, w in weights.items():
        mean_grad = (expected[0][name] + expected[1][name]) / 2
        torch.testing.assert_close(new[name], w - 0.5 * mean_grad, rtol=1e-5, atol=1e-6)
    assert all(set(r.content.keys()) == {"arrays", "metrics"} for r in replies)
    audits = [r for r in records if r.type == "attack"]
    assert {(r.client, r.attack) for r in audits} == {(c, a) for c in "01" for a in sc.audit.attacks}
    assert all(r.metrics["token_recall"] == 1.0 for r in audits if r.attack == "embedding-rows")


def test_fedavg_client_sends_weights_and_observation_is_their_float64_difference(cola_path) -> None:
    sc = scenario(
        *TINY_GPT2,
        f"data.source={cola_path}",
        "audit.attacks=['embedding-rows']",
        "federation.clients=2",
        "training.mode=fedavg",
        "training.batch_size=4",
        "training.mini_batch_size=4",
        "training.local_epochs=2",
        "training.lr=0.1",
        "model.dtype=float64",
    )
    records: list[dict] = []
    strategy, public = _strategy(sc, records)
    weights = {k: v.clone() for k, v in public.trainable_state().items()}
    reply = client_round(sc, _train_message(weights, 1, node=3), 0, 2)
    sent = reply.content["arrays"].to_torch_state_dict()
    assert reply.content["client-info"]["local-steps"] == 2
    # Two full-batch SGD steps, computed independently.
    g0, _ = _reference_gradient(sc, weights, 0, 2, 1)
    w1 = {k: w - 0.1 * g0[k] for k, w in weights.items()}
    g1, _ = _reference_gradient(sc, w1, 0, 2, 1)
    for name, w in w1.items():
        torch.testing.assert_close(sent[name], w - 0.1 * g1[name], rtol=1e-9, atol=1e-12)

    seen = []
    strategy.auditor.submit = lambda obs, truth, _orig=strategy.auditor.submit, **hooks: (
        seen.append(obs) or _orig(obs, truth, **hooks)
    )
    strategy.audit_reply(1, reply, weights)
    (obs,) = seen
    assert obs.protocol.local_steps == 2 and obs.client == "0"
    for name in weights:
        assert obs.update[name].dtype == torch.float64
        torch.testing.assert_close(obs.update[name], sent[name] - weights[name])


def test_the_run_config_names_the_ray_cluster_the_audits_join() -> None:
    from fedaudit.scenario import scenario_from_run_config

    assert scenario_from_run_config({}).federation.ray_address is None
    joined = scenario_from_run_config({"ray-address": " 10.0.0.5:6379 ", "overrides": "audit.backend='ray'"})
    assert joined.federation.ray_address == "10.0.0.5:6379" and joined.audit.backend == "ray"
