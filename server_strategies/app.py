"""The ServerApp: a FedAvg federation whose server audits every client update each round.

Flower's central DP (``[defenses.central_dp]``, FedAvg only) wraps the AuditingStrategy, so the
auditor sits where a curious server does: between the clipping and the noise.
* ``clipping = "server"``: ``DifferentialPrivacyServerSideFixedClipping`` scales each reply's
  weight difference (reply weights minus the weights it sent) down to L2 norm ``clipping_norm``
  and writes back weights; the auditor then sees each client's clipped, un-noised update.
* ``clipping = "client"``: ``DifferentialPrivacyClientSideFixedClipping`` sends
  ``clipping_norm`` in the train config and the client's ``fixedclipping_mod`` clips the same
  difference before sending.
Either way the wrapper adds N(0, (noise_multiplier * clipping_norm / clients)^2) to every entry
of the aggregated weights only. Both wrappers go through ``GroundTruthAround``: the server-side
one clips every ArrayRecord of a reply, so the client's ``audit`` record travels around it, and
both skip a round with a failed client, so failures are recorded before they run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    Strategy,
)

from fedaudit import federation
from fedaudit.audit.auditor import Auditor
from fedaudit.audit.store import RunStore
from fedaudit.config import Scenario
from fedaudit.report.console import RoundConsole
from fedaudit.report.markdown import write_report
from fedaudit.runconfig import scenario_from_run_config
from fedaudit.training import evaluate
from server_strategies.strategy import AuditingStrategy


class GroundTruthAround(Strategy):
    """Carries each reply's ``audit`` record (the client's ground truth, simulation only) around a
    Flower DP wrapper that would treat it as model weights: taken out of the replies before
    ``wrapper.aggregate_train`` and put back when the wrapper hands them to ``inner``.

    Build it with ``GroundTruthAround(inner, lambda s: Wrapper(s, ...))``: the wrapper wraps
    this object's inside view (``self.inside``), which delegates to ``inner``.

    Flower's DP wrappers skip the whole aggregation when any client failed, so ``inner`` never
    sees those replies: the failures are recorded here, before the wrapper runs."""

    def __init__(self, inner: AuditingStrategy, wrap: Callable[[Strategy], Strategy]) -> None:
        self.inner = inner
        self.held: dict[int, ArrayRecord] = {}
        self.inside = _Reattach(self)
        self.wrapper = wrap(self.inside)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self.wrapper.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        if any(msg.has_error() for msg in replies):
            for msg in replies:
                self.inner.record_failure(server_round, msg)
        self.held = {id(msg): msg.content.array_records.pop("audit") for msg in replies
                     if not msg.has_error() and "audit" in msg.content.array_records}
        return self.wrapper.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.wrapper.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.wrapper.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.wrapper.summary()


class _Reattach(Strategy):
    """``GroundTruthAround``'s inside view: puts the held ``audit`` records back, then delegates."""

    def __init__(self, around: GroundTruthAround) -> None:
        self.around = around

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self.around.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        for msg in replies:
            held = self.around.held.pop(id(msg), None)
            if held is not None:
                msg.content["audit"] = held
        return self.around.inner.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.around.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.around.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.around.inner.summary()


def with_central_dp(strategy: AuditingStrategy, scenario: Scenario) -> Strategy:
    """``strategy`` inside Flower's central-DP wrapper when ``[defenses.central_dp]`` asks for it."""
    cdp = scenario.defenses.central_dp
    if cdp is None:
        return strategy
    wrapper = (DifferentialPrivacyClientSideFixedClipping if cdp.clipping == "client"
               else DifferentialPrivacyServerSideFixedClipping)
    return GroundTruthAround(strategy, lambda inside: wrapper(
        inside, cdp.noise_multiplier, cdp.clipping_norm, scenario.federation.clients))


def run_audited_federation(grid: Grid, scenario: Scenario, store: RunStore) -> None:
    """Train ``federation.rounds`` rounds, auditing each reply and recording utility per round."""
    console = RoundConsole(scenario)

    def sink(record: dict[str, Any]) -> None:
        store.append(record)
        console.record(record)

    data = federation.federated_data(scenario)
    public_model = federation.build_global_model(scenario, data.examples)  # what attacks may run
    evaluator = federation.build_global_model(scenario, data.examples)
    holdout = federation.holdout_batch(evaluator, data, scenario)

    def evaluate_global(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        evaluator.load_state(arrays.to_torch_state_dict())
        metrics = evaluate(evaluator, holdout)
        sink({"type": "utility", "round": server_round, "client": None, "attack": None,
              "metrics": metrics, "examples": len(holdout)})
        console.round_done(server_round)
        return MetricRecord(metrics)

    clients = scenario.federation.clients
    inner = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=clients,
                   min_available_nodes=clients)
    auditor = Auditor(scenario.audit.attacks, scenario.audit.budget_seconds, sink=sink, device=scenario.audit.device,
                      options={name: scenario.audit.options(name) for name in scenario.audit.attacks})
    strategy = with_central_dp(AuditingStrategy(inner, auditor, scenario, public_model, sink=sink), scenario)
    t = scenario.training
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord.from_torch_state_dict(public_model.trainable_state()),
        num_rounds=scenario.federation.rounds,
        train_config=ConfigRecord({"mode": t.mode, "lr": t.lr, "local-epochs": t.local_epochs,
                                   "batch-size": t.batch_size, "mini-batch-size": t.mini_batch_size}),
        evaluate_fn=evaluate_global,
    )
    write_report(store.path)


def build_server_app(scenario: Scenario | None = None, run_dir: Path | None = None) -> ServerApp:
    """A ServerApp for ``scenario`` writing to ``run_dir``; by default both come from the run config."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        active = scenario or scenario_from_run_config(context.run_config)
        store = RunStore(run_dir) if run_dir is not None else RunStore.create(active)
        print(f"fedaudit run directory: {store.path}", flush=True)
        run_audited_federation(grid, active, store)

    return app


app = build_server_app()
