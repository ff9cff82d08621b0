"""The attack contract: attacks run on private model copies, so the order they run in changes
nothing, and the Observation (and the public model it names) is the same afterwards."""

from __future__ import annotations

import pytest
import torch

from fedaudit.attacks import REGISTRY, Budget
from fedaudit.attacks.base import OptionsError
from tests.helpers import client_updates, scenario

#: FedAvg over two epochs: DAGER forms its candidates at the midpoint weights W_0 + (W_E - W_0) / 2,
#: the case in which it used to add half the update into the shared model in place.
FEDAVG_GPT2 = [
    "model.name=gpt2-random",
    "model.config={n_layer=3, n_embd=128, n_head=2}",
    "model.dtype=float64",
    "training.mode=fedavg",
    "training.local_epochs=2",
    "training.batch_size=4",
    "training.mini_batch_size=2",
    "training.lr=1e-4",
]


def _snapshot(tensors) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in tensors.items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _outcome(name: str, observation, **options) -> tuple:
    rec = REGISTRY.make(name, "cpu", options).run(observation, Budget(120))
    sequences = sorted(rec.sequences) if rec.sequences is not None else None
    return rec.status, rec.reason, sequences, rec.labels, None if rec.tokens is None else sorted(rec.tokens)


#: FedSGD: every attack reads the global weights (DAGER keeps its own copy for the round).
FEDSGD_GPT2 = [*FEDAVG_GPT2[:3], "training.batch_size=4"]


@pytest.mark.parametrize(
    ("protocol", "dager_status"), [(FEDAVG_GPT2, "partial"), (FEDSGD_GPT2, "exact")], ids=["fedavg", "fedsgd"]
)
def test_attacks_in_sequence_match_each_alone_and_leave_the_observation_unchanged(
    cola_path, protocol, dager_status
) -> None:
    ((observation, _),) = client_updates(scenario(f"data.source={cola_path}", *protocol), 1)
    weights, update = _snapshot(observation.global_weights), _snapshot(observation.update)
    public = _snapshot(dict(observation.model.model.named_parameters()))
    dtype = observation.model.dtype

    alone = {name: _outcome(name, observation) for name in ("dager", "labels", "embedding-rows")}
    assert alone["dager"][0] == dager_status and alone["dager"][2]  # FedAvg: recovered, honestly approximate
    in_turn = [_outcome(name, observation) for name in ("labels", "dager", "embedding-rows", "dager")]
    assert in_turn == [alone["labels"], alone["dager"], alone["embedding-rows"], alone["dager"]]

    assert _same(_snapshot(observation.global_weights), weights)
    assert _same(_snapshot(observation.update), update)
    assert _same(_snapshot(dict(observation.model.model.named_parameters())), public)
    assert observation.model.dtype == dtype and observation.model.model.training


def test_model_at_is_a_private_copy_with_the_weights_asked_for(cola_path) -> None:
    ((observation, _),) = client_updates(scenario(f"data.source={cola_path}", *FEDAVG_GPT2), 1)
    shared = observation.model.model
    copy = observation.model_at({k: w + 1 for k, w in observation.global_weights.items()}, dtype=torch.float32)
    assert copy.model is not shared and copy.dtype == torch.float32 and not copy.model.training
    name, weight = next(iter(observation.global_weights.items()))
    assert torch.equal(copy.model.get_parameter(name), (weight + 1).float())
    assert not torch.equal(shared.get_parameter(name), copy.model.get_parameter(name).double())


def test_the_registry_validates_options_in_one_line() -> None:
    assert REGISTRY.make("spear", "cpu", {"layer": 1}).options.layer == 1
    with pytest.raises(OptionsError, match=r"^unknown key 'audit.dager.steps'; allowed keys here: none$"):
        REGISTRY.options("dager", {"steps": 3})
    with pytest.raises(OptionsError, match=r"^audit.spear.layer = -1: Input should be greater than or equal to 0$"):
        REGISTRY.options("spear", {"layer": -1})
