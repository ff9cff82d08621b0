"""``sweep.html``: a sweep's grid on one self-contained page: the table of cells (settings,
verdicts, leakage, utility, epsilon, cost), per attack its headline leakage against the final
global accuracy and against epsilon, and a relative link to each cell's ``report.html``.

``fedaudit.sweep`` hands over the rows it also writes to ``sweep.csv``; nothing here runs cells.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from markupsafe import Markup

from fedaudit.report import figures
from fedaudit.report.data import HEADLINE_METRICS
from fedaudit.report.html import environment
from fedaudit.safety import clean_text

#: Metric columns of the table, in this order, when any cell has them.
METRICS = tuple("rouge1 rouge2 exact_match token_recall psnr ssim feature_accuracy label_accuracy".split())


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _headline(row: dict[str, Any]) -> str | None:
    return next((k for k in HEADLINE_METRICS if _number(row.get(k)) is not None), None)


def report_link(sweep_dir: Path, run_dir: Any) -> str | None:
    """The cell's report.html relative to the sweep directory, URL-quoted (None: no report)."""
    if not run_dir:
        return None
    target = Path(str(run_dir)) / "report.html"
    if not target.is_file():
        return None
    relative = os.path.relpath(target.resolve(), Path(sweep_dir).resolve())
    return "/".join(quote(part) for part in Path(relative).parts)


def _cells(sweep_dir: Path, rows: list[dict[str, Any]], grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        out.append(
            {
                "cell": row.get("cell"),
                "settings": [clean_text(row.get(k, "")) for k in grid],
                "label": clean_text(", ".join(str(row.get(k)) for k in grid)),
                "attack": clean_text(row.get("attack") or ""),
                "statuses": clean_text(row.get("statuses") or ""),
                "metrics": {k: _number(row.get(k)) for k in METRICS},
                "metric": _headline(row),
                "accuracy": _number(row.get("accuracy")),
                "epsilon": _number(row.get("epsilon")),
                "attack_seconds": _number(row.get("attack_seconds")),
                "cell_seconds": _number(row.get("cell_seconds")),
                "error": clean_text(row.get("error") or ""),
                "href": report_link(sweep_dir, row.get("run_dir")),
            }
        )
    return out


def _plots(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per attack: its headline metric against final accuracy, and against epsilon when reported."""
    out = []
    for attack in dict.fromkeys(c["attack"] for c in cells if c["metric"]):
        metric = next(c["metric"] for c in cells if c["attack"] == attack and c["metric"])
        mine = [c for c in cells if c["attack"] == attack and c["metric"] == metric]
        plots = _attack_plots(attack, metric, mine)
        if plots:
            out.append({"attack": attack, "metric": metric, "plots": plots})
    return out


def _attack_plots(attack: str, metric: str, cells: list[dict[str, Any]]) -> list[tuple[Markup, str]]:
    name = figures.METRIC_LABELS.get(metric, metric)
    with_acc = [(c["accuracy"], c["metrics"][metric], c["label"]) for c in cells if c["accuracy"] is not None]
    with_eps = [
        (c["epsilon"], c["metrics"][metric], c["label"])
        for c in cells
        if c["epsilon"] is not None and math.isfinite(c["epsilon"])
    ]
    drawn = [
        (figures.scatter(with_acc, "final global accuracy", metric), f"{attack}: {name} against the final accuracy"),
        (
            figures.scatter(with_eps, "epsilon (largest reported)", metric, log_x=True) if with_eps else None,
            f"{attack}: {name} against epsilon (log scale)",
        ),
    ]
    # The SVG is ours (``figures.to_svg`` escapes and checks it); captions stay escaped.
    return [(Markup(svg), caption) for svg, caption in drawn if svg]


def render_sweep_html(sweep_dir: Path, rows: list[dict[str, Any]], grid: dict[str, list[Any]], title: str) -> str:
    cells = _cells(sweep_dir, rows, grid)
    return (
        environment()
        .get_template("sweep.html.j2")
        .render(
            title=clean_text(title),
            grid=[clean_text(k) for k in grid],
            metrics=[k for k in METRICS if any(c["metrics"].get(k) is not None for c in cells)],
            cells=cells,
            attack_plots=_plots(cells),
        )
    )
