"""AuditingStrategy: any Flower strategy, with an honest-but-curious auditor in the loop.

Hooks, in the order Flower calls them each round:

* ``configure_train(round, arrays, config, grid)`` keeps the global weights W_t it sends out
  (``aggregate_train`` never receives them) and delegates.
* ``aggregate_train(round, replies)`` first checks every reply against the global model's
  schema (``fedaudit.federation.validation``): a failed reply becomes a ``ClientError``, a bad
  one a ``RejectedUpdate`` (or, with ``federation.on_bad_update = "fail"``, stops the run), and
  neither reaches the auditor or the aggregate. With no update left, or an aggregate that is
  not finite, the round is recorded as skipped and the global model stays as it was. It then
  splits every accepted reply into an Observation (what the server
  legitimately sees) and a GroundTruth (the client's ``audit`` record, simulation only), submits
  them to the Auditor (whose workers run the attacks), strips everything but ``arrays`` and
  ``metrics``, then lets the inner strategy aggregate. In FedSGD the aggregate is a gradient, so
  it returns W_t - lr * aggregate. With ``audit.schedule = "blocking"`` it first waits for the
  round's audits; with "overlap" they go on while the next round trains, and
  ``configure_train`` waits while more than ``audit.max_pending_rounds`` rounds are unaudited
  (``schedule``, an ``AuditSchedule``).
* Secure aggregation (``federation.secure_aggregation_group = K > 1``): replies are first
  replaced by one per group of K consecutive partition ids, holding only the group's
  example-weighted mean update, exactly what SecAgg+ reveals. The auditor and the inner
  strategy see nothing else; the group's ground truth is the union of its members' examples.
  (Flower's SecAgg+ runs only on its legacy workflow path, so the sum is computed exactly here;
  the arithmetic the server ends up with is the same.)
* Resuming a run (``first_round = k + 1``): Flower counts rounds from 1 again, so every hook
  shifts the round it is given by k; clients and records see the run's own round numbers.
* Evaluation hooks and ``summary`` are delegated unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import Future
from functools import partial

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedaudit import federation
from fedaudit.audit.auditor import Auditor
from fedaudit.audit.records import AttackRecord, ClientError, Record, RejectedUpdate, RoundSkipped
from fedaudit.audit.sampling import AuditSample
from fedaudit.audit.schedule import AuditSchedule
from fedaudit.audit.truth import GroundTruth
from fedaudit.config import Scenario
from fedaudit.federation.validation import examples_problem, tensors_problem, weights_problem
from fedaudit.models import ModelBundle
from fedaudit.report.progress import RunProgress

#: Reply records the inner strategy sees; everything else is audit-only payload.
AGGREGATED_KEYS = ("arrays", "metrics")
#: Privacy budget a client reports in its metrics (DP-SGD), recorded with every audit of its update.
PRIVACY_METRICS = ("dp-epsilon", "dp-delta")


class BadUpdate(RuntimeError):
    """A client sent an update the server cannot accept, with ``federation.on_bad_update = "fail"``."""


def _metrics(msg: Message) -> MetricRecord:
    return msg.content["metrics"]


def _num_examples(msg: Message) -> int:
    return int(_metrics(msg)["num-examples"])


def _partition_id(msg: Message) -> int:
    info = msg.content.config_records.get("client-info")
    return int(info["partition-id"]) if info is not None else int(msg.metadata.src_node_id)


def _first_member(msg: Message) -> int:
    """The partition id of a reply, or of the first member of a secure-aggregation group ("0+1")."""
    info = msg.content.config_records.get("client-info")
    partition = info.get("partition-id") if info is not None else None
    if isinstance(partition, str):
        return int(partition.split("+")[0])
    return _partition_id(msg)


def _client(msg: Message) -> str:
    info = msg.content.config_records.get("client-info")
    partition = info.get("partition-id") if info is not None else None
    return str(partition) if partition is not None else str(msg.metadata.src_node_id)


def _arrival_order_free(msg: Message) -> tuple[int, int]:
    """A reply's place in the aggregate: its partition id when it names one, else its node id."""
    info = msg.content.config_records.get("client-info") if not msg.has_error() else None
    partition = info.get("partition-id") if info is not None else None
    ordinal = partition if isinstance(partition, int) and not isinstance(partition, bool) else -1
    return ordinal, int(msg.metadata.src_node_id)


def reply_problem(msg: Message, global_weights: dict[str, torch.Tensor], scenario: Scenario) -> str | None:
    """Why the server cannot use this reply (its records, tensors, ``num-examples`` or partition
    id), or None."""
    content = msg.content
    if "arrays" not in content.array_records:
        return "the reply has no 'arrays' record"
    if "metrics" not in content.metric_records:
        return "the reply has no 'metrics' record"
    try:
        sent = content["arrays"].to_torch_state_dict()
    except Exception as err:  # noqa: BLE001 - whatever a client packed, the reason is recorded
        return f"the 'arrays' record cannot be read as tensors ({type(err).__name__})"
    problem = tensors_problem(sent, global_weights)
    problem = problem or examples_problem(_metrics(msg).get("num-examples"), scenario.training.batch_size)
    info = content.config_records.get("client-info")
    partition = info.get("partition-id") if info is not None else None
    if problem is None and partition is not None:
        clients = scenario.federation.clients
        if isinstance(partition, bool) or not isinstance(partition, int) or not 0 <= partition < clients:
            problem = f"client-info partition-id is not a partition of 0..{clients - 1}"
    return problem


def _common_metrics(replies: list[Message]) -> None:
    """Keep in each reply's metrics only the numbers every reply reports: the inner strategy
    averages them key by key and stops the round on a key one client lacks or adds."""
    tables = [_metrics(msg) for msg in replies]
    shared = set.intersection(*({k for k, v in t.items() if _is_number(v)} for t in tables)) if tables else set()
    for msg, table in zip(replies, tables):
        msg.content["metrics"] = MetricRecord({k: v for k, v in table.items() if k in shared})


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
        sink: receives every record this strategy produces itself (client errors, rejected
            updates, skipped rounds).
        first_round: the run's number for Flower's round 1 (k + 1 when resuming after round k).
        progress: told when a round starts, how many audits it queues and which attack runs
            (the live display of ``fedaudit run``).
    """

    def __init__(
        self,
        inner: Strategy,
        auditor: Auditor,
        scenario: Scenario,
        public_model: ModelBundle,
        sink: Callable[[Record], None] | None = None,
        first_round: int = 1,
        progress: RunProgress | None = None,
    ) -> None:
        self.inner = inner
        self.progress = progress or RunProgress()
        self.offset = first_round - 1
        self.auditor = auditor
        self.scenario = scenario
        self.public_model = public_model
        self.sink = sink
        self.schedule = AuditSchedule()
        self.sample = AuditSample(scenario.audit, scenario.federation.clients)
        self._global: dict[int, dict[str, torch.Tensor]] = {}

    # -- training -------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Keep the global weights W_t of ``server_round`` (``arrays``), then delegate.

        Returns:
            The training messages ``inner`` builds for the round.
        """
        server_round += self.offset
        self.schedule.wait(at_most=self.scenario.audit.max_pending_rounds)  # back-pressure (blocking: 0 left)
        self._global = {server_round: arrays.to_torch_state_dict()}
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        self.progress.round_started(server_round, len(messages))
        return messages

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
        # In partition order: a float sum depends on its order, which should not be the order
        # the clients happened to answer in (runs would differ in the last bits).
        replies = sorted(replies, key=_arrival_order_free)
        accepted = self.screen(server_round, replies)
        server_round += self.offset
        global_weights = self._global[server_round]
        if not accepted:
            self._emit(RoundSkipped(server_round, f"none of the {len(replies)} replies could be used"))
            return None, None
        if self.scenario.federation.secure_aggregation_group > 1:
            accepted = self.secure_aggregate(accepted)
        audited = [self.sample.selects(server_round, _first_member(msg)) for msg in accepted]
        self.progress.audits_queued(sum(audited) * len(self.auditor.attacks))
        for msg, audit in zip(accepted, audited):
            if audit:
                self.schedule.add(server_round, self.audit_reply(server_round, msg, global_weights))
            for key in [k for k in msg.content.keys() if k not in AGGREGATED_KEYS]:
                del msg.content[key]
        if self.scenario.audit.schedule == "blocking":
            self.schedule.wait(at_most=0)
        _common_metrics(accepted)
        arrays, metrics = self.inner.aggregate_train(server_round, accepted)
        if arrays is None:
            return None, metrics
        weights = arrays.to_torch_state_dict()
        if self.scenario.training.mode == "fedsgd":
            lr = self.scenario.training.lr
            weights = {k: w - lr * weights[k].to(w.dtype) for k, w in global_weights.items()}
            arrays = ArrayRecord.from_torch_state_dict(weights)
        problem = weights_problem(weights)
        if problem is not None:
            self._emit(RoundSkipped(server_round, f"{problem}; the global model stays as it was"))
            return None, metrics
        return arrays, metrics

    def screen(self, flower_round: int, replies: list[Message]) -> list[Message]:
        """The replies of Flower's round ``flower_round`` the server can use; the others are
        recorded (``accept``)."""
        server_round = flower_round + self.offset
        return [msg for msg in replies if self.accept(server_round, msg, self._global[server_round])]

    def accept(self, server_round: int, msg: Message, global_weights: dict[str, torch.Tensor]) -> bool:
        """Records a failed reply (``ClientError``) or a bad one (``RejectedUpdate``; with
        ``on_bad_update = "fail"`` it then raises ``BadUpdate``); True for a usable reply."""
        if msg.has_error():
            self._emit(ClientError(round=server_round, client=str(msg.metadata.src_node_id), reason=msg.error.reason))
            return False
        problem = reply_problem(msg, global_weights, self.scenario)
        if problem is None:
            return True
        rejected = RejectedUpdate(round=server_round, client=_client(msg), reason=problem)
        self._emit(rejected)
        if self.scenario.federation.on_bad_update == "fail":
            raise BadUpdate(f"round {server_round}: client {rejected.client}: {problem}")
        return False

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
    ) -> list[Future[AttackRecord]]:
        """The server's Observation of one reply (and its GroundTruth, when the client sent one),
        submitted to every attack; returns the future records (the auditor sinks each as made)."""
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
        return self.auditor.submit(observation, truth, on_start=partial(self.progress.attack_started, client))

    def skip(self, flower_round: int, reason: str) -> None:
        """Record Flower's round ``flower_round`` as skipped (the global model stays as it was)."""
        self._emit(RoundSkipped(flower_round + self.offset, reason))

    def _emit(self, record: Record) -> None:
        if self.sink is not None:
            self.sink(record)

    # -- evaluation: delegated unchanged ---------------------------------------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round + self.offset, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round + self.offset, replies)

    def summary(self) -> None:
        self.inner.summary()
