"""``report.html``: one self-contained page per run (inline CSS and SVG, images as ``data:``
URIs; no script, no font, no URL to anything outside the file), rendered from the report's data
model (``fedaudit.report.data``) with Jinja2, autoescape on: client text is escaped by the
template, and the only markup passed in unescaped is the SVG this package draws.
"""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, StrictUndefined
from markupsafe import Markup

from fedaudit.report import figures
from fedaudit.report.data import STATUSES, ReportData
from fedaudit.report.loader import template_loader
from fedaudit.report.recovered import unit_word
from fedaudit.report.summary import METRIC_ABBREV, clip, fixed, format_metrics, plural

#: Categories of ``comparison.pii`` (``fedaudit.metrics.pii.CATEGORIES``; not imported: the
#: report needs none of the detectors), with the words the page uses.
PII_CATEGORIES = {
    "phone": ("phone number", "phone numbers"),
    "email": ("e-mail address", "e-mail addresses"),
    "card": ("card number", "card numbers"),
    "iban": ("IBAN", "IBANs"),
    "ssn": ("social security number", "social security numbers"),
}
STATUS_WORDS = {
    "exact": "exact",
    "partial": "partial",
    "failed": "failed",
    "not_applicable": "not applicable",
    "error": "error",
    "timeout": "timeout",
}


def status_count(status: str, count: int) -> str:
    """ "3 exact", "1 timeout", "4 timeouts": the nouns among the statuses take a plural."""
    word = STATUS_WORDS.get(status, status)
    return f"{count} {word}{'s' if status in ('error', 'timeout') and count != 1 else ''}"


def environment() -> Environment:
    env = Environment(
        loader=template_loader(),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        fixed=fixed,
        metrics=format_metrics,
        plural=plural,
        status_word=lambda s: STATUS_WORDS.get(s, s),
        status_count=status_count,
        abbrev=lambda k: METRIC_ABBREV.get(k, k),
        metric_name=lambda k: figures.METRIC_LABELS.get(k, METRIC_ABBREV.get(k, k)),
        number=_number,
        clip=clip,
        units=lambda unit, count: unit_word(count, unit),
        chip=lambda token: token.strip() or "␠",
    )
    return env


def outcome(data: ReportData) -> str:
    """The worst any attack's last round leaked: ``exact``, ``partial``, ``missed`` or ""."""
    found = {view.last.outcome for view in data.attacks}
    return next((o for o in ("exact", "partial", "missed") if o in found), "")


def _number(value: Any) -> str:
    """A metric for a table cell: 3 decimals for fractions, 1 for dB and larger numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    return fixed(value, 3 if abs(value) <= 1 else 1)


def plots(data: ReportData) -> dict[str, Markup]:
    """Every figure of the page by key (a figure with nothing to draw is left out)."""
    out: dict[str, str | None] = {}
    for i, view in enumerate(data.attacks):
        out[f"rounds-{i}"] = figures.leakage_by_round(view)
        out[f"heatmap-{i}"] = figures.heatmap(view)
    out["utility"] = figures.utility(data.utility)
    out["leak-vs-acc"] = figures.leakage_vs_accuracy(data.attacks, data.utility)
    # The SVG is ours: drawn here, its text escaped by matplotlib and checked by ``to_svg``.
    return {key: Markup(svg) for key, svg in out.items() if svg}


def render_html(data: ReportData) -> str:
    first_round = min((a.round for a in data.audits), default=None)
    return (
        environment()
        .get_template("report.html.j2")
        .render(
            d=data,
            plots=plots(data),
            statuses=STATUSES,
            pii_categories=PII_CATEGORIES,
            pii_any=any(view.pii for view in data.attacks),
            first_round=first_round,
            outcome=outcome(data),
            colors=figures.STATUS_COLORS,
        )
    )
