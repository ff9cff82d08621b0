"""``fedaudit sweep``: run a scenario over the product of settings and tabulate leakage against
utility and privacy budget.

Each cell is an ordinary ``fedaudit run`` (a subprocess, so cells are isolated and can run side
by side) writing into ``<sweep>/cell-NN/``. After every cell, ``sweep.csv`` and ``sweep.md`` are
rewritten from every cell finished so far, so a sweep stopped mid-way keeps what it measured,
and ``resume`` runs only the cells it lacks (a cell counts as finished when its run directory
holds the same resolved scenario and a utility record for every round). ``sweep.png`` plots
the headline leakage of each attack against the final global accuracy and, when clients ran
DP-SGD, against epsilon.
"""

from __future__ import annotations

import csv
import itertools
import math
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
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
from fedaudit.scenario import load_scenario

#: The metric that stands for "how much leaked" in the plot, by preference (text, images, tables, labels).
HEADLINE_METRICS = ("rouge1", "psnr", "feature_accuracy", "label_accuracy", "token_recall")


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


def run_cell(cell: Cell, scenario_path: Path | None, overrides: list[str], sweep_dir: Path) -> CellResult:
    """``fedaudit run`` for one cell, in a subprocess; its run directory and records."""
    cell_dir = sweep_dir / f"cell-{cell.index:02d}"
    cmd = [
        sys.executable,
        "-m",
        "fedaudit.cli",
        "run",
        *([str(scenario_path)] if scenario_path else []),
        *(arg for o in _cell_overrides(cell, overrides, sweep_dir) for arg in ("--set", o)),
    ]
    log_path = sweep_dir / f"cell-{cell.index:02d}.log"
    start = time.perf_counter()
    with log_path.open("w", encoding="utf-8") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - start
    runs = sorted(p for p in cell_dir.glob("*") if (p / RECORDS).is_file()) if cell_dir.is_dir() else []
    result = CellResult(cell, runs[-1] if runs else None, seconds)
    if done.returncode != 0:
        tail = log_path.read_text(encoding="utf-8").strip().splitlines()
        errors = [line for line in tail if "error" in line.lower()]
        result.error = (errors or tail or [f"exit status {done.returncode}"])[-1][:300]
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
    tmp = sweep_dir / "sweep.csv.tmp"
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(sweep_dir / "sweep.csv")
    (sweep_dir / "sweep.md").write_text(markdown(rows, grid, title), encoding="utf-8")
    plot(rows, grid, sweep_dir / "sweep.png", title)


def _fmt(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e3 else f"{value:.3f}"
    return str(value).replace("|", "\\|")


def markdown(rows: list[dict[str, Any]], grid: dict[str, list[Any]], title: str) -> str:
    metric_keys = [
        k
        for k in (
            "rouge1",
            "rouge2",
            "exact_match",
            "token_recall",
            "psnr",
            "ssim",
            "exact_fraction",
            "feature_accuracy",
            "label_accuracy",
        )
        if any(k in r for r in rows)
    ]
    columns = [
        *grid,
        "attack",
        "statuses",
        *metric_keys,
        "accuracy",
        "epsilon",
        "attack_seconds",
        "cell_seconds",
        "error",
    ]
    lines = [f"# {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], grid: dict[str, list[Any]], path: Path, title: str) -> None:
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
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    finished); returns the sweep directory."""
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
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run_cell, cell, scenario_path, overrides, sweep_dir) for cell in cells]
        for future in as_completed(futures):
            results.append(future.result())
            write_outputs(sweep_dir, table_rows(results, grid), grid, title)
            if progress is not None:
                progress(results[-1], len(results), total)
    return sweep_dir
