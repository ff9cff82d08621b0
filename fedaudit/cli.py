"""fedaudit command line: ``run``, ``report``, ``attack``, ``sweep`` and ``list``.

Scenario problems print one line (``fedaudit: error: ...``) and exit with status 2. Heavy modules
(torch, transformers, Flower) are imported inside the commands that need them: ``report``,
``list`` and ``--help`` never load torch.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedaudit import __version__, catalog, noise, processes
from fedaudit.config import ConfigError, Scenario
from fedaudit.ray_cluster import RayAddressError, ray_init_address
from fedaudit.report.summary import plural
from fedaudit.safety import clean_text, shorten

# Offline-friendly Flower defaults (no telemetry, no update check, no per-run `uv sync` that would
# pull a CUDA torch); a user's own settings win.
for _key, _value in {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_DEDUP_LOGS": "0",
}.items():
    os.environ.setdefault(_key, _value)

noise.quiet_libraries()  # ``run --verbose`` turns them back on

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Federated learning with an honest-but-curious auditing server.",
)
#: soft_wrap: a message is one line however wide the terminal; a wrapped line would split the error.
console = Console(highlight=False, soft_wrap=True)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"fedaudit {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Federated learning with an honest-but-curious auditing server."""


ScenarioArg = Annotated[Optional[Path], typer.Argument(help="Scenario TOML (default: simulations/quickstart.toml).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a key: section.key=value (repeatable).")]


#: An error line longer than this is cut: it echoes values, and values can be whole files.
ERROR_CHARS = 300


def fail(message: str) -> None:
    """One line on stderr (control characters removed, cut to ``ERROR_CHARS``), exit status 2."""
    line = f"fedaudit: error: {clean_text(message)}"
    typer.echo(shorten(line, ERROR_CHARS), err=True)
    raise typer.Exit(2)


def _load(path: Path | None, overrides: list[str] | None) -> Scenario:
    from fedaudit.scenario import load_scenario  # checks the attacks: imports the registry (torch)

    try:
        return load_scenario(path, overrides or [])
    except ConfigError as err:
        fail(str(err))
        raise  # unreachable: fail() exits


@app.command()
def run(
    scenario: ScenarioArg = None,
    set_: SetOpt = None,
    verbose: Annotated[bool, typer.Option(help="Show Flower's and Ray's own logs.")] = False,
    resume: Annotated[
        Optional[Path], typer.Option(help="Continue this killed run (a run directory) after its last finished round.")
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Only check the scenario, its data and its model (one forward pass).")
    ] = False,
    ray_address: Annotated[
        Optional[str], typer.Option(help="Join this Ray cluster (HOST:PORT of its head); default: a Ray of its own.")
    ] = None,
) -> None:
    """Run a federated simulation in which the server audits every client update."""
    if verbose:
        from fedaudit.models.quiet import VERBOSE_ENV

        noise.quiet_libraries(verbose=True)
        os.environ[VERBOSE_ENV] = "1"  # for this process and the Ray workers it starts
    from fedaudit.audit.store import SCENARIO, RunStore
    from fedaudit.federation import prepare

    if resume is not None and (scenario is not None or set_):
        fail("--resume continues a run with the scenario in its directory: give no scenario file or --set")
    if resume is not None and not (resume / SCENARIO).is_file():
        fail(f"--resume {resume}: not a run directory (no {SCENARIO})")
    sc = _load(resume / SCENARIO if resume is not None else scenario, set_)
    source = "--ray-address" if ray_address is not None else "federation.ray_address ="
    if ray_address is not None:  # the simulation's clients and the audit tasks join it alike
        sc.federation.ray_address = ray_address
    try:
        ray_init = ray_init_address(sc.federation.ray_address, source=source)
    except RayAddressError as err:
        fail(str(err))
    try:
        prepare(sc)
        if check:
            console.print(f"Scenario {escape(sc.name)}: the schema, the data and the model check out.")
            return
        store = RunStore(resume) if resume is not None else RunStore.create(sc)
    except ConfigError as err:
        fail(str(err))
    except OSError as err:
        fail(f"output.dir = {sc.output.dir!r}: {err}")
    verb = f"Resuming {store.path}" if resume is not None else f"Scenario [bold]{escape(sc.name)}[/]"
    console.print(
        f"{verb}: {plural(sc.federation.clients, 'client')} x {plural(sc.federation.rounds, 'round')}, "
        f"{escape(sc.model.name)} ({sc.training.mode}), attacks: {', '.join(sc.audit.attacks)}"
    )
    from fedaudit.audit.records import rounds_completed

    finished = resume is not None and rounds_completed(store.records()) >= sc.federation.rounds
    stopped = None if finished else _simulate(sc, store, verbose, resume is not None, ray_init)
    _finish(sc, store, stopped)


def _simulate(sc: Scenario, store, verbose: bool, resume: bool, ray_address: str = "local") -> str | None:
    """Flower's simulation of the scenario; None when it ran to its end, else why it stopped."""
    from flwr.common.logger import update_console_handler
    from flwr.simulation import run_simulation

    from clients.app import build_client_app
    from fedaudit.report.progress import RunProgress
    from server_strategies.app import build_server_app

    if not verbose:
        noise.quiet_simulation()
    update_console_handler(colored=sys.stderr.isatty())  # no color codes in a log file
    failure: list[BaseException] = []
    progress = RunProgress(console, sc.federation.rounds)

    def simulate() -> None:
        try:
            run_simulation(
                server_app=build_server_app(sc, store, resume=resume, progress=progress),
                client_app=build_client_app(sc),
                num_supernodes=sc.federation.clients,
                backend_config={
                    "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                    "init_args": {
                        "address": ray_address,  # never a stale "current cluster" (fedaudit.ray_cluster)
                        "logging_level": logging.INFO if verbose else logging.ERROR,
                        "log_to_driver": verbose,
                        **_audit_resources(sc, ray_address),
                    },
                },
                verbose_logging=verbose,
            )
        except BaseException as err:  # noqa: BLE001 - reported as one line below
            failure.append(err)

    # Off the main thread: Ray's threads take signals the main thread would never see while
    # blocked in Flower's joins, and Ray installs its SIGTERM handler only on the main thread.
    thread = threading.Thread(target=simulate, name="flower-simulation", daemon=True)
    try:
        with progress:  # drawn on a terminal only
            thread.start()
            while thread.is_alive():
                thread.join(0.5)
    except KeyboardInterrupt as err:
        store.close()  # what the dying round produces from here on is not part of the run
        return f"stopped by {err.args[0] if err.args else 'Ctrl-C'}"
    if failure:
        cause = failure[0].__cause__ or failure[0]
        return f"{type(cause).__name__}: {cause}"
    return None


def _audit_resources(sc: Scenario, ray_address: str) -> dict:
    """A run's own Ray declares ``audit = audit.workers`` (``AttackResources``); a joined cluster's nodes their own."""
    if ray_address != "local" or sc.audit.backend != "ray":
        return {}
    return {"resources": {"audit": float(sc.audit.workers)}}


def _finish(sc: Scenario, store, stopped: str | None) -> None:
    """The report of what finished, one line on where it is, and the exit status."""
    from fedaudit.audit.records import read_records, rounds_completed
    from fedaudit.report.closing import print_closing
    from fedaudit.report.markdown import write_report

    write_report(store.path)
    records = read_records(store.path)
    rounds_done = rounds_completed(records)
    console.print(
        f"Records: {store.records_path} ({len(records)} records, {rounds_done}/{sc.federation.rounds} rounds)"
    )
    print_closing(store.path, console)
    if stopped is not None or rounds_done < sc.federation.rounds:
        why = f" ({clean_text(stopped)[:200]})" if stopped else ""
        fail(
            f"the run stopped after {rounds_done} of {sc.federation.rounds} rounds{why}; what finished is in "
            f"{store.path} (continue it with: fedaudit run --resume {store.path})"
        )


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (runs/<run-id>).")],
    format_: Annotated[
        Optional[str], typer.Option("--format", help="Write only this: html, md or json (default: all three).")
    ] = None,
    open_: Annotated[bool, typer.Option("--open", help="Open report.html in a web browser.")] = False,
) -> None:
    """Write report.html, report.md and summary.json for a run (also one stopped mid-way)."""
    from fedaudit.audit.records import RECORDS
    from fedaudit.report.markdown import FORMATS, write_reports

    if not (run_dir / RECORDS).is_file():
        fail(f"{run_dir}: not a run directory (no {RECORDS})")
    if format_ is not None and format_ not in FORMATS:
        fail(f"--format {format_!r}: expected one of {', '.join(FORMATS)}")
    for path in write_reports(run_dir, [format_] if format_ else FORMATS):
        console.print(f"Report: {escape(str(path))}")
    if open_:
        html = run_dir / FORMATS["html"]
        if not html.is_file():
            fail(f"--open: {html} does not exist (write it with --format html)")
        import webbrowser

        webbrowser.open(html.resolve().as_uri())


# The names in the epilog too: typer 0.20 with click 8.5 leaves argument help out of --help.
@app.command(epilog=f"Attacks: {', '.join(catalog.ATTACKS)}. What each needs: fedaudit list attacks.")
def attack(
    name: Annotated[str, typer.Argument(help=f"Attack name: {', '.join(catalog.ATTACKS)} (fedaudit list attacks).")],
    scenario: Annotated[Optional[Path], typer.Option(help="Scenario TOML.")] = None,
    set_: SetOpt = None,
    batches: Annotated[int, typer.Option(min=1, help="How many batches to attack.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed for sampling the batches.")] = 0,
    out: Annotated[Optional[Path], typer.Option(help="Write results here (JSON).")] = None,
) -> None:
    """Attack K client updates computed exactly as a client would, one per sampled batch."""
    from fedaudit.attacks import REGISTRY
    from fedaudit.federation import prepare
    from fedaudit.federation.sampled import evaluate_attack
    from fedaudit.report.progress import Counter

    if name not in REGISTRY:
        fail(f"unknown attack {name!r}; allowed: {', '.join(REGISTRY.names())}")
    sc = _load(scenario, set_)
    try:
        data, public = prepare(sc)
    except ConfigError as err:
        fail(str(err))
    with Counter(console, f"{name}: batches", batches) as counter:  # drawn on a terminal only
        result = evaluate_attack(name, sc, data, public, batches, seed, out, on_batch=counter.update)
    title = f"{name} on {sc.name}: {plural(batches, 'batch', 'batches')} of {plural(sc.training.batch_size, 'example')}"
    table = Table(title=escape(title))
    for column in ("batch", "status", "metrics", "seconds", "peak MB"):
        table.add_column(column)
    from fedaudit.report.summary import format_metrics

    for row in result["batches"]:
        table.add_row(
            str(row["batch"]),
            row["status"],
            format_metrics(row["metrics"]),
            f"{row['seconds']:.3f}",
            f"{row['peak_mem_mb']:.1f}",
        )
    console.print(table)
    agg = result["aggregate"]
    console.print("aggregate: " + format_metrics({k: v for k, v in agg.items() if k not in ("status_counts",)}))
    if out is not None:
        console.print(f"Wrote {out}")


@app.command()
def sweep(
    scenario: ScenarioArg = None,
    grid: Annotated[
        Optional[list[str]], typer.Option("--grid", help="KEY=V1,V2,... (repeatable; the product runs).")
    ] = None,
    set_: SetOpt = None,
    workers: Annotated[
        Optional[int], typer.Option(min=1, help="Cells run side by side (default: one per 4 CPU cores).")
    ] = None,
    out: Annotated[
        Optional[Path], typer.Option(help="Sweep directory (default: <output.dir>/sweep-<time>-<name>).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Keep the cells --out already finished; run only the others.")] = False,
) -> None:
    """Run a scenario over a grid of settings; write sweep.html, sweep.csv, sweep.md and sweep.png."""
    from fedaudit import sweep as sweeping

    if resume and (out is None or not out.is_dir()):
        fail("--resume needs --out naming an existing sweep directory")
    try:
        parsed = sweeping.parse_grid(grid or [])
        cells = sweeping.plan(scenario, parsed, set_ or [])
    except ConfigError as err:
        fail(str(err))
    workers = workers or max(1, (os.cpu_count() or 1) // 4)
    console.print(f"Sweep: {plural(len(cells), 'cell')} over {', '.join(parsed)}, {workers} at a time")
    from fedaudit.report.progress import Counter

    ran: list[int] = []  # cells this sweep ran (a resumed sweep starts with some done): the ETA's pace

    def progress(result, done: int, total: int) -> None:
        ran.append(done)
        status = f"[magenta]failed: {escape(clean_text(result.error))}[/]" if result.error else "done"
        console.print(
            f"\\[{done}/{total}] cell {result.cell.index} ({escape(result.cell.label)}): {status} "
            f"({result.seconds:.0f} s)"
        )
        counter.update(done, len(ran))

    with Counter(console, "cells", len(cells)) as counter:  # drawn on a terminal only
        path = sweeping.sweep(scenario, parsed, set_ or [], workers, out, progress, resume=resume)
    console.print(f"Sweep: {path / 'sweep.html'} (sweep.md, sweep.csv and sweep.png beside it)")


#: ``fedaudit list`` choices (typer shows and checks them).
Listing = Enum("Listing", {name: name for name in catalog.LISTINGS}, type=str)


@app.command(name="list")
def list_(what: Annotated[Listing, typer.Argument(help="What to list.")]) -> None:
    """List the attacks, zoo models or ready scenarios, one line each."""
    entries = catalog.listing(what.value)
    console.print(catalog.LISTINGS[what.value], markup=False)
    width = max(map(len, entries), default=0)
    for name, text in entries.items():
        console.print(f"  {name:<{width}}  {clean_text(text)}", markup=False)


def main() -> None:
    # ``fedaudit run`` supervises its own run (``fedaudit.processes``): no Ray process outlives it.
    argv = sys.argv[1:]
    if argv[:1] == ["run"] and not {"--help", "--check"} & set(argv) and not processes.supervised():
        sys.exit(processes.run_supervised(argv))
    if not processes.supervised():
        _main()
        return
    processes.stop_on_signals()
    code: int | str | None = 0
    try:
        _main()
    except SystemExit as done:
        code = done.code
    except KeyboardInterrupt:  # before the simulation started
        code = 130
    finally:
        # Exit without waiting for Flower's server thread (a run stopped mid-round leaves it
        # blocked on replies that will never come). Ray's processes go with the process group:
        # the supervisor ends it once this process has exited (ending it from here would let
        # Ray's driver, seeing its raylet die, exit this process with status 1 first); only a
        # run whose supervisor is gone ends its group itself.
        processes.silence_output()
        if not processes.supervisor_alive():
            processes.end_group(grace=0.0)  # SIGKILL at once: Ray's driver may exit us any moment
    os._exit(code if isinstance(code, int) else 1)


def _main() -> None:
    try:
        app()
    except ConfigError as err:  # raised late, e.g. inside a data loader
        try:
            fail(str(err))
        except typer.Exit as done:
            sys.exit(done.exit_code)


if __name__ == "__main__":
    main()
