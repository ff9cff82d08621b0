"""AuditingStrategy: any Flower strategy, with an honest-but-curious auditor in the loop.

Hooks, in the order Flower calls them each round:

* ``configure_train(round, arrays, config, grid)`` keeps the global weights W_t it sends out
  (``aggregate_train`` never receives them) and delegates.
* ``aggregate_train(round, replies)`` splits every reply into an Observation (what the server
  legitimately sees) and a GroundTruth (the client's ``audit`` record, simulation only), runs the
  Auditor, strips everything but ``arrays`` and ``metrics``, then lets the inner strategy
  aggregate. In FedSGD the aggregate is a gradient, so it returns W_t - lr * aggregate.
* Secure aggregation (``federation.secure_aggregation_group = K > 1``): replies are first
  replaced by one per group of K consecutive partition ids, holding only the group's
  example-weighted mean update, exactly what SecAgg+ reveals. The auditor and the inner
  strategy see nothing else; the group's ground truth is the union of its members' examples.
  (Flower's SecAgg+ runs only on its legacy workflow path, so the sum is computed exactly here;
  the arithmetic the server ends up with is the same.)
* Evaluation hooks and ``summary`` are delegated unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedaudit import federation
from fedaudit.audit.auditor import Auditor
from fedaudit.audit.records import AttackRecord, ClientError, Record
from fedaudit.audit.truth import GroundTruth
from fedaudit.config import Scenario
from fedaudit.models import ModelBundle

#: Reply records the inner strategy sees; everything else is audit-only payload.
AGGREGATED_KEYS = ("arrays", "metrics")
#: Privacy budget a client reports in its metrics (DP-SGD), recorded with every audit of its update.
PRIVACY_METRICS = ("dp-epsilon", "dp-delta")


def _metrics(msg: Message) -> MetricRecord:
    return msg.content["metrics"]


def _num_examples(msg: Message) -> int:
    return int(_metrics(msg)["num-examples"])


def _partition_id(msg: Message) -> int:
    info = msg.content.config_records.get("client-info")
    return int(info["partition-id"]) if info is not None else int(msg.metadata.src_node_id)


def _truth(msg: Message) -> GroundTruth:
    gt = msg.content["audit"].to_torch_state_dict()
    return GroundTruth(**{k: gt[k] for k in ("labels", "input_ids", "attention_mask", "features") if k in gt})


class AuditingStrategy(Strategy):
    """Wraps ``inner`` (e.g. FedAvg): audits every training reply before ``inner`` aggregates it.

    Args:
        inner: the strategy that aggregates and evaluates (it never sees the audit payload).
        auditor: runs the scenario's attacks on each Observation and records the results.
        scenario: the run's scenario (training mode, lr, secure-aggregation group size).
        public_model: the model bundle attacks may copy (architecture, tokenizer, adapter).
        sink: receives every record this strategy produces itself (client errors).
    """

    def __init__(
        self,
        inner: Strategy,
        auditor: Auditor,
        scenario: Scenario,
        public_model: ModelBundle,
        sink: Callable[[Record], None] | None = None,
    ) -> None:
        self.inner = inner
        self.auditor = auditor
        self.scenario = scenario
        self.public_model = public_model
        self.sink = sink
        self._global: dict[int, dict[str, torch.Tensor]] = {}

    # -- training -------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Keep the global weights W_t of ``server_round`` (``arrays``), then delegate.

        Returns:
            The training messages ``inner`` builds for the round.
        """
        self._global = {server_round: arrays.to_torch_state_dict()}
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Record failed replies, merge secure-aggregation groups, audit each good reply, strip
        the audit payload and let ``inner`` aggregate.

        Args:
            server_round: the round whose global weights ``configure_train`` kept.
            replies: the clients' training replies (``arrays``, ``metrics``, ``client-info`` and,
                in simulation, the ``audit`` ground truth).

        Returns:
            ``inner``'s aggregate (FedSGD: turned from a mean gradient into the new weights
            W_t - lr * g) and its aggregated metrics.
        """
        global_weights = self._global[server_round]
        replies = [msg for msg in replies if not self.record_failure(server_round, msg)]
        if self.scenario.federation.secure_aggregation_group > 1:
            replies = self.secure_aggregate(replies)
        for msg in replies:
            self.audit_reply(server_round, msg, global_weights)
            for key in [k for k in msg.content.keys() if k not in AGGREGATED_KEYS]:
                del msg.content[key]
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        if arrays is not None and self.scenario.training.mode == "fedsgd":
            grads = arrays.to_torch_state_dict()
            lr = self.scenario.training.lr
            arrays = ArrayRecord.from_torch_state_dict(
                {k: w - lr * grads[k].to(w.dtype) for k, w in global_weights.items()}
            )
        return arrays, metrics

    def record_failure(self, server_round: int, msg: Message) -> bool:
        """Records a reply that carries an error as a ``ClientError``; True if it did."""
        if msg.has_error():
            self._emit(ClientError(round=server_round, client=str(msg.metadata.src_node_id), reason=msg.error.reason))
        return msg.has_error()

    def secure_aggregate(self, replies: list[Message]) -> list[Message]:
        """One reply per secure-aggregation group: the first member's message, its arrays replaced
        by the group's weighted mean and its metrics by the group's totals; the rest are dropped."""
        size = self.scenario.federation.secure_aggregation_group
        groups: dict[int, list[Message]] = {}
        for msg in sorted(replies, key=_partition_id):
            groups.setdefault(_partition_id(msg) // size, []).append(msg)
        merged = []
        for members in groups.values():
            counts = [_num_examples(m) for m in members]
            head = members[0].content
            head["arrays"] = ArrayRecord.from_torch_state_dict(
                federation.secure_sum([m.content["arrays"].to_torch_state_dict() for m in members], counts)
            )
            metrics = {"num-examples": sum(counts)}
            metrics.update(
                {k: max(float(_metrics(m)[k]) for m in members) for k in PRIVACY_METRICS if k in _metrics(members[0])}
            )
            head["metrics"] = MetricRecord(metrics)
            head["client-info"] = ConfigRecord(
                {"partition-id": "+".join(str(_partition_id(m)) for m in members), "group-size": len(members)}
            )
            if all("audit" in m.content.array_records for m in members):
                truth = federation.union_truth([_truth(m) for m in members])
                head["audit"] = ArrayRecord.from_torch_state_dict(
                    {k: v for k, v in vars(truth).items() if v is not None}
                )
            else:
                head.array_records.pop("audit", None)
            merged.append(members[0])
        return merged

    def audit_reply(
        self, server_round: int, msg: Message, global_weights: dict[str, torch.Tensor]
    ) -> list[AttackRecord]:
        """The server's Observation of one reply (and its GroundTruth, when the client sent one),
        through every attack; returns the records (the auditor has already sunk them)."""
        content = msg.content
        info = content.config_records.get("client-info")
        client = str(info["partition-id"]) if info is not None else str(msg.metadata.src_node_id)
        group_size = int(info["group-size"]) if info is not None and "group-size" in info else 1
        metrics = _metrics(msg)
        privacy = {k.removeprefix("dp-"): float(metrics[k]) for k in PRIVACY_METRICS if k in metrics}
        observation = federation.observe(
            self.scenario,
            server_round,
            client,
            self.public_model,
            global_weights,
            content["arrays"].to_torch_state_dict(),
            _num_examples(msg),
            group_size=group_size,
            privacy=privacy,
        )
        truth = _truth(msg) if "audit" in content.array_records else None
        return self.auditor.audit(observation, truth)

    def _emit(self, record: Record) -> None:
        if self.sink is not None:
            self.sink(record)

    # -- evaluation: delegated unchanged ---------------------------------------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.inner.summary()
