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

from fedaudit.safety import clean_text

STATUS_COLORS = {
    "exact": "#c62828",
    "partial": "#e0a100",
    "failed": "#2e7d32",
    "not_applicable": "#9e9e9e",
    "error": "#ad1457",
    "timeout": "#ad1457",
}
LINE_COLORS = ("#1f5fbf", "#c62828", "#2e7d32", "#7b1fa2", "#e07b00", "#00838f")
#: PSNR of an exact image recovery is inf; it is drawn here.
PSNR_DRAWN_AT = 100.0
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
    cleaned = cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"
    return cleaned.replace("$", r"\$")


def drawn(value: float | None, metric: str | None) -> float:
    """``value`` as plotted: None is a gap (NaN), PSNR inf sits at ``PSNR_DRAWN_AT``."""
    if value is None:
        return math.nan
    if math.isinf(value):
        return PSNR_DRAWN_AT if value > 0 else math.nan
    return value


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
    fig = new_figure(4.6, 2.4)
    ax = fig.add_subplot()
    mean = [drawn(r.mean, view.metric) for r in rounds]
    ax.fill_between(
        x,
        [drawn(r.low, view.metric) for r in rounds],
        [drawn(r.high, view.metric) for r in rounds],
        color=LINE_COLORS[0],
        alpha=0.18,
        linewidth=0,
        label="min-max over clients",
    )
    ax.plot(x, mean, marker="o", color=LINE_COLORS[0], label=f"mean {METRIC_LABELS.get(view.metric, view.metric)}")
    exact = [(r.round, r.exact_match) for r in rounds if r.exact_match is not None]
    if exact:
        ax.plot(*zip(*exact), marker="s", linestyle="--", color=LINE_COLORS[1], label="exact-match rate")
    _round_axis(ax, x)
    if view.metric != "psnr":
        ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel(METRIC_LABELS.get(view.metric, view.metric))
    ax.legend(fontsize=7, loc="best", frameon=False)
    return to_svg(fig)


@with_rc
def heatmap(view: Any) -> str | None:
    """Round x client matrix of the headline metric (blank: no value)."""
    import numpy as np

    if not view.metric or all(v is None for row in view.matrix for v in row):
        return None
    values = np.array([[drawn(v, view.metric) for v in row] for row in view.matrix], dtype=float)
    rounds = [r.round for r in view.rounds]
    fig = new_figure(min(max(3.2, 1.6 + 0.42 * len(view.clients)), 7.0), min(max(1.8, 0.9 + 0.32 * len(rounds)), 4.0))
    ax = fig.add_subplot()
    ax.grid(False)
    bounded = view.metric != "psnr"
    image = ax.imshow(
        np.ma.masked_invalid(values),
        aspect="auto",
        cmap="Reds",
        interpolation="nearest",
        vmin=0.0 if bounded else None,
        vmax=1.0 if bounded else None,
    )
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
    if values.size <= 60:
        for (i, j), v in np.ndenumerate(values):
            if not math.isnan(v):
                text = "inf" if view.matrix[i][j] == math.inf else f"{v:.2f}" if bounded else f"{v:.0f}"
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=6.5,
                    color="white" if (v > 0.6 if bounded else False) else "black",
                )
    return to_svg(fig)


@with_rc
def utility(rows: Sequence[dict[str, Any]]) -> str | None:
    """Loss and accuracy of the global model per round (round 0: the initial model)."""
    points = [r for r in rows if isinstance(r.get("round"), int)]
    if not points:
        return None
    x = [r["round"] for r in points]
    fig = new_figure(4.6, 2.4)
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
    ax.legend(handles, ["accuracy", "loss"], fontsize=7, loc="best", frameon=False)
    return to_svg(fig)


@with_rc
def leakage_vs_accuracy(views: Sequence[Any], rows: Sequence[dict[str, Any]]) -> str | None:
    """Each attack's mean headline metric against the global model's accuracy, round by round."""
    accuracy = {r["round"]: _value(r.get("accuracy")) for r in rows if isinstance(r.get("round"), int)}
    series = []
    for view in views:
        points = [
            (accuracy[r.round], drawn(r.mean, view.metric), r.round)
            for r in view.rounds
            if r.mean is not None and r.round in accuracy and not math.isnan(accuracy[r.round])
        ]
        if view.metric and points:
            series.append((view, points))
    if not series:
        return None
    fig = new_figure(min(2.6 * len(series) + 0.6, 7.6), 2.5)
    for k, (view, points) in enumerate(series):
        ax = fig.add_subplot(1, len(series), k + 1)
        xs, ys, rounds = zip(*points)
        ax.plot(xs, ys, marker="o", color=LINE_COLORS[k % len(LINE_COLORS)])
        for x, y, rnd in points:
            ax.annotate(f"r{rnd}", (x, y), xytext=(3, 3), textcoords="offset points", fontsize=6.5)
        ax.set_title(label(view.name, 24))
        if view.metric != "psnr":
            ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("global accuracy")
        ax.set_ylabel(METRIC_LABELS.get(view.metric, view.metric))
    return to_svg(fig)


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
    if metric != "psnr":
        ax.set_ylim(-0.03, 1.03)
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
