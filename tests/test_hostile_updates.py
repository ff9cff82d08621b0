"""A broken or hostile client never corrupts the federation or the audit: every reply is checked
against the global model's schema before the auditor or the aggregate sees it."""

from __future__ import annotations

import math

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clients.app import client_round
from fedaudit import federation
from fedaudit.audit.auditor import Auditor
from fedaudit.audit.records import AttackRecord, RejectedUpdate, RoundSkipped
from server_strategies.strategy import AuditingStrategy, BadUpdate
from tests.conftest import TINY_GPT2
from tests.helpers import scenario, train_message

CLIENTS = 3


@pytest.fixture(scope="module")
def honest(cola_path):
    with pytest.MonkeyPatch.context() as mp:
        from flwr.supercore.task_identity import TaskIdentity

        for key in ("_run_id", "_node_id", "_task_id"):
            mp.setattr(TaskIdentity, key, 1, raising=False)
        return honest_round(cola_path)


def honest_round(cola_path):
    """The scenario, the public model, the global weights and each client's honest reply
    (tensors and metrics); needs Flower's task identity set (``flower_identity``)."""
    sc = scenario(
        *TINY_GPT2,
        f"data.source={cola_path}",
        f"federation.clients={CLIENTS}",
        "training.batch_size=2",
        "audit.attacks=['embedding-rows']",
    )
    data = federation.federated_data(sc)
    public = federation.build_global_model(sc, data.examples)
    weights = {k: v.clone() for k, v in public.trainable_state().items()}
    replies = [client_round(sc, train_message(weights, node=10 + p), p, CLIENTS) for p in range(CLIENTS)]
    sent = [(r.content["arrays"].to_torch_state_dict(), dict(r.content["metrics"])) for r in replies]
    return sc, public, weights, sent


def _reply(weights, partition: int, arrays=None, metrics=None, drop: tuple[str, ...] = ()) -> Message:
    content = {
        "arrays": ArrayRecord.from_torch_state_dict(arrays) if isinstance(arrays, dict) else arrays,
        "metrics": MetricRecord(metrics) if isinstance(metrics, dict) else metrics,
        "client-info": ConfigRecord({"partition-id": partition}),
    }
    content = RecordDict({k: v for k, v in content.items() if k not in drop})
    return Message(content, reply_to=train_message(weights, node=10 + partition))


def _round(honest, corrupt: dict[int, dict], sc=None):
    """Aggregate one round in which client p's reply is built from ``corrupt[p]`` (keyword
    overrides of ``_reply``); returns (new weights or None, records)."""
    sc_default, public, weights, sent = honest
    sc = sc or sc_default
    records: list = []
    strategy = AuditingStrategy(
        FedAvg(fraction_train=1.0, min_train_nodes=CLIENTS, min_available_nodes=CLIENTS),
        Auditor.for_scenario(sc.audit, sink=records.append),
        sc,
        public,
        sink=records.append,
    )
    strategy._global = {1: weights}
    replies = []
    for p, (arrays, metrics) in enumerate(sent):
        given = {"arrays": {k: v.clone() for k, v in arrays.items()}, "metrics": dict(metrics)}
        given.update(corrupt.get(p, {}))
        replies.append(_reply(weights, p, **given))
    arrays, _ = strategy.aggregate_train(1, replies)
    strategy.schedule.wait()  # the round's audits, recorded
    return (None if arrays is None else arrays.to_torch_state_dict()), records


def _with(arrays: dict, name: str, value) -> dict:
    out = {k: v.clone() for k, v in arrays.items()}
    if value is None:
        del out[name]
    else:
        out[name] = value
    return out


def test_bad_replies_are_recorded_left_out_and_the_round_goes_on(honest, flower_identity) -> None:
    sc, _, weights, sent = honest
    name = next(iter(weights))
    nan = _with(sent[1][0], name, torch.full_like(weights[name], math.nan))
    shape = _with(sent[2][0], name, torch.zeros(3, 3, dtype=weights[name].dtype))
    new, records = _round(honest, {1: {"arrays": nan}, 2: {"arrays": shape}})

    rejected = {r.client: r.reason for r in records if isinstance(r, RejectedUpdate)}
    assert set(rejected) == {"1", "2"}
    assert name in rejected["1"] and "NaN" in rejected["1"] and str(weights[name].numel()) in rejected["1"]
    assert name in rejected["2"] and "shape (3, 3)" in rejected["2"]
    assert {r.client for r in records if isinstance(r, AttackRecord)} == {"0"}
    # Only client 0's gradient moved the model: W - lr * g0, finite.
    for k, w in weights.items():
        torch.testing.assert_close(new[k], w - sc.training.lr * sent[0][0][k])


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        ({"arrays": "drop-first"}, "is missing"),
        ({"arrays": "extra"}, "is not in the global model"),
        ({"arrays": "float64"}, "dtype torch.float64"),
        ({"arrays": "inf"}, "are inf"),
        ({"arrays": "empty"}, "shape (0,)"),
        ({"metrics": {"num-examples": 0}}, "num-examples = 0 is outside 1..2"),
        ({"metrics": {"num-examples": -3}}, "num-examples = -3"),
        ({"metrics": {"num-examples": 10**9}}, "outside 1..2"),
        ({"metrics": {"num-examples": 1.5}}, "not a whole number"),
        ({"metrics": {"num-examples": math.nan}}, "not a whole number"),
        ({"metrics": {"train-loss": 0.1}}, "num-examples is missing"),
        ({"drop": ("arrays",)}, "no 'arrays' record"),
        ({"drop": ("metrics",)}, "no 'metrics' record"),
    ],
)
def test_each_kind_of_bad_reply_is_named(honest, flower_identity, corrupt, reason) -> None:
    _, _, weights, sent = honest
    first = next(iter(weights))
    arrays = sent[1][0]
    transforms = {
        "drop-first": lambda: _with(arrays, first, None),
        "extra": lambda: {**arrays, "\x1b]0;pwned\x07extra": torch.zeros(1)},
        "float64": lambda: _with(arrays, first, arrays[first].double()),
        "inf": lambda: _with(arrays, first, torch.full_like(arrays[first], math.inf)),
        "empty": lambda: _with(arrays, first, torch.zeros(0, dtype=arrays[first].dtype)),
    }
    if isinstance(corrupt.get("arrays"), str):
        corrupt = {"arrays": transforms[corrupt["arrays"]]()}
    new, records = _round(honest, {1: corrupt})
    (rejected,) = [r for r in records if isinstance(r, RejectedUpdate)]
    assert rejected.client == "1" and reason in rejected.reason
    assert "\x1b" not in rejected.reason and "\x07" not in rejected.reason
    assert new is not None and all(torch.isfinite(v).all() for v in new.values())


def test_a_round_without_a_usable_update_is_skipped_and_the_model_kept(honest, flower_identity) -> None:
    _, _, weights, sent = honest
    name = next(iter(weights))
    everyone = {p: {"arrays": _with(sent[p][0], name, torch.full_like(weights[name], math.inf))} for p in range(3)}
    new, records = _round(honest, everyone)
    assert new is None  # Flower keeps the previous global model
    assert [r.client for r in records if isinstance(r, RejectedUpdate)] == ["0", "1", "2"]
    (skipped,) = [r for r in records if isinstance(r, RoundSkipped)]
    assert skipped.round == 1 and "none of the 3 replies" in skipped.reason


def test_an_aggregate_that_overflows_is_not_applied(honest, flower_identity) -> None:
    sc, _, weights, sent = honest
    huge = scenario(*[f"{k}={v}" for k, v in ()], *_overrides(sc), "training.lr=1e6")
    big = {p: {"arrays": {k: torch.full_like(v, 3e38) for k, v in sent[p][0].items()}} for p in range(3)}
    new, records = _round(honest, big, sc=huge)
    assert new is None
    (skipped,) = [r for r in records if isinstance(r, RoundSkipped)]
    assert "is not finite" in skipped.reason and "stays as it was" in skipped.reason


def _overrides(sc) -> list[str]:
    return [
        *TINY_GPT2,
        f"data.source={sc.data.source}",
        f"federation.clients={CLIENTS}",
        "training.batch_size=2",
        "audit.attacks=['embedding-rows']",
    ]


def test_on_bad_update_fail_records_then_stops(honest, flower_identity) -> None:
    sc, _, weights, sent = honest
    strict = scenario(*_overrides(sc), 'federation.on_bad_update="fail"')
    with pytest.raises(BadUpdate, match="client 1: num-examples = 0"):
        _round(honest, {1: {"metrics": {"num-examples": 0}}}, sc=strict)


_FLOATS = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1e38, -1e-45, 1.0])


@st.composite
def corrupted_arrays(draw, arrays: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One client's arrays, changed in one way a broken or hostile client could."""
    out = {k: v.clone() for k, v in arrays.items()}
    name = draw(st.sampled_from(sorted(out)))
    kind = draw(st.sampled_from(["values", "shape", "dtype", "empty", "scalar", "drop", "extra"]))
    if kind == "values":
        flat = out[name].view(-1)
        for index in draw(st.lists(st.integers(0, flat.numel() - 1), min_size=1, max_size=4)):
            flat[index] = draw(_FLOATS)
    elif kind == "shape":
        out[name] = torch.zeros(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
    elif kind == "dtype":
        out[name] = out[name].to(draw(st.sampled_from([torch.float16, torch.float64, torch.int64, torch.bool])))
    elif kind == "empty":
        out[name] = torch.zeros(0)
    elif kind == "scalar":
        out[name] = torch.tensor(draw(_FLOATS))
    elif kind == "drop":
        del out[name]
    else:
        out[draw(st.text(min_size=1, max_size=12))] = torch.zeros(2)
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_updates_are_rejected_or_harmless_never_a_crash(honest, flower_identity, data) -> None:
    _, _, weights, sent = honest
    arrays = data.draw(corrupted_arrays(sent[1][0]))
    examples = data.draw(st.one_of(st.integers(-5, 5), st.sampled_from([math.nan, math.inf, 2.0, 1e18])))
    new, records = _round(honest, {1: {"arrays": arrays, "metrics": {"num-examples": examples}}})
    rejected = [r for r in records if isinstance(r, RejectedUpdate)]
    audited = {r.client for r in records if isinstance(r, AttackRecord)}
    assert (rejected and rejected[0].client == "1" and "1" not in audited) or (not rejected and "1" in audited)
    assert new is not None and all(torch.isfinite(v).all() for v in new.values())
