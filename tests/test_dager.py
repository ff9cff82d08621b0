"""DAGER on real CoLA batches: exact recovery per family and protocol, adapters vs the model's own forward."""

from __future__ import annotations

import math

import pytest
import torch

from fedaudit.attacks import REGISTRY, Budget, Observation
from fedaudit.attacks.dager import Dager, layer1_residuals, layer1_terms
from fedaudit.attacks.dager.setup import KeptModel, build_setup, midpoint_model
from fedaudit.audit.auditor import Auditor
from fedaudit.audit.scoring import score
from tests.helpers import client_updates, scenario

TINY = {
    "gpt2": ["model.name=gpt2-random", "model.config={n_layer=3, n_embd=128, n_head=2}"],
    "llama": [
        "model.name=llama-random",
        "model.config={num_hidden_layers=3, hidden_size=128, intermediate_size=256, "
        "num_attention_heads=4, num_key_value_heads=2, head_dim=32}",
    ],
    # The pretrained offline MiniLM-L6 (BERT family): at random init a BERT's layer 2 is nearly a
    # LayerNorm of layer 1, too linear to tell mixed sentences apart (see the README).
    "bert": ["model.name=minilm-l6", "model.config={}"],
}


def _updates(cola_path, *overrides: str, batches: int = 1, batch_size: int = 4):
    sc = scenario(
        f"data.source={cola_path}", f"training.batch_size={batch_size}", "audit.attacks=['dager']", *overrides
    )
    return client_updates(sc, batches)


def _attack(observation: Observation):
    attack = Dager(device="cpu")
    ok, why = attack.applicable(observation)
    assert ok, why
    return attack.run(observation, Budget(120))


def _assert_exact(rec, truth, bundle) -> None:
    assert rec.status == "exact", rec.reason
    assert sorted(rec.sequences) == sorted(truth.sequences())
    metrics = score(rec, truth, bundle)
    assert metrics["rouge1"] == 1.0 and metrics["exact_match"] == 1.0
    assert rec.diagnostics["explained_layer2"] >= rec.diagnostics["rank_layer2"]


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_exact_recovery_of_a_real_cola_batch_per_family(cola_path, family) -> None:
    for observation, truth in _updates(cola_path, *TINY[family]):
        _assert_exact(_attack(observation), truth, observation.model)


@pytest.mark.parametrize(("epochs", "lr", "batch_size", "batches"), [(2, 1e-4, 4, 2), (1, 5e-4, 8, 1), (5, 5e-4, 8, 1)])
def test_exact_recovery_under_fedavg(cola_path, epochs, lr, batch_size, batches) -> None:
    # (1, 5e-4): each input seen once, far from the midpoint weights; (5, 5e-4): 20 steps of drift.
    # One attack object for every client, as in a round: each client's midpoint model differs,
    # so layer-1 terms must not carry over from one client to the next.
    attack = Dager(device="cpu")
    for observation, truth in _updates(
        cola_path,
        "model.name=gpt2-random",
        "model.config={n_layer=3, n_embd=768, n_head=12}",
        "model.dtype=float64",
        "training.mode=fedavg",
        f"training.local_epochs={epochs}",
        "training.mini_batch_size=2",
        f"training.lr={lr}",
        batch_size=batch_size,
        batches=batches,
    ):
        assert observation.protocol.local_steps == epochs * batch_size // 2
        rec = attack.run(observation, Budget(120))
        assert not rec.diagnostics["layer1_terms_reused"]
        # FedAvg is approximate (inputs drift between local steps): the target is R-1 >= 0.95.
        assert score(rec, truth, observation.model)["rouge1"] >= 0.95, rec.reason
        assert len(rec.sequences) <= observation.protocol.num_examples
        assert "FedAvg" in rec.reason
        # over several epochs the span keeps the first-order drift: twice the inputs' rank
        assert rec.diagnostics["basis_layer2"] == (2 if epochs > 1 else 1) * rec.diagnostics["rank_layer2"]
        prefixes = len({tuple(seq[:t]) for seq in truth.sequences() for t in range(1, len(seq) + 1)})
        assert abs(rec.diagnostics["rank_layer2"] - prefixes) <= 0.25 * prefixes  # the inputs, not their drift


def test_exact_recovery_from_lora_factors_in_round_one(cola_path) -> None:
    for observation, truth in _updates(cola_path, *TINY["gpt2"], "model.lora={r=64, alpha=64}"):
        assert all("lora" in name or "score" in name for name in observation.update)
        rec = _attack(observation)
        assert "lora_B" in rec.diagnostics["span_source"]  # B = 0 in round 1: lora_A's gradient is zero
        _assert_exact(rec, truth, observation.model)


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_adapter_inputs_equal_what_the_model_feeds_its_query_projections(cola_path, family) -> None:
    observation, truth = _updates(cola_path, *TINY[family])[0]
    setup = build_setup(observation, torch.device("cpu"), midpoint_model(observation, torch.device("cpu")))
    model = setup.model
    seen: dict[int, torch.Tensor] = {}
    handles = [
        model.get_submodule(entry.module).register_forward_pre_hook(
            lambda _m, args, layer=layer: seen.__setitem__(layer, args[0].detach())
        )
        for layer, entry in enumerate(observation.model.adapter.attention_inputs)
    ]
    ids = truth.input_ids[:1, : int(truth.attention_mask[0].sum())]
    with torch.no_grad():
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    for handle in handles:
        handle.remove()
    formed = setup.first.materialize(ids)
    torch.testing.assert_close(formed, seen[0].to(formed), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(setup.probe.inputs(ids), seen[1])
    # and the Gram-form layer-1 check agrees with the residual of the explicit inputs
    gram = layer1_residuals(setup.span1, layer1_terms(setup.first, setup.span1.input_map, setup.device, keep=False))
    direct = setup.span1.residual(formed[0])
    positions = torch.arange(ids.shape[1]) % gram.shape[1]
    torch.testing.assert_close(gram[ids[0], positions], direct, rtol=1e-3, atol=1e-6)


def test_more_tokens_than_width_is_partial_with_a_reason(cola_path) -> None:
    observation, _ = _updates(
        cola_path, "model.name=gpt2-random", "model.config={n_layer=3, n_embd=32, n_head=2}", batch_size=8
    )[0]
    rec = _attack(observation)
    assert rec.status == "partial"
    assert "B*n >= d" in rec.reason and rec.diagnostics["rank_layer1"] >= 31  # LayerNorm inputs fill 31 of 32 dims


def test_an_update_with_nans_is_an_error_with_a_reason(cola_path) -> None:
    observation, truth = _updates(cola_path, *TINY["gpt2"])[0]
    update = dict(observation.update)
    name = observation.model.adapter.attention_inputs[0].projections[0].weight
    update[name] = update[name].clone()
    update[name][0, 0] = math.nan
    broken = Observation(
        observation.round,
        observation.client,
        observation.model,
        observation.global_weights,
        update,
        observation.protocol,
    )
    record = Auditor([REGISTRY.make("dager", "cpu")], 60).audit(broken, truth)[0]
    assert record.status == "error"
    assert "NaN" in record.reason


def test_fedavg_weights_sent_in_float32_are_read_above_their_rounding_edge() -> None:
    # PII-like records, lr 1e-4: each weight's own ulp (not one global epsilon) sets the noise
    # edge; before, rounding drowned the layer-2 spectrum (rank 1-3 of ~135) and nothing came back.
    sc = scenario(
        "data.source=demo",
        "training.batch_size=4",
        "audit.attacks=['dager']",
        "model.name=gpt2-random",
        "model.config={n_layer=3, n_embd=512, n_head=8}",
        "training.mode=fedavg",
        "training.local_epochs=2",
        "training.mini_batch_size=2",
        "training.lr=1e-4",
    )
    observation, truth = client_updates(sc, 1)[0]
    assert observation.global_weights[observation.model.adapter.embedding].dtype == torch.float32
    rec = Dager(device="cpu").run(observation, Budget(300))
    assert rec.diagnostics["rank_layer2"] > 100
    assert score(rec, truth, observation.model)["rouge1"] >= 0.95, rec.reason
    assert rec.status == "partial" and "sent in float32" in rec.reason and "noise edge" in rec.reason


TWO_LAYERS = {
    "gpt2": ["model.name=gpt2-random", "model.config={n_layer=2, n_embd=256, n_head=16}"],
    "llama": [
        "model.name=llama-random",
        "model.config={num_hidden_layers=2, hidden_size=128, intermediate_size=256, "
        "num_attention_heads=16, num_key_value_heads=4, head_dim=8}",
    ],
}


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_two_layer_classifier_leaks_through_the_second_layers_keys_and_values(cola_path, family) -> None:
    # Only the pooled token's layer-2 query reaches the loss, but it reads every position's key
    # and value: with 16 heads that is 33 directions per sentence, more than its tokens.
    for observation, truth in _updates(cola_path, *TWO_LAYERS[family], "model.task=classification", batch_size=6):
        assert observation.model.adapter.num_layers == 2
        _assert_exact(_attack(observation), truth, observation.model)


def test_a_two_layer_classifier_with_few_heads_says_which_sentences_it_cannot_verify(cola_path) -> None:
    # 2 heads: 5 directions per sentence; CoLA sentences of more tokens cannot be verified at layer 2.
    config = "model.config={n_layer=2, n_embd=256, n_head=2}"
    observation, truth = _updates(cola_path, "model.name=gpt2-random", config, "model.task=classification")[0]
    rec = _attack(observation)
    assert max(len(s) for s in truth.sequences()) > 5
    assert rec.status in ("partial", "failed")
    assert "at most 5 directions per example" in rec.reason and "longer than 5 tokens" in rec.reason
    assert "B*n >= d" not in rec.reason


def test_a_one_layer_model_is_not_applicable_with_a_reason(cola_path) -> None:
    observation, _ = _updates(cola_path, "model.name=gpt2-random", "model.config={n_layer=1, n_embd=128, n_head=2}")[0]
    ok, why = Dager().applicable(observation)
    assert not ok and "two attention layers" in why


def test_ranks_under_protocol_noise_count_the_directions_above_the_noise_edge() -> None:
    from fedaudit.attacks.spectral import noise_edge, rank_above_noise

    g = torch.Generator().manual_seed(0)
    signal = torch.randn(300, 5, generator=g, dtype=torch.float64) @ torch.randn(
        5, 200, generator=g, dtype=torch.float64
    )
    for std in (1e-6, 1e-2, 1.0):
        noise = std * torch.randn(300, 200, generator=g, dtype=torch.float64)
        edge = noise_edge(std, 300, 200)
        assert rank_above_noise(torch.linalg.svdvals(signal + noise), edge) == 5
        assert rank_above_noise(torch.linalg.svdvals(noise), edge) == 0


def test_noised_updates_degrade_dager_gracefully_with_reasons(cola_path) -> None:
    """The noise defense at three scales: DAGER still recovers at small noise, loses sentences as
    it grows, and fails with a reason once nothing stands above the noise; never an error."""
    outcomes = []
    for scale in (1e-7, 1e-5, 1.0):
        ((observation, truth),) = _updates(cola_path, *TINY["gpt2"], f"defenses.noise.scale={scale}")
        assert observation.gradient_noise_std == scale
        rec = _attack(observation)
        assert rec.status in ("exact", "partial", "failed")
        metrics = score(rec, truth, observation.model)
        if rec.status != "exact":
            assert "noise" in rec.reason
        outcomes.append((rec, metrics))
    assert outcomes[0][0].status == "exact" and outcomes[0][1]["rouge1"] == 1.0
    assert outcomes[1][0].status == "partial" and outcomes[1][1]["rouge1"] > 0.5
    assert outcomes[2][0].status == "failed" and "below the noise edge" in outcomes[2][0].reason
    assert outcomes[0][1]["rouge1"] >= outcomes[1][1]["rouge1"] >= outcomes[2][1]["rouge1"] == 0.0


def test_dp_sgd_with_small_noise_is_read_in_part_and_said_so(cola_path) -> None:
    """sigma = 1e-5 and 1e-4 (epsilon in the millions: no privacy in practice): the span is taken
    above the noise edge, thresholds come from measured residuals, and the closest tokens per
    position stay candidates, so something honest comes back instead of nothing."""
    rouge = []
    for sigma in (1e-5, 1e-4):
        ((observation, truth),) = _updates(
            cola_path, *TINY["gpt2"], f"defenses.dp_sgd={{noise_multiplier={sigma}, max_grad_norm=1.0}}"
        )
        assert observation.gradient_noise_std > 0
        rec = _attack(observation)
        rouge.append(score(rec, truth, observation.model)["rouge1"])
        assert rec.status in ("exact", "partial"), rec.reason
        if rec.status == "partial":
            assert "protocol noise" in rec.reason and "noise ratio" in rec.reason
    assert rouge[0] >= rouge[1] > 0.0, rouge


def test_the_clients_of_a_round_share_one_private_model_until_the_weights_change(cola_path) -> None:
    (first, _), (second, _) = _updates(cola_path, *TINY["gpt2"], batches=2)
    kept, cpu = KeptModel(), torch.device("cpu")
    model = kept.get(first, cpu)
    assert kept.get(second, cpu) is model  # same global weight tensors: one copy for the round
    assert model is not first.model.model
    name, weight = next(iter(first.global_weights.items()))
    weight.add_(0.0)  # an in-place change (even a no-op one) bumps the version: a fresh copy
    assert kept.get(second, cpu) is not model
