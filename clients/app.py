"""The ClientApp: train per the scenario's ``[training]`` spec and reply with the update.

Reply content:
* ``arrays``: FedSGD, the batch gradient (the server applies the step); FedAvg, the new weights.
* ``metrics``: ``num-examples`` (FedAvg's weighting key) and ``train-loss``; with
  ``[defenses.dp_sgd]`` also ``dp-epsilon`` (float('inf') when sigma = 0) and ``dp-delta``: the
  client's budget after this round's DP-SGD steps, composed over the ``server-round`` rounds it
  has trained (``fedaudit.training.dp.epsilon``).
* ``client-info``: the partition id and the number of local steps taken.
* ``audit`` (only with ``audit.ground_truth``, simulation): the exact token ids and attention
  masks (text) or float inputs (images, tables), and the labels, of every example used. The
  server strips it before aggregating.

Flower's DP mods (on ``@app.train(mods=...)``, so evaluate replies are untouched), both acting on
the weight difference (reply weights minus the weights received) and writing back weights:
* ``[defenses.central_dp]`` with ``clipping = "client"``: ``fixedclipping_mod`` scales the
  difference down to the L2 norm the server's ``DifferentialPrivacyClientSideFixedClipping``
  puts in the config (``clipping_norm``); the server noises the aggregate.
* ``[defenses.local_dp]``: ``LocalDpMod`` clips the difference to ``clipping_norm``, then adds
  N(0, s^2) to every weight, s = sensitivity * sqrt(2 ln(1.25 / delta)) / epsilon.
Both refuse a reply with more than one ArrayRecord, so the ``audit`` record is held aside while
they run (``AuditAside``): what they send is exactly the ``arrays`` the server audits.
"""

from __future__ import annotations

import logging
from functools import lru_cache, partial

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import LocalDpMod, fixedclipping_mod

from fedaudit import federation
from fedaudit.config import Scenario, scenario_from_toml
from fedaudit.models import ModelBundle
from fedaudit.scenario import scenario_from_run_config
from fedaudit.training.dp import epsilon

# Flower's logger has its own handler; opacus (imported above) gives the root logger one too at
# import, so every Flower line of a ClientApp came out twice.
logging.getLogger("flwr").propagate = False


@lru_cache(maxsize=2)
def _client_model(scenario_toml: str) -> ModelBundle:
    """One model per worker process, reused across rounds (weights are loaded every round)."""
    scenario = scenario_from_toml(scenario_toml)
    return federation.build_global_model(scenario, federation.federated_data(scenario).examples)


def client_round(scenario: Scenario, msg: Message, partition_id: int, num_partitions: int) -> Message:
    data = federation.federated_data(scenario)
    bundle = _client_model(scenario.to_toml())
    bundle.load_state(msg.content["arrays"].to_torch_state_dict())
    server_round = int(msg.content["config"]["server-round"])

    shard = federation.client_shard(data, scenario, partition_id, num_partitions)
    index = federation.round_examples(shard, scenario, server_round, partition_id)
    batch = federation.encode_examples(bundle, data.examples.subset(index), scenario)
    seed = (scenario.federation.seed * 1_000_003 + server_round * 1_009 + partition_id) % 2**31
    update = federation.client_update(bundle, batch, scenario, seed=seed)

    metrics = {"num-examples": update.num_examples, "train-loss": update.loss}
    dp = scenario.defenses.dp_sgd
    if dp is not None and update.privacy is not None:
        metrics.update({"dp-epsilon": epsilon(update.privacy, server_round, dp), "dp-delta": dp.delta})
    content = RecordDict(
        {
            "arrays": ArrayRecord.from_torch_state_dict(update.tensors),
            "metrics": MetricRecord(metrics),
            "client-info": ConfigRecord({"partition-id": partition_id, "local-steps": update.steps}),
        }
    )
    if scenario.audit.ground_truth:
        content["audit"] = ArrayRecord.from_torch_state_dict(
            {k: v for k, v in batch.tensors().items() if v is not None}
        )
    return Message(content, reply_to=msg)


class AuditAside:
    """A pair of mods around Flower's DP mods: ``inner`` (next to the train function) takes the
    reply's ``audit`` record out, ``outer`` puts it back once the DP mods have processed the
    single ArrayRecord they accept. Keyed by the incoming message's id."""

    def __init__(self) -> None:
        self._held: dict[str, ArrayRecord] = {}

    def inner(self, msg: Message, context: Context, call_next) -> Message:
        reply = call_next(msg, context)
        if not reply.has_error() and "audit" in reply.content.array_records:
            self._held[msg.metadata.message_id] = reply.content.array_records.pop("audit")
        return reply

    def outer(self, msg: Message, context: Context, call_next) -> Message:
        reply = call_next(msg, context)
        held = self._held.pop(msg.metadata.message_id, None)
        if held is not None and not reply.has_error():
            reply.content["audit"] = held
        return reply


def dp_mods(scenario: Scenario) -> list:
    """The train mods ``[defenses]`` asks for, outermost first (empty without Flower DP)."""
    d = scenario.defenses
    mods = []
    if d.central_dp is not None and d.central_dp.clipping == "client":
        mods.append(fixedclipping_mod)
    if d.local_dp is not None:
        ldp = d.local_dp
        mods.append(LocalDpMod(ldp.clipping_norm, ldp.sensitivity, ldp.epsilon, ldp.delta))
    if not mods:
        return []
    aside = AuditAside()
    return [aside.outer, *mods, aside.inner]


def _run_config_dp_mods(msg: Message, context: Context, call_next) -> Message:
    """The DP mods of the scenario in the run config (known only per message under ``flwr run``)."""
    for mod in reversed(dp_mods(scenario_from_run_config(context.run_config))):
        call_next = partial(_call_mod, mod, call_next)
    return call_next(msg, context)


def _call_mod(mod, call_next, msg: Message, context: Context) -> Message:
    return mod(msg, context, call_next)


def build_client_app(scenario: Scenario | None = None) -> ClientApp:
    """A ClientApp for ``scenario``, or for the scenario named in the run config when None.
    Flower's DP mods (``dp_mods``) sit on the train function only."""
    app = ClientApp()

    @app.train(mods=dp_mods(scenario) if scenario is not None else [_run_config_dp_mods])
    def train(msg: Message, context: Context) -> Message:
        active = scenario or scenario_from_run_config(context.run_config)
        return client_round(
            active, msg, int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
        )

    return app


app = build_client_app()
