"""The ServerApp: a FedAvg federation whose server audits every client update each round.

Flower's central DP (``[defenses.central_dp]``, FedAvg only) wraps the AuditingStrategy, so the
auditor sits where a curious server does: between the clipping and the noise
(``server_strategies.central_dp``).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, Strategy

from fedaudit import federation
from fedaudit.audit.auditor import SERVER_WORK, Auditor
from fedaudit.audit.pool import AuditPool
from fedaudit.audit.records import Record, UtilityRecord
from fedaudit.audit.store import RunStore
from fedaudit.config import Scenario
from fedaudit.report.background import BackgroundReport, say_why_not
from fedaudit.report.console import RoundConsole
from fedaudit.report.markdown import write_report
from fedaudit.report.progress import RunProgress
from fedaudit.scenario import scenario_from_run_config
from fedaudit.training import evaluate
from server_strategies.central_dp import with_central_dp
from server_strategies.nodes import CountingGrid, NotEnoughNodes, wait_for_nodes
from server_strategies.strategy import AuditingStrategy

# Flower's logger has its own handler; opacus (imported by the training code) gives the root
# logger one too at import, so every Flower line came out twice (``flwr run --stream``).
logging.getLogger("flwr").propagate = False


def run_audited_federation(
    grid: Grid, scenario: Scenario, store: RunStore, resume: bool = False, progress: RunProgress | None = None
) -> None:
    """Train ``federation.rounds`` rounds, auditing each reply and recording utility per round;
    the global model after each round is checkpointed. With ``resume``, continue ``store``'s run
    after its last finished round (``RunStore.resume``). ``progress`` hears of every step."""
    console = RoundConsole(scenario, progress=progress)
    writing = threading.Lock()  # records come from the audit threads and from Flower's

    def sink(record: Record) -> None:
        with writing:
            store.append(record)
            console.record(record)

    data = federation.federated_data(scenario)
    public_model = federation.build_global_model(scenario, data.examples)  # what attacks may run
    evaluator = federation.build_global_model(scenario, data.examples)
    holdout = federation.holdout_batch(evaluator, data, scenario)
    done = store.resume() if resume else 0
    initial = store.load_checkpoint(done) if resume else public_model.trainable_state()
    if done >= scenario.federation.rounds:
        write_report(store.path)
        return

    def evaluate_global(flower_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if resume and flower_round == 0:  # round ``done``: evaluated and recorded before the kill
            return None
        server_round = flower_round + done
        weights = arrays.to_torch_state_dict()
        store.save_checkpoint(server_round, weights)
        with SERVER_WORK:
            evaluator.load_state(weights)
            metrics = evaluate(evaluator, holdout)

        def finished() -> None:  # the utility record marks the round done: after its audits
            sink(UtilityRecord(round=server_round, metrics=metrics, examples=len(holdout)))
            console.round_done(server_round)
            if not store.closed and 0 < server_round < scenario.federation.rounds:  # the last: at the end
                reporter.request()

        auditing.schedule.after(server_round, finished)
        return MetricRecord({k: v for k, v in metrics.items() if math.isfinite(v)})

    clients = scenario.federation.clients
    inner = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=clients, min_available_nodes=clients)
    pool = AuditPool.for_audit(scenario.audit, scenario.federation.ray_address)
    auditor = Auditor.for_scenario(scenario.audit, sink=sink, pool=pool)
    auditing = AuditingStrategy(inner, auditor, scenario, public_model, sink, done + 1, console.progress)
    reporter = BackgroundReport(store.path)  # the report of the rounds so far, off the critical path
    try:
        _train(grid, with_central_dp(auditing, scenario), scenario, initial, done, evaluate_global)
        auditing.schedule.wait(at_most=0)  # every audit recorded before the last report
    finally:
        auditor.close()
        reporter.close()
    if not store.closed:
        store.keep_last_checkpoint()
        _report_or_say_why(store, "the report")


def _train(grid: Grid, strategy: Strategy, scenario: Scenario, initial: dict, done: int, evaluate_fn: Callable) -> None:
    """Flower's training loop from round ``done + 1`` to the last, starting from ``initial``."""
    t = scenario.training
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord.from_torch_state_dict(initial),
        num_rounds=scenario.federation.rounds - done,
        train_config=ConfigRecord(
            {
                "mode": t.mode,
                "lr": t.lr,
                "local-epochs": t.local_epochs,
                "batch-size": t.batch_size,
                "mini-batch-size": t.mini_batch_size,
            }
        ),
        evaluate_fn=evaluate_fn,
    )


def _report_or_say_why(store: RunStore, what: str) -> None:
    try:
        write_report(store.path)
    except Exception as err:  # noqa: BLE001 - records are what matter; `fedaudit report` renders them later
        say_why_not(what, err)


def build_server_app(
    scenario: Scenario | None = None,
    store: RunStore | None = None,
    resume: bool = False,
    progress: RunProgress | None = None,
) -> ServerApp:
    """A ServerApp for ``scenario`` writing to ``store`` (continuing its run with ``resume``);
    by default both come from the run config. ``progress``: the live display of ``fedaudit run``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        active = scenario or scenario_from_run_config(context.run_config)
        try:
            wait_for_nodes(grid, active.federation.clients)
        except NotEnoughNodes as err:
            # One line, not a traceback: the run cannot start, and the line says how to fix it.
            log(logging.ERROR, "fedaudit: %s", err)
            raise SystemExit(1) from None
        run_store = store if store is not None else RunStore.create(active)
        print(f"fedaudit run directory: {run_store.path}", flush=True)
        if progress is not None:  # replies counted as they arrive, for the live display
            grid = CountingGrid(grid, progress)
        run_audited_federation(grid, active, run_store, resume=resume and store is not None, progress=progress)

    return app


app = build_server_app()
