"""Update defenses change what a client sends exactly as specified, in the listed order, and
secure aggregation hides every individual update from the auditor."""

from __future__ import annotations

import math

import pytest
import torch
from flwr.serverapp.strategy import FedAvg

from clients.app import client_round
from fedaudit import federation
from fedaudit.audit.auditor import Auditor
from fedaudit.config import ClipDefense, ConfigError, NoiseDefense, PruneDefense, QuantizeDefense
from fedaudit.defenses import apply_update_defenses, clip, noise, prune, quantize
from server_strategies.strategy import AuditingStrategy
from tests.conftest import TINY_GPT2
from tests.helpers import scenario, train_message


def _update(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(40, 25, generator=g), "b": torch.randn(25, generator=g, dtype=torch.float64)}


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.2, 0.5, 0.9])
def test_pruning_keeps_exactly_the_top_fraction(fraction: float) -> None:
    update = _update()
    out = prune(update, PruneDefense(fraction=fraction))
    for name, x in update.items():
        kept = out[name] != 0
        assert int((~kept).sum()) == math.floor(fraction * x.numel())
        assert torch.equal(out[name][kept], x[kept]) and out[name].dtype == x.dtype
        if fraction > 0:  # every kept entry is at least as large as every dropped one
            assert x[kept].abs().min() >= x[~kept].abs().max()


def test_threshold_pruning_zeroes_every_small_entry() -> None:
    x = torch.tensor([-0.3, 0.05, 0.2, -0.01, 1.0])
    out = prune({"x": x}, PruneDefense(threshold=0.1))["x"]
    assert out.tolist() == pytest.approx([-0.3, 0.0, 0.2, 0.0, 1.0])


def test_int8_round_trips_within_half_its_scale_and_fp16_is_a_half_cast() -> None:
    update = _update()
    out = quantize(update, QuantizeDefense(format="int8"))
    for name, x in update.items():
        scale = x.abs().max() / 127
        assert (out[name] - x).abs().max() <= scale / 2 + 1e-12
        assert torch.allclose(torch.round(out[name] / scale), out[name] / scale, atol=1e-4)  # on the int8 grid
        assert len(torch.unique(torch.round(out[name] / scale))) <= 255
    half = quantize(update, QuantizeDefense(format="fp16"))
    assert torch.equal(half["w"], update["w"].half().float()) and half["b"].dtype == torch.float64
    assert torch.equal(quantize({"z": torch.zeros(3)}, QuantizeDefense())["z"], torch.zeros(3))


@pytest.mark.parametrize("distribution", ["gaussian", "laplace"])
def test_noise_has_the_requested_scale_and_distribution(distribution: str) -> None:
    x = torch.zeros(400_000, dtype=torch.float64)
    settings = NoiseDefense(distribution=distribution, scale=0.3)
    drawn = noise({"x": x}, settings, seed=7)["x"]
    assert drawn.std().item() == pytest.approx(0.3, rel=0.01)
    # Gaussian: E|X| = sigma sqrt(2/pi); Laplace with std sigma: E|X| = sigma / sqrt(2)
    expected = 0.3 * (math.sqrt(2 / math.pi) if distribution == "gaussian" else 1 / math.sqrt(2))
    assert drawn.abs().mean().item() == pytest.approx(expected, rel=0.01)
    assert torch.equal(drawn, noise({"x": x}, settings, seed=7)["x"])
    assert not torch.equal(drawn, noise({"x": x}, settings, seed=8)["x"])


def test_clipping_bounds_the_whole_update_and_keeps_its_direction() -> None:
    update = _update()
    norm = math.sqrt(sum(float(x.double().pow(2).sum()) for x in update.values()))
    out = clip(update, ClipDefense(max_norm=norm / 4))
    assert math.sqrt(sum(float(x.double().pow(2).sum()) for x in out.values())) == pytest.approx(norm / 4)
    for name, x in update.items():
        torch.testing.assert_close(out[name].double(), x.double() / 4)
    assert clip(update, ClipDefense(max_norm=norm * 2))["w"] is update["w"]


def test_defenses_apply_in_the_listed_order() -> None:
    update = {"x": torch.tensor([0.5, -0.2, 0.01, 2.0])}
    prune_first = scenario("defenses.prune.fraction=0.5", "defenses.clip.max_norm=1.0").defenses
    clip_first = scenario("defenses.clip.max_norm=1.0", "defenses.prune.fraction=0.5").defenses
    assert prune_first.order == ["prune", "clip"] and clip_first.order == ["clip", "prune"]
    a = apply_update_defenses(update, prune_first, seed=0)["x"]
    b = apply_update_defenses(update, clip_first, seed=0)["x"]
    torch.testing.assert_close(a, torch.tensor([0.5, 0.0, 0.0, 2.0]) / math.sqrt(4.25))
    torch.testing.assert_close(b, torch.tensor([0.5, 0.0, 0.0, 2.0]) / math.sqrt(4.2901))
    with pytest.raises(ConfigError, match="defenses.order"):
        scenario("defenses.prune.fraction=0.5", 'defenses.order=["clip"]')


def test_fedavg_client_prunes_its_weight_difference() -> None:
    sc = scenario(
        "data.source=digits",
        "model.name=mlp",
        "model.config={hidden=[32]}",
        "training.mode=fedavg",
        "training.batch_size=8",
        "training.mini_batch_size=4",
        "training.lr=0.1",
        "defenses.prune.fraction=0.9",
    )
    data = federation.federated_data(sc)
    bundle = federation.build_global_model(sc, data.examples)
    start = {k: v.clone() for k, v in bundle.trainable_state().items()}
    batch = federation.encode_examples(bundle, data.examples.subset(data.train[:8]), sc)
    sent = federation.client_update(bundle, batch, sc, seed=0).tensors
    for name, w in start.items():
        changed = int((sent[name] != w).sum())
        assert 0 < changed <= math.ceil(0.1 * w.numel())


def test_secure_aggregation_shows_the_auditor_only_group_sums(cola_path, flower_identity) -> None:
    clients = 4
    sc = scenario(
        *TINY_GPT2,
        f"data.source={cola_path}",
        f"federation.clients={clients}",
        "training.batch_size=3",
        "federation.secure_aggregation_group=2",
        "training.lr=0.5",
        "audit.attacks=['embedding-rows']",
    )
    data = federation.federated_data(sc)
    public = federation.build_global_model(sc, data.examples)
    records: list[dict] = []
    inner = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=clients, min_available_nodes=clients)
    strategy = AuditingStrategy(
        inner, Auditor.for_scenario(sc.audit, sink=records.append), sc, public, sink=records.append
    )
    weights = {k: v.clone() for k, v in public.trainable_state().items()}
    strategy._global = {1: weights}
    replies = [client_round(sc, train_message(weights, node=10 + p), p, clients) for p in range(clients)]
    individual = [r.content["arrays"].to_torch_state_dict() for r in replies]
    truths = [r.content["audit"].to_torch_state_dict() for r in replies]

    seen, given_truths = [], []
    submit = strategy.auditor.submit
    strategy.auditor.submit = lambda obs, truth, **hooks: (
        seen.append(obs) or given_truths.append(truth) or submit(obs, truth, **hooks)
    )
    arrays, _ = strategy.aggregate_train(1, list(reversed(replies)))
    strategy.schedule.wait()  # the round's audits run on while the next round would train

    assert [obs.client for obs in seen] == ["0+1", "2+3"]
    for obs, (a, b) in zip(seen, [(0, 1), (2, 3)]):
        assert obs.protocol.num_examples == 6 and obs.protocol.group_size == 2
        for name in weights:
            torch.testing.assert_close(obs.update[name], (individual[a][name] + individual[b][name]) / 2)
            for sent in individual:  # no individual update is visible
                assert not torch.allclose(obs.update[name], sent[name]) or torch.equal(sent[name], 0 * sent[name])
    # The group's ground truth is the union of both members' examples, and is scored as such.
    for truth, (a, b) in zip(given_truths, [(0, 1), (2, 3)]):
        members = [truths[a], truths[b]]
        assert truth.sequences() == [
            ids[m.bool()].tolist() for t in members for ids, m in zip(t["input_ids"], t["attention_mask"])
        ]
        assert torch.equal(truth.labels, torch.cat([t["labels"] for t in members]))
    audits = [r for r in records if r.type == "attack"]
    assert [r.client for r in audits] == ["0+1", "2+3"]
    assert all(r.metrics["token_recall"] == 1.0 for r in audits)
    # Aggregation is unchanged by grouping: the global step uses the mean of all four gradients.
    new = arrays.to_torch_state_dict()
    for name, w in weights.items():
        mean_grad = sum(u[name] for u in individual) / clients
        torch.testing.assert_close(new[name], w - 0.5 * mean_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_lora_sends_only_the_factors_and_the_head(cola_path, family) -> None:
    from tests.test_dager import TINY

    sc = scenario(*TINY[family], f"data.source={cola_path}", "training.batch_size=2", "model.lora={r=4, alpha=8}")
    data = federation.federated_data(sc)
    bundle = federation.build_global_model(sc, data.examples)
    trainable = {n for n, p in bundle.model.named_parameters() if p.requires_grad}
    frozen = sum(p.numel() for p in bundle.model.parameters() if not p.requires_grad)
    assert trainable and frozen > 0
    assert all("lora_" in n or any(h in n for h in ("score", "classifier")) for n in trainable), trainable
    assert any("lora_A" in n for n in trainable) and any("lora_B" in n for n in trainable)
    batch = federation.encode_examples(bundle, data.examples.subset(data.train[:2]), sc)
    sent = federation.client_update(bundle, batch, sc, seed=0).tensors
    assert set(sent) == trainable == set(bundle.trainable_state())
    assert sum(v.numel() for v in sent.values()) < frozen / 10


def test_embedding_rows_read_through_noise_count_only_rows_above_it(cola_path) -> None:
    from fedaudit.attacks import Budget
    from fedaudit.attacks.embedding_rows import EmbeddingRows
    from fedaudit.audit.scoring import score
    from tests.helpers import client_updates

    sc = scenario(*TINY_GPT2, f"data.source={cola_path}", "training.batch_size=4", "defenses.noise.scale=1e-4")
    ((observation, truth),) = client_updates(sc, 1)
    assert bool((observation.update[observation.model.adapter.embedding] != 0).all())  # noise touched every row
    rec = EmbeddingRows().run(observation, Budget(10))
    metrics = score(rec, truth, observation.model)
    assert rec.status == "partial" and "noise" in rec.reason
    assert metrics["token_precision"] == 1.0 and metrics["token_recall"] >= 0.9
