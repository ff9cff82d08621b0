"""AuditingStrategy: any Flower strategy, with an honest-but-curious auditor in the loop.

Hooks, in the order Flower calls them each round:

* ``configure_train(round, arrays, config, grid)`` keeps the global weights W_t it sends out
  (``aggregate_train`` never receives them) and delegates.
* ``aggregate_train(round, replies)`` splits every reply into an Observation (what the server
  legitimately sees) and a GroundTruth (the client's ``audit`` record, simulation only), runs the
  Auditor, strips everything but ``arrays`` and ``metrics``, then lets the inner strategy
  aggregate. In FedSGD the aggregate is a gradient, so it returns W_t - lr * aggregate.
* Evaluation hooks and ``summary`` are delegated unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedaudit import federation
from fedaudit.audit.auditor import Auditor
from fedaudit.audit.observation import GroundTruth
from fedaudit.config import Scenario
from fedaudit.models import ModelBundle

#: Reply records the inner strategy sees; everything else is audit-only payload.
AGGREGATED_KEYS = ("arrays", "metrics")


class AuditingStrategy(Strategy):
    def __init__(self, inner: Strategy, auditor: Auditor, scenario: Scenario, public_model: ModelBundle,
                 sink: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.inner = inner
        self.auditor = auditor
        self.scenario = scenario
        self.public_model = public_model
        self.sink = sink
        self._global: dict[int, dict[str, torch.Tensor]] = {}

    # -- training -------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._global = {server_round: arrays.to_torch_state_dict()}
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        global_weights = self._global[server_round]
        for msg in replies:
            if msg.has_error():
                self._emit({"type": "client_error", "round": server_round, "client": str(msg.metadata.src_node_id),
                            "reason": msg.error.reason})
                continue
            self.audit_reply(server_round, msg, global_weights)
            for key in [k for k in msg.content.keys() if k not in AGGREGATED_KEYS]:
                del msg.content[key]
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        if arrays is not None and self.scenario.training.mode == "fedsgd":
            grads = arrays.to_torch_state_dict()
            lr = self.scenario.training.lr
            arrays = ArrayRecord.from_torch_state_dict(
                {k: w - lr * grads[k].to(w.dtype) for k, w in global_weights.items()})
        return arrays, metrics

    def audit_reply(self, server_round: int, msg: Message, global_weights: dict[str, torch.Tensor]) -> list[dict]:
        content = msg.content
        info = content.config_records.get("client-info")
        client = str(info["partition-id"]) if info is not None else str(msg.metadata.src_node_id)
        num_examples = int(next(iter(content.metric_records.values()))["num-examples"])
        observation = federation.observe(self.scenario, server_round, client, self.public_model, global_weights,
                                         content["arrays"].to_torch_state_dict(), num_examples)
        truth = None
        if "audit" in content.array_records:
            gt = content["audit"].to_torch_state_dict()
            truth = GroundTruth(**{k: gt[k] for k in ("labels", "input_ids", "attention_mask", "features") if k in gt})
        return self.auditor.audit(observation, truth)

    def _emit(self, record: dict[str, Any]) -> None:
        if self.sink is not None:
            self.sink(record)

    # -- evaluation: unchanged ------------------------------------------------------------
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.inner.summary()
