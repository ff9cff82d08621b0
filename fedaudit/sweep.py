"""``fedaudit sweep``: run a scenario over the product of settings and tabulate leakage against
utility and privacy budget.

Each cell is an ordinary ``fedaudit run`` (a subprocess, so cells are isolated and can run side
by side) writing into ``<sweep>/cell-NN/``. After every cell, ``sweep.html`` (the grid, plots
per attack and a link to each cell's report), ``sweep.csv``, ``sweep.md`` and ``sweep.png`` are
rewritten (``write_private``: unique temporary file, atomic rename) from every
cell finished so far, so a sweep stopped mid-way keeps what it measured, and ``resume`` runs only
the cells it lacks (a cell counts as finished when its run directory holds the same resolved
scenario and a utility record for every round). ``sweep.png`` plots the headline leakage of each
attack against the final global accuracy and, when clients ran DP-SGD, against epsilon.

Kills and double runs (``fedaudit.sweep_cells``): a running cell holds ``<sweep>/cell-NN.lock``, and
a cell whose lock names a live process is skipped ("running elsewhere"), never run twice at once.
SIGTERM or Ctrl-C ends every running cell's process group, writes what finished and exits with
128 + the signal; ``kill -9`` of the sweep still ends its cells (parent-death signal).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import math
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedaudit.audit.records import (
    RECORDS,
    Record,
    attack_records,
    client_errors,
    read_records,
    rounds_completed,
    summarize,
    utility_records,
)
from fedaudit.audit.store import SCENARIO
from fedaudit.config import ConfigError, Scenario, parse_override
from fedaudit.safety import write_private
from fedaudit.scenario import load_scenario
from fedaudit.sweep_cells import Cells, Stopped, acquire_lock, stop_on_signals

#: The metric that stands for "how much leaked" in the plot, by preference (text, images, tables, labels).
HEADLINE_METRICS = ("rouge1", "psnr", "feature_accuracy", "label_accuracy", "token_recall")
#: The metrics sweep.md shows, in this order, when any cell has them.
TABLE_METRICS = tuple(
    "rouge1 rouge2 exact_match token_recall psnr ssim exact_fraction feature_accuracy label_accuracy".split()
)


@dataclass(frozen=True)
class Cell:
    index: int
    settings: dict[str, Any]
    """Grid key -> value of this cell."""

    @property
    def overrides(self) -> list[str]:
        return [f"{key}={_toml_value(value)}" for key, value in self.settings.items()]

    @property
    def label(self) -> str:
        return ", ".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in self.settings.items())


@dataclass
class CellResult:
    cell: Cell
    run_dir: Path | None
    seconds: float | None
    """Wall time of the cell's run (None for a resumed cell whose time was not recorded)."""
    error: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)


def _toml_value(value: Any) -> str:
    import tomli_w

    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def _split_top_level(text: str) -> list[str]:
    """``a,b,[c,d]`` -> ["a", "b", "[c,d]"]: commas inside brackets, braces or quotes do not split."""
    parts, depth, quote, current = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts]


def parse_grid(items: Iterable[str]) -> dict[str, list[Any]]:
    """``["a.b=1,2", "c.d=x,y"]`` -> {"a.b": [1, 2], "c.d": ["x", "y"]} (values read as TOML)."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not raw.strip():
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,..., e.g. training.local_epochs=1,2,5")
        parts = _split_top_level(raw)
        if any(part == "" for part in parts):
            raise ConfigError(f"--grid {item!r}: an empty value in the list")
        values = [parse_override(f"{key}={part}")[1] for part in parts]
        if key.strip() in grid:
            raise ConfigError(f"--grid {key.strip()!r} is given twice")
        grid[key.strip()] = values
    if not grid:
        raise ConfigError("fedaudit sweep needs at least one --grid KEY=V1,V2,...")
    return grid


def plan(scenario_path: Path | None, grid: dict[str, list[Any]], overrides: list[str]) -> list[Cell]:
    """Every cell of the grid, each validated as a scenario before anything runs."""
    cells = []
    for index, values in enumerate(itertools.product(*grid.values())):
        cell = Cell(index, dict(zip(grid, values)))
        try:
            load_scenario(scenario_path, [*overrides, *cell.overrides])
        except ConfigError as err:
            raise ConfigError(f"grid cell {cell.label}: {err}") from None
        cells.append(cell)
    return cells


def _cell_overrides(cell: Cell, overrides: list[str], sweep_dir: Path) -> list[str]:
    return [*overrides, *cell.overrides, f"output.dir={_toml_value(str(sweep_dir / f'cell-{cell.index:02d}'))}"]


def finished_cell(
    cell: Cell, scenario_path: Path | None, overrides: list[str], sweep_dir: Path, seconds: dict[int, float]
) -> CellResult | None:
    """An earlier run of this cell in ``sweep_dir`` that used the same resolved scenario and recorded
    every round, or None. ``seconds``: cell times from the earlier sweep.csv."""
    cell_dir = sweep_dir / f"cell-{cell.index:02d}"
    if not cell_dir.is_dir():
        return None
    expected = load_scenario(scenario_path, _cell_overrides(cell, overrides, sweep_dir))
    for run in sorted((p for p in cell_dir.glob("*") if (p / RECORDS).is_file()), reverse=True):
        scenario_file = run / SCENARIO
        if not scenario_file.is_file() or scenario_file.read_text(encoding="utf-8") != expected.to_toml():
            continue
        records = read_records(run)
        if rounds_completed(records) < expected.federation.rounds:
            continue
        return CellResult(cell, run, seconds.get(cell.index), rows=summarize_cell(records))
    return None


def _earlier_seconds(sweep_dir: Path) -> dict[int, float]:
    path = sweep_dir / "sweep.csv"
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8") as fh:
        return {
            int(row["cell"]): float(row["cell_seconds"])
            for row in csv.DictReader(fh)
            if row.get("cell", "").isdigit() and row.get("cell_seconds")
        }


def _cell_command(cell: Cell, scenario_path: Path | None, overrides: list[str], sweep_dir: Path) -> list[str]:
    scenario = [str(scenario_path)] if scenario_path else []
    sets = [arg for o in _cell_overrides(cell, overrides, sweep_dir) for arg in ("--set", o)]
    return [sys.executable, "-m", "fedaudit.cli", "run", *scenario, *sets]


def run_cell(cell: Cell, scenario_path: Path | None, overrides: list[str], sweep_dir: Path, cells: Cells) -> CellResult:
    """``fedaudit run`` for one cell, in a subprocess holding the cell's lock; its run directory and
    records (none when another process holds the lock or the sweep is stopping)."""
    lock = sweep_dir / f"cell-{cell.index:02d}.lock"
    holder = acquire_lock(lock)
    if holder is not None:
        return CellResult(cell, None, None, error=f"running elsewhere (pid {holder or '?'})")
    try:
        return _run_locked(cell, _cell_command(cell, scenario_path, overrides, sweep_dir), sweep_dir, cells, lock)
    finally:
        lock.unlink(missing_ok=True)


def _run_locked(cell: Cell, cmd: list[str], sweep_dir: Path, cells: Cells, lock: Path) -> CellResult:
    log_path = sweep_dir / f"cell-{cell.index:02d}.log"
    start = time.perf_counter()
    with log_path.open("w", encoding="utf-8") as log:
        returncode = cells.run(cell.index, cmd, log, lock)
    if returncode is None:
        return CellResult(cell, None, None, error=f"not run: {cells.stopped}")
    cell_dir = sweep_dir / f"cell-{cell.index:02d}"
    runs = sorted(p for p in cell_dir.glob("*") if (p / RECORDS).is_file()) if cell_dir.is_dir() else []
    result = CellResult(cell, runs[-1] if runs else None, time.perf_counter() - start)
    if returncode != 0 and cells.stopped:
        result.error = f"stopped: {cells.stopped}"
    elif returncode != 0:
        tail = log_path.read_text(encoding="utf-8").strip().splitlines()
        errors = [line for line in tail if "error" in line.lower()]
        result.error = (errors or tail or [f"exit status {returncode}"])[-1][:300]
    if result.run_dir is not None:
        result.rows = summarize_cell(read_records(result.run_dir))
    return result


def summarize_cell(records: list[Record]) -> list[dict[str, Any]]:
    """One row per attack (the per-attack summary, ``records.summarize``), with the final global
    accuracy and the largest epsilon any client reported."""
    utility = utility_records(records)
    final = utility[-1].metrics if utility else {}
    rounds = rounds_completed(records)
    audits = attack_records(records)
    errors = len(client_errors(records))
    epsilons = [float(r.diagnostics["epsilon"]) for r in audits if "epsilon" in r.diagnostics]
    deltas = [float(r.diagnostics["delta"]) for r in audits if "delta" in r.diagnostics]
    common = {"rounds": rounds, "accuracy": final.get("accuracy"), "loss": final.get("loss")}
    rows = []
    for summary in summarize(records):
        rows.append(
            {
                "attack": summary.attack,
                "audits": summary.audits,
                "statuses": " ".join(f"{k}:{v}" for k, v in summary.statuses.items()),
                **summary.metrics,
                **common,
                "epsilon": max(epsilons) if epsilons else None,
                "delta": max(deltas) if deltas else None,
                "attack_seconds": summary.seconds_mean,
                "client_errors": errors,
            }
        )
    if not rows:
        rows.append(
            {
                "attack": "",
                "audits": 0,
                "statuses": f"client errors: {errors}" if errors else "no audits",
                **common,
                "client_errors": errors,
            }
        )
    return rows


def headline(row: dict[str, Any]) -> str | None:
    return next((k for k in HEADLINE_METRICS if isinstance(row.get(k), (int, float))), None)


def table_rows(results: list[CellResult], grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    out = []
    for result in sorted(results, key=lambda r: r.cell.index):
        base = {"cell": result.cell.index, **result.cell.settings}
        seconds = None if result.seconds is None else round(result.seconds, 1)
        for row in result.rows or [{"attack": "", "statuses": "no run directory"}]:
            out.append(
                {**base, **row, "cell_seconds": seconds, "error": result.error, "run_dir": str(result.run_dir or "")}
            )
    return out


def write_outputs(sweep_dir: Path, rows: list[dict[str, Any]], grid: dict[str, list[Any]], title: str) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, columns)
    writer.writeheader()
    writer.writerows(rows)
    write_private(sweep_dir / "sweep.csv", text.getvalue())
    write_private(sweep_dir / "sweep.md", markdown(rows, grid, title))
    write_private(sweep_dir / "sweep.png", plot(rows, grid, title))
    from fedaudit.report.sweep_html import render_sweep_html  # imported here: only writing the outputs needs it

    write_private(sweep_dir / "sweep.html", render_sweep_html(sweep_dir, rows, grid, title))


def _fmt(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e3 else f"{value:.3f}"
    return str(value).replace("|", "\\|")


def markdown(rows: list[dict[str, Any]], grid: dict[str, list[Any]], title: str) -> str:
    metric_keys = [k for k in TABLE_METRICS if any(k in r for r in rows)]
    tail = "accuracy epsilon attack_seconds cell_seconds error".split()
    columns = [*grid, "attack", "statuses", *metric_keys, *tail]
    lines = [f"# {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], grid: dict[str, list[Any]], title: str) -> bytes:
    """The PNG of headline leakage against accuracy (and epsilon, when clients ran DP-SGD)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [r for r in rows if headline(r)]
    with_eps = [r for r in scored if isinstance(r.get("epsilon"), (int, float)) and math.isfinite(r["epsilon"])]
    panels = 2 if with_eps else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.5), squeeze=False)
    for ax, x_key, subset in [(axes[0][0], "accuracy", scored)] + (
        [(axes[0][1], "epsilon", with_eps)] if with_eps else []
    ):
        for attack in dict.fromkeys(r["attack"] for r in subset):
            mine = [r for r in subset if r["attack"] == attack and isinstance(r.get(x_key), (int, float))]
            if not mine:
                continue
            metric = headline(mine[0])
            ax.scatter([r[x_key] for r in mine], [r.get(metric, math.nan) for r in mine], label=f"{attack} ({metric})")
            for r in mine:
                ax.annotate(
                    ", ".join(str(r[k]) for k in grid),
                    (r[x_key], r.get(metric, math.nan)),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        ax.set_xlabel("final global accuracy" if x_key == "accuracy" else "epsilon (largest reported)")
        if x_key == "epsilon":
            ax.set_xscale("log")
        ax.set_ylabel("leakage (headline metric)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    return png.getvalue()


def sweep(
    scenario_path: Path | None,
    grid: dict[str, list[Any]],
    overrides: list[str],
    workers: int,
    out_dir: Path | None = None,
    progress: Callable[[CellResult, int, int], None] | None = None,
    resume: bool = False,
) -> Path:
    """Run every cell (``workers`` at a time; with ``resume``, only those ``out_dir`` has not
    finished); returns the sweep directory. SIGTERM or Ctrl-C ends the running cells, writes
    what finished and exits with 128 + the signal."""
    cells = plan(scenario_path, grid, overrides)
    base: Scenario = load_scenario(scenario_path, overrides)
    sweep_dir = Path(out_dir or Path(base.output.dir) / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{base.name}")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    title = f"sweep of {base.name} over {', '.join(grid)}"
    results: list[CellResult] = []
    total = len(cells)
    if resume:
        seconds = _earlier_seconds(sweep_dir)
        results = [r for r in (finished_cell(c, scenario_path, overrides, sweep_dir, seconds) for c in cells) if r]
        done = {r.cell.index for r in results}
        cells = [c for c in cells if c.index not in done]
        if results:
            write_outputs(sweep_dir, table_rows(results, grid), grid, title)
    running, kept, futures = Cells(), list(results), []
    with ThreadPoolExecutor(max_workers=workers) as pool, stop_on_signals():
        try:
            futures += [pool.submit(run_cell, cell, scenario_path, overrides, sweep_dir, running) for cell in cells]
            for future in as_completed(futures):
                results.append(future.result())
                write_outputs(sweep_dir, table_rows(results, grid), grid, title)
                if progress is not None:  # a skipped cell took no time here
                    progress(dataclasses.replace(results[-1], seconds=results[-1].seconds or 0.0), len(results), total)
        except Stopped as stopped:
            for future in futures:
                future.cancel()
            running.stop(f"the sweep got {stopped}")
            wait(futures)
            results = kept + [f.result() for f in futures if f.done() and not f.cancelled()]
            write_outputs(sweep_dir, table_rows(results, grid), grid, title)
            print(
                f"fedaudit sweep: stopped by {stopped}; the outputs in {sweep_dir} hold what finished", file=sys.stderr
            )
            raise SystemExit(128 + stopped.signum) from None
    return sweep_dir
