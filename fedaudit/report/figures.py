"""The report's plots as small inline SVG (matplotlib's object API on its SVG backend: no
pyplot state, no display, safe in the server's process).

Text stays text (``svg.fonttype = none``: no glyph outlines, the page's fonts draw it), and the
SVG is cut down to what a browser needs inline: no XML prolog, DOCTYPE, namespace URLs,
metadata, comments or document-wide ``<style>``; element ids nobody references are dropped and
the rest prefixed per figure, so two figures in one page never share an id.

Axis labels that come from clients (client ids) are cleaned and cut short, and ``$`` is escaped
so matplotlib never reads them as mathtext.
"""

from __future__ import annotations

import io
import itertools
import math
import re
from collections.abc import Sequence
from typing import Any

from fedaudit.safety import clean_text, shorten

STATUS_COLORS = {
    "exact": "#c62828",
    "partial": "#e0a100",
    "failed": "#2e7d32",
    "not_applicable": "#9e9e9e",
    "error": "#ad1457",
    "timeout": "#ad1457",
}
LINE_COLORS = ("#1f5fbf", "#c62828", "#2e7d32", "#7b1fa2", "#e07b00", "#00838f")
#: PSNR of an exact image recovery is inf; it is drawn here (and the PSNR scale reaches it at least).
PSNR_DRAWN_AT = 100.0
#: Heatmap cells get their number written in while the grid has at most this many columns.
NUMBERED_COLUMNS = 12
MISSING = {"facecolor": "#e4e4e4", "edgecolor": "#9a9a9a", "hatch": "////", "linewidth": 0}
METRIC_LABELS = {
    "rouge1": "ROUGE-1",
    "psnr": "PSNR (dB)",
    "feature_accuracy": "features right",
    "label_accuracy": "label accuracy",
    "token_recall": "token recall",
}
RC = {
    "svg.fonttype": "none",
    "svg.hashsalt": "fedaudit",
    "font.size": 8,
    "font.family": "sans-serif",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.titlesize": 9,
}
_counter = itertools.count()
_UNSAFE = re.compile(r"<script|<foreignObject|\son[a-z]+\s*=|(?:href|src)\s*=\s*\"(?!#|data:image/png)", re.I)


def label(text: Any, limit: int = 14) -> str:
    """A client-controlled label for an axis: one clean line, short, no mathtext."""
    cleaned = clean_text(text)
    return shorten(cleaned, limit, "…").replace("$", r"\$")


def drawn(value: float | None, metric: str | None, top: float = PSNR_DRAWN_AT) -> float:
    """``value`` as plotted: None is a gap (NaN), PSNR inf sits at ``top`` (the top of its scale)."""
    if value is None:
        return math.nan
    if math.isinf(value):
        return top if value > 0 else math.nan
    return value


def scale(metric: str | None, values: Sequence[float | None] = ()) -> tuple[float, float]:
    """The fixed scale of ``metric``: fractions 0..1; PSNR 0..100 dB, or up to the largest
    finite value above 100."""
    if metric != "psnr":
        return 0.0, 1.0
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return 0.0, max([PSNR_DRAWN_AT, *finite])


def _set_scale(ax: Any, metric: str | None, values: Sequence[float | None], top: float = 0.03) -> None:
    low, high = scale(metric, values)
    span = high - low
    ax.set_ylim(low - 0.03 * span, high + top * span)


def new_figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def to_svg(fig: Any) -> str | None:
    """The figure as an inline ``<svg>`` element (None if it failed the safety check)."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context(RC):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"<!--.*?-->|<metadata>.*?</metadata>|<style[^>]*>.*?</style>", "", svg, flags=re.S)
    svg = re.sub(r'\s+xmlns(?::\w+)?="[^"]*"|\s+version="[^"]*"', "", svg)
    used = set(re.findall(r'(?:href="#|url\(#)([^")]+)', svg))
    prefix = f"f{next(_counter)}-"
    svg = re.sub(r'\sid="([^"]*)"', lambda m: f' id="{prefix}{m.group(1)}"' if m.group(1) in used else "", svg)
    svg = re.sub(r'(href="#|url\(#)', rf"\g<1>{prefix}", svg)
    svg = re.sub(r"\s*\n\s*", " ", svg).replace("<defs> </defs>", "")
    return None if _UNSAFE.search(svg) else svg.strip()


def with_rc(function: Any) -> Any:
    """Run a figure builder under the report's matplotlib settings."""

    def wrapped(*args: Any, **kwargs: Any) -> str | None:
        import matplotlib

        with matplotlib.rc_context(RC):
            return function(*args, **kwargs)

    wrapped.__doc__ = function.__doc__
    return wrapped


@with_rc
def leakage_by_round(view: Any) -> str | None:
    """The headline metric per round: mean over clients, min-max band (and EM for text)."""
    rounds = [r for r in view.rounds if r.mean is not None]
    if not view.metric or not rounds:
        return None
    x = [r.round for r in rounds]
    fig = new_figure(4.6, 2.6)
    ax = fig.add_subplot()
    top = scale(view.metric, [r.high for r in rounds])[1]
    mean = [drawn(r.mean, view.metric, top) for r in rounds]
    ax.fill_between(
        x,
        [drawn(r.low, view.metric, top) for r in rounds],
        [drawn(r.high, view.metric, top) for r in rounds],
        color=LINE_COLORS[0],
        alpha=0.18,
        linewidth=0,
        label="min-max over clients",
    )
    exact = [(r.round, r.exact_match) for r in rounds if r.exact_match is not None]
    if exact:  # under the mean, wider and hollow: where both are 1.0 each stays visible
        ax.plot(
            *zip(*exact),
            marker="s",
            markersize=8,
            markerfacecolor="none",
            markeredgewidth=1.4,
            linestyle="--",
            linewidth=2.6,
            alpha=0.8,
            color=LINE_COLORS[1],
            label="exact-match rate",
            zorder=2,
        )
    name = METRIC_LABELS.get(view.metric, view.metric)
    ax.plot(x, mean, marker="o", markersize=4, linewidth=1.3, color=LINE_COLORS[0], label=f"mean {name}", zorder=3)
    _round_axis(ax, x)
    _set_scale(ax, view.metric, [r.high for r in rounds])
    ax.set_ylabel(name)
    fig.legend(fontsize=7, loc="outside lower center", ncols=3, frameon=False)
    return to_svg(fig)


@with_rc
def heatmap(view: Any) -> str | None:
    """Round x client matrix of the headline metric on the metric's fixed scale (``scale``); a cell
    with no value is grey and hatched, never the colour of 0."""
    import numpy as np
    from matplotlib.patches import Rectangle

    if not view.metric or all(v is None for row in view.matrix for v in row):
        return None
    low, high = scale(view.metric, [v for row in view.matrix for v in row])
    values = np.array([[math.nan if v is None else min(v, high) for v in row] for row in view.matrix], dtype=float)
    rounds = [r.round for r in view.rounds]
    fig = new_figure(min(max(3.2, 1.6 + 0.45 * len(view.clients)), 6.0), min(max(1.9, 0.9 + 0.36 * len(rounds)), 4.2))
    ax = fig.add_subplot()
    ax.grid(False)
    image = ax.imshow(
        np.ma.masked_invalid(values), aspect="auto", cmap="Reds", interpolation="nearest", vmin=low, vmax=high
    )
    for (i, j), v in np.ndenumerate(values):
        if math.isnan(v):
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, **MISSING))
    fig.colorbar(image, ax=ax, shrink=0.9, label=METRIC_LABELS.get(view.metric, view.metric))
    if len(view.clients) <= 40:
        ax.set_xticks(
            range(len(view.clients)),
            [label(c) for c in view.clients],
            rotation=45 if max((len(c) for c in view.clients), default=0) > 3 else 0,
        )
    ax.set_yticks(range(len(rounds)), [str(r) for r in rounds])
    ax.set_xlabel("client")
    ax.set_ylabel("round")
    if len(view.clients) <= NUMBERED_COLUMNS and len(rounds) <= 24:
        _cell_numbers(ax, values, view.matrix, high if view.metric == "psnr" else None)
    return to_svg(fig)


def _cell_numbers(ax: Any, values: Any, matrix: Sequence[Sequence[float | None]], psnr_top: float | None) -> None:
    """Each cell's value written in (2 decimals for fractions, whole dB for PSNR)."""
    import numpy as np

    top = psnr_top or 1.0
    for (i, j), v in np.ndenumerate(values):
        if math.isnan(v):
            text, color = "–", "#555555"
        else:
            exact = matrix[i][j] == math.inf
            text = "inf" if exact else f"{v:.0f}" if psnr_top else f"{v:.2f}"
            color = "white" if v / top > 0.6 else "black"
        ax.text(j, i, text, ha="center", va="center", fontsize=8.5, color=color)


@with_rc
def utility(rows: Sequence[dict[str, Any]]) -> str | None:
    """Loss and accuracy of the global model per round (round 0: the initial model)."""
    points = [r for r in rows if isinstance(r.get("round"), int)]
    if not points:
        return None
    x = [r["round"] for r in points]
    fig = new_figure(4.6, 2.6)
    ax = fig.add_subplot()
    loss = [_value(r.get("loss")) for r in points]
    acc = [_value(r.get("accuracy")) for r in points]
    ax.plot(x, acc, marker="o", color=LINE_COLORS[2], label="accuracy")
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("accuracy")
    right = ax.twinx()
    right.grid(False)
    right.spines["right"].set_visible(True)
    right.plot(x, loss, marker="s", linestyle="--", color=LINE_COLORS[3], label="loss")
    right.set_ylabel("loss")
    _round_axis(ax, x)
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    fig.legend(handles, ["accuracy", "loss"], fontsize=7, loc="outside lower center", ncols=2, frameon=False)
    return to_svg(fig)


@with_rc
def leakage_vs_accuracy(views: Sequence[Any], rows: Sequence[dict[str, Any]]) -> str | None:
    """Each attack's mean headline metric against the global model's accuracy, round by round."""
    accuracy = {r["round"]: _value(r.get("accuracy")) for r in rows if isinstance(r.get("round"), int)}
    series = []
    for view in views:
        points = [
            (
                accuracy[r.round],
                drawn(r.mean, view.metric, scale(view.metric, [q.high for q in view.rounds])[1]),
                r.round,
            )
            for r in view.rounds
            if r.mean is not None and r.round in accuracy and not math.isnan(accuracy[r.round])
        ]
        if view.metric and points:
            series.append((view, points))
    if not series:
        return None
    fig = new_figure(min(2.6 * len(series) + 0.6, 7.6), 2.6)
    for k, (view, points) in enumerate(series):
        ax = fig.add_subplot(1, len(series), k + 1)
        xs, ys, _ = zip(*points)
        ax.plot(xs, ys, marker="o", color=LINE_COLORS[k % len(LINE_COLORS)])
        ax.set_title(label(view.name, 24))
        _set_scale(ax, view.metric, [r.high for r in view.rounds], top=0.16)
        ax.margins(x=0.18)
        if max(xs) - min(xs) < 1e-9:  # one accuracy: a window around it, not matplotlib's default
            ax.set_xlim(xs[0] - 0.02, xs[0] + 0.02)
        _round_labels(ax, points)
        ax.set_xlabel("global accuracy")
        ax.set_ylabel(METRIC_LABELS.get(view.metric, view.metric))
    return to_svg(fig)


def _round_labels(ax: Any, points: Sequence[tuple[float, float, int]]) -> None:
    """``r1``, ``r2``... beside their points: rounds at the same point share one label
    (``r1-r3``), a label near the right edge goes left of its point, one near the top below it,
    and a label that would land on an earlier one moves to its point's other side."""
    spots: dict[tuple[float, float], list[int]] = {}
    for x, y, rnd in points:
        spots.setdefault((round(x, 9), round(y, 9)), []).append(rnd)
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    placed: list[tuple[float, float]] = []
    for (x, y), rounds in sorted(spots.items()):
        fx, fy = (x - x0) / ((x1 - x0) or 1), (y - y0) / ((y1 - y0) or 1)
        left, below = fx > 0.75, fy > 0.85
        if any(abs(fx - px) < 0.12 and abs(fy - py) < 0.1 for px, py in placed):
            left = not left
        placed.append((fx, fy))
        ax.annotate(
            _rounds_text(rounds),
            (x, y),
            xytext=(-4 if left else 4, -4 if below else 4),
            textcoords="offset points",
            ha="right" if left else "left",
            va="top" if below else "bottom",
            fontsize=7,
        )


def _rounds_text(rounds: Sequence[int]) -> str:
    """``r2``; ``r1-r3`` for consecutive rounds; ``r1, r4`` otherwise."""
    rounds = sorted(rounds)
    if len(rounds) > 2 and rounds == list(range(rounds[0], rounds[-1] + 1)):
        return f"r{rounds[0]}–r{rounds[-1]}"
    return ", ".join(f"r{r}" for r in rounds)


@with_rc
def scatter(points: Sequence[tuple[float, float, str]], x_label: str, metric: str, log_x: bool = False) -> str | None:
    """Sweep cells as points (x, headline metric), each labelled with its grid values."""
    points = [(x, drawn(y, metric), text) for x, y, text in points if not math.isnan(_value(x))]
    if not points:
        return None
    fig = new_figure(3.6, 2.6)
    ax = fig.add_subplot()
    ax.scatter([p[0] for p in points], [p[1] for p in points], color=LINE_COLORS[0], zorder=3)
    for x, y, text in points:
        ax.annotate(label(text, 24), (x, y), xytext=(3, 3), textcoords="offset points", fontsize=6.5)
    if log_x and all(p[0] > 0 for p in points):
        ax.set_xscale("log")
    _set_scale(ax, metric, [p[1] for p in points])
    ax.set_xlabel(x_label)
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    return to_svg(fig)


def _round_axis(ax: Any, rounds: Sequence[int]) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(rounds) == 1:
        ax.set_xlim(rounds[0] - 1, rounds[0] + 1)


def _value(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
