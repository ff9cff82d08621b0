"""DP on the client (DP-SGD with Opacus, Flower's LocalDpMod), on the server (Flower's central DP
with the auditor between clipping and noise), the reported privacy budget, and the local optimizer."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity
from opacus.accountants import create_accountant

from clients.app import build_client_app, client_round
from fedaudit import federation
from fedaudit.audit.auditor import Auditor
from fedaudit.audit.records import attack_records, read_records
from fedaudit.training.local import loss_fn
from server_strategies.central_dp import with_central_dp
from server_strategies.strategy import AuditingStrategy
from tests.conftest import TINY_GPT2, run_cli
from tests.helpers import scenario

DIGITS = [
    "model.name=mlp",
    "model.config={hidden=[32]}",
    "data.source=digits",
    "model.dtype=float64",
    "federation.clients=2",
]
FEDAVG = ["training.mode=fedavg", "training.batch_size=8", "training.mini_batch_size=4", "training.lr=0.5"]


@pytest.fixture(autouse=True)
def flower_identity(monkeypatch):
    """Messages need a run id, which Flower's runtime normally sets."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1, raising=False)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1, raising=False)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1, raising=False)


def _setup(sc, partition_id: int = 0, server_round: int = 1):
    data = federation.federated_data(sc)
    bundle = federation.build_global_model(sc, data.examples)
    shard = federation.client_shard(data, sc, partition_id, sc.federation.clients)
    index = federation.round_examples(shard, sc, server_round, partition_id)
    return bundle, federation.encode_examples(bundle, data.examples.subset(index), sc)


def _clipped_mean(bundle, batch, clip: float) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Per-example gradients by a plain loop, each scaled to L2 norm <= clip, averaged."""
    named = [(n, p) for n, p in bundle.model.named_parameters() if p.requires_grad]
    total = {n: torch.zeros_like(p) for n, p in named}
    norms = []
    for i in range(len(batch)):
        grads = torch.autograd.grad(loss_fn(bundle, batch.select(torch.tensor([i]))), [p for _, p in named])
        norm = float(torch.sqrt(sum((g**2).sum() for g in grads)))
        norms.append(norm)
        for (name, _), g in zip(named, grads):
            total[name] += g * min(1.0, clip / norm)
    return {n: t / len(batch) for n, t in total.items()}, norms


@pytest.mark.parametrize("model", ["digits", "gpt2"])
def test_fedsgd_dp_update_is_the_mean_of_clipped_per_example_gradients(model, cola_path) -> None:
    base = (
        DIGITS
        if model == "digits"
        else [
            *TINY_GPT2,
            f"data.source={cola_path}",
            "data.max_examples=200",
            "model.dtype=float64",
            "federation.clients=2",
        ]
    )
    clip = 0.5 if model == "digits" else 0.05
    sc = scenario(*base, "training.batch_size=4", f"defenses.dp_sgd={{noise_multiplier=0.0, max_grad_norm={clip}}}")
    bundle, batch = _setup(sc)
    weights = {k: v.clone() for k, v in bundle.trainable_state().items()}
    expected, norms = _clipped_mean(bundle, batch, clip)
    assert sum(n > clip for n in norms) >= 2  # clipping is active
    update = federation.client_update(bundle, batch, sc, seed=3)
    assert update.kind == "gradient" and update.privacy.sample_rate == 1.0 and update.privacy.steps == 1
    scale = max(float(t.abs().max()) for t in expected.values())
    for name, value in expected.items():
        # Opacus scales by C / (norm + 1e-6): relative differences of ~1e-6 / norm
        torch.testing.assert_close(update.tensors[name], value, rtol=1e-4, atol=1e-9 * scale)
    assert all(torch.equal(bundle.trainable_state()[k], w) for k, w in weights.items())  # FedSGD: no step
    assert not hasattr(bundle.model, "autograd_grad_sample_hooks")  # Opacus's hooks are gone

    # With noise: the same clipped mean plus N(0, (sigma C / B)^2) on every entry.
    noisy = sc.model_copy(deep=True)
    noisy.defenses.dp_sgd.noise_multiplier = 2.0
    sent = federation.client_update(bundle, batch, noisy, seed=3).tensors
    residual = torch.cat([(sent[k] - expected[k]).flatten() for k in expected])
    assert float(residual.std()) == pytest.approx(2.0 * clip / len(batch), rel=0.05)


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_reported_epsilon_is_opacus_accountant_over_the_rounds(accountant) -> None:
    sc = scenario(
        *DIGITS,
        *FEDAVG,
        "training.local_epochs=2",
        f'defenses.dp_sgd={{noise_multiplier=1.1, max_grad_norm=1.0, accountant="{accountant}", delta=1e-4}}',
    )
    weights = {k: v.clone() for k, v in _setup(sc)[0].trainable_state().items()}
    reported = []
    for server_round in (1, 3):
        reply = client_round(sc, _train_message(weights, server_round), 0, 2)
        metrics = reply.content["metrics"]
        assert reply.content["client-info"]["local-steps"] == 4  # 2 epochs x 8 / 4
        acc = create_accountant(accountant)
        acc.history = [(1.1, 4 / 8, 4 * server_round)]
        assert metrics["dp-epsilon"] == pytest.approx(acc.get_epsilon(delta=1e-4), abs=1e-6)
        assert metrics["dp-delta"] == 1e-4
        reported.append(metrics["dp-epsilon"])
    assert 0 < reported[0] < reported[1]

    free = scenario(*DIGITS, "defenses.dp_sgd={noise_multiplier=0.0}")
    reply = client_round(free, _train_message(weights, 1), 0, 2)
    assert reply.content["metrics"]["dp-epsilon"] == math.inf


def test_dp_fedavg_with_poisson_sampling_trains_and_is_seeded() -> None:
    sc = scenario(
        *DIGITS,
        *FEDAVG,
        "training.local_epochs=3",
        "defenses.dp_sgd={noise_multiplier=0.5, max_grad_norm=1.0, poisson_sampling=true}",
    )
    bundle, batch = _setup(sc)
    weights = {k: v.clone() for k, v in bundle.trainable_state().items()}
    first = federation.client_update(bundle, batch, sc, seed=7)
    bundle.load_state(weights)
    again = federation.client_update(bundle, batch, sc, seed=7)
    assert first.steps == 6 and first.privacy.sample_rate == 0.5
    for k, w in weights.items():
        assert torch.equal(first.tensors[k], again.tensors[k]) and not torch.equal(first.tensors[k], w)


def test_dp_simulation_records_epsilon_growing_with_the_round(tmp_path: Path) -> None:
    proc = run_cli(
        "run",
        "--set",
        f"output.dir={tmp_path}",
        "--set",
        "model.name=mlp",
        "--set",
        "model.config={hidden=[32]}",
        "--set",
        "data.source=digits",
        "--set",
        "federation.clients=2",
        "--set",
        "federation.rounds=2",
        "--set",
        "training.batch_size=4",
        "--set",
        "training.lr=0.1",
        "--set",
        'audit.attacks=["labels"]',
        "--set",
        "audit.budget_seconds=10",
        "--set",
        'defenses.dp_sgd={noise_multiplier=1.0, max_grad_norm=1.0, accountant="rdp"}',
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    audits = attack_records(read_records(run_dir))
    assert len(audits) == 2 * 2
    acc = create_accountant("rdp")
    for r in audits:
        acc.history = [(1.0, 1.0, r.round)]
        assert r.diagnostics["epsilon"] == pytest.approx(acc.get_epsilon(delta=1e-5), abs=1e-6)
        assert r.diagnostics["delta"] == 1e-5
    by_round = {rnd: {r.diagnostics["epsilon"] for r in audits if r.round == rnd} for rnd in (1, 2)}
    assert max(by_round[1]) < min(by_round[2])


def _train_message(weights, server_round: int, node: int = 5, **config) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord.from_torch_state_dict(weights),
            "config": ConfigRecord({"server-round": server_round, **config}),
        }
    )
    return Message(content=content, dst_node_id=node, message_type="train")


def _norm(update: dict[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum((v.double() ** 2).sum() for v in update.values())))


def _auditing(sc, records):
    data = federation.federated_data(sc)
    public = federation.build_global_model(sc, data.examples)
    inner = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=2, min_available_nodes=2)
    auditing = AuditingStrategy(
        inner, Auditor.for_scenario(sc.audit, sink=records.append), sc, public, sink=records.append
    )
    seen = []
    auditor = auditing.auditor
    auditor.submit = lambda obs, truth, _orig=auditor.submit, **hooks: (
        seen.append((obs, truth)) or _orig(obs, truth, **hooks)
    )
    return auditing, public, seen


def _central_dp(clipping: str, sigma: float, clip: float):
    """The auditing strategy inside Flower's central-DP wrapper, as round 1's configure_train leaves it:
    (scenario, strategy, global weights, records, what the auditor saw)."""
    sc = scenario(
        *DIGITS,
        *FEDAVG,
        'audit.attacks=["labels"]',
        f'defenses.central_dp={{noise_multiplier={sigma}, clipping_norm={clip}, clipping="{clipping}"}}',
    )
    records: list[dict] = []
    auditing, public, seen = _auditing(sc, records)
    strategy = with_central_dp(auditing, sc)
    weights = {k: v.clone() for k, v in public.trainable_state().items()}
    strategy.wrapper.current_arrays = ArrayRecord.from_torch_state_dict(weights)  # what configure_train keeps
    auditing._global = {1: weights}
    return sc, strategy, weights, records, seen


def test_central_dp_server_side_auditor_sees_clipped_update_aggregate_is_noised() -> None:
    clip, sigma = 0.05, 1.0
    sc, strategy, weights, records, seen = _central_dp("server", sigma, clip)
    replies = [client_round(sc, _train_message(weights, 1, node=10 + p), p, 2) for p in range(2)]
    raw = [{k: v - weights[k] for k, v in r.content["arrays"].to_torch_state_dict().items()} for r in replies]
    assert all(_norm(d) > clip for d in raw)

    aggregate, _ = strategy.aggregate_train(1, replies)
    strategy.inner.schedule.wait()  # the round's audits, recorded
    assert [obs.client for obs, _ in seen] == ["0", "1"]
    assert all(truth is not None and truth.labels.numel() == 8 for _, truth in seen)  # ground truth got through
    for (obs, _), delta in zip(seen, raw):
        assert _norm(obs.update) == pytest.approx(clip, rel=1e-6)
        factor = clip / _norm(delta)
        for k in delta:
            torch.testing.assert_close(obs.update[k], delta[k] * factor, rtol=1e-6, atol=1e-12)
    assert {r.client for r in records if r.type == "attack"} == {"0", "1"}
    clipped_mean = {k: weights[k] + (seen[0][0].update[k] + seen[1][0].update[k]) / 2 for k in weights}
    new = aggregate.to_torch_state_dict()
    noise = torch.cat([(new[k].double() - clipped_mean[k]).flatten() for k in weights])
    assert float(noise.std()) == pytest.approx(sigma * clip / 2, rel=0.05)


@pytest.mark.parametrize("clipping", ["server", "client"])
def test_central_dp_records_a_failed_client_although_flower_skips_the_round(clipping) -> None:
    from flwr.app import Error

    sc, strategy, weights, records, seen = _central_dp(clipping, 1.0, 0.05)
    good = client_round(sc, _train_message(weights, 1, node=10), 0, 2)
    failed = Message(Error(code=0, reason="out of memory"), reply_to=_train_message(weights, 1, node=11))
    aggregate, _ = strategy.aggregate_train(1, [good, failed])
    assert aggregate is None and not seen  # Flower's rule: no aggregation when a client failed
    assert [(r.type, r.client, r.reason) for r in records[:1]] == [("client_error", "11", "out of memory")]
    (skipped,) = records[1:]  # and the round Flower's wrapper skipped is recorded as such
    assert skipped.type == "round_skipped" and "1 of 2 replies failed or were rejected" in skipped.reason


def _client_app_reply(app, msg: Message, partition_id: int) -> Message:
    ctx = Context(
        run_id=1,
        node_id=5,
        node_config={"partition-id": partition_id, "num-partitions": 2},
        state=RecordDict(),
        run_config={},
    )
    return app(msg, ctx)


def test_central_dp_client_side_clipping_mod_clips_what_is_sent() -> None:
    clip = 0.05
    sc = scenario(
        *DIGITS, *FEDAVG, f'defenses.central_dp={{noise_multiplier=1.0, clipping_norm={clip}, clipping="client"}}'
    )
    weights = {k: v.clone() for k, v in _setup(sc)[0].trainable_state().items()}
    plain = client_round(sc, _train_message(weights, 1), 0, 2).content["arrays"].to_torch_state_dict()
    delta = {k: v - weights[k] for k, v in plain.items()}
    reply = _client_app_reply(build_client_app(sc), _train_message(weights, 1, clipping_norm=clip), 0)
    assert not reply.has_error(), reply.error
    sent = {k: v - weights[k] for k, v in reply.content["arrays"].to_torch_state_dict().items()}
    factor = clip / _norm(delta)
    assert factor < 1
    for k in delta:
        torch.testing.assert_close(sent[k], delta[k] * factor, rtol=1e-6, atol=1e-12)
    assert "audit" in reply.content.array_records  # ground truth still travels


def test_local_dp_mod_sends_a_clipped_and_noised_update() -> None:
    clip, eps, delta_dp = 0.05, 5.0, 1e-5
    sc = scenario(
        *DIGITS,
        *FEDAVG,
        f"defenses.local_dp={{clipping_norm={clip}, sensitivity={clip}, epsilon={eps}, delta={delta_dp}}}",
    )
    weights = {k: v.clone() for k, v in _setup(sc)[0].trainable_state().items()}
    plain = client_round(sc, _train_message(weights, 1), 0, 2).content["arrays"].to_torch_state_dict()
    delta = {k: v - weights[k] for k, v in plain.items()}
    reply = _client_app_reply(build_client_app(sc), _train_message(weights, 1), 0)
    assert not reply.has_error(), reply.error
    sent = {k: v - weights[k] for k, v in reply.content["arrays"].to_torch_state_dict().items()}
    factor = min(1.0, clip / _norm(delta))
    assert factor < 1
    noise = torch.cat([(sent[k] - delta[k] * factor).flatten() for k in delta])
    expected_std = clip * math.sqrt(2 * math.log(1.25 / delta_dp)) / eps
    assert float(noise.std()) == pytest.approx(expected_std, rel=0.05)
    assert float(noise.mean()) == pytest.approx(0.0, abs=5 * expected_std / math.sqrt(noise.numel()))
    truth = reply.content["audit"].to_torch_state_dict()
    assert truth["labels"].numel() == 8

    # What the auditor observes is exactly what left the client.
    records: list[dict] = []
    auditing, _, seen = _auditing(sc, records)
    auditing.audit_reply(1, reply, weights)
    for k in sent:
        assert torch.equal(seen[0][0].update[k], sent[k])


def test_adam_fedavg_differs_from_sgd_and_trains() -> None:
    sgd = scenario(
        *DIGITS,
        "training.mode=fedavg",
        "training.batch_size=16",
        "training.mini_batch_size=16",
        "training.local_epochs=20",
        "training.lr=0.01",
    )
    adam = sgd.model_copy(deep=True)
    adam.training.optimizer = "adam"
    bundle, batch = _setup(sgd)
    weights = {k: v.clone() for k, v in bundle.trainable_state().items()}
    with torch.no_grad():
        before = float(loss_fn(bundle, batch))
    by_optimizer = {}
    for sc in (sgd, adam):
        bundle.load_state(weights)
        update = federation.client_update(bundle, batch, sc, seed=1)
        with torch.no_grad():
            by_optimizer[sc.training.optimizer] = (update.tensors, float(loss_fn(bundle, batch)))
    assert by_optimizer["adam"][1] < 0.5 * before  # trains
    assert by_optimizer["adam"][1] < by_optimizer["sgd"][1]
    assert any(not torch.allclose(by_optimizer["adam"][0][k], by_optimizer["sgd"][0][k]) for k in weights)
    # Adam's first step moves every touched weight by about lr (m / sqrt(v) = sign(g)).
    one = adam.model_copy(deep=True)
    one.training.local_epochs = 1
    bundle.load_state(weights)
    step = federation.client_update(bundle, batch, one, seed=1).tensors
    moved = torch.cat([(step[k] - weights[k]).abs().flatten() for k in weights])
    assert float(moved.max()) == pytest.approx(0.01, rel=1e-3)
