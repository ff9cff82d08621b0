"""The ClientApp: train per the scenario's ``[training]`` spec and reply with the update.

Reply content:
* ``arrays``: FedSGD, the batch gradient (the server applies the step); FedAvg, the new weights.
* ``metrics``: ``num-examples`` (FedAvg's weighting key) and ``train-loss``.
* ``client-info``: the partition id and the number of local steps taken.
* ``audit`` (only with ``audit.ground_truth``, simulation): the exact token ids and attention
  masks (text) or float inputs (images, tables), and the labels, of every example used. The
  server strips it before aggregating.
"""

from __future__ import annotations

from functools import lru_cache

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedaudit import federation
from fedaudit.config import Scenario, scenario_from_toml
from fedaudit.models import ModelBundle
from fedaudit.runconfig import scenario_from_run_config


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

    content = RecordDict({
        "arrays": ArrayRecord.from_torch_state_dict(update.tensors),
        "metrics": MetricRecord({"num-examples": update.num_examples, "train-loss": update.loss}),
        "client-info": ConfigRecord({"partition-id": partition_id, "local-steps": update.steps}),
    })
    if scenario.audit.ground_truth:
        content["audit"] = ArrayRecord.from_torch_state_dict(
            {k: v for k, v in batch.tensors().items() if v is not None})
    return Message(content, reply_to=msg)


def build_client_app(scenario: Scenario | None = None) -> ClientApp:
    """A ClientApp for ``scenario``, or for the scenario named in the run config when None."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        active = scenario or scenario_from_run_config(context.run_config)
        return client_round(active, msg, int(context.node_config["partition-id"]),
                            int(context.node_config["num-partitions"]))

    return app


app = build_client_app()
