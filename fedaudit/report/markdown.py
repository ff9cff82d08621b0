"""``report.md`` from a run directory: status and metrics per round, client and attack, and the
utility curve; and ``write_report``, which writes every format of a run's report (``report.html``,
``report.md``, ``summary.json``). Client text is untrusted: every string from a record goes
through ``fedaudit.safety.clean_text`` (no control characters or escape sequences) and is
escaped for Markdown and HTML before it is written."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from jinja2 import Environment, StrictUndefined

from fedaudit.audit.records import (
    attack_order,
    attack_records,
    client_errors,
    read_records,
    rejected_updates,
    rounds_completed,
    skipped_rounds,
    summarize,
    utility_records,
)
from fedaudit.report.data import (
    ReportData,
    build,
    defenses_line,
    load_scenario_dict,
    natural_key,
    planned_attacks,
)
from fedaudit.report.estimate import audit_sample
from fedaudit.report.html import render_html
from fedaudit.report.loader import template_loader
from fedaudit.report.summary import clip, fixed, format_metrics, plural
from fedaudit.report.summary_json import render_json
from fedaudit.safety import clean_text, write_private

__all__ = ["FORMATS", "defenses_line", "md_escape", "render_report", "write_report", "write_reports"]

#: What ``write_reports`` can write, by ``--format`` name.
FORMATS = {"html": "report.html", "md": "report.md", "json": "summary.json"}

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~])")
BARS = " ▁▂▃▄▅▆▇█"


def md_escape(value: Any) -> str:
    """Neutralise control characters, Markdown and HTML in untrusted text; keep it on one line."""
    text = " ".join(clean_text(value).split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", text)


def sparkline(values: list[Any]) -> str:
    """One bar per finite value (a round with no finite value is left out)."""
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return ""
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    return "".join(BARS[1 + round((v - lo) / span * (len(BARS) - 2))] for v in values)


def render_report(run_dir: str | Path, data: ReportData | None = None) -> str:
    """``report.md`` of ``run_dir``; ``data``, its data model if already built, gives a sampled
    run's estimates (built here, without images, when not given)."""
    run_dir = Path(run_dir)
    records = read_records(run_dir)
    scenario = load_scenario_dict(run_dir)
    # The estimates come from the data model: one definition of what an audit recovered.
    sample = (data or build(run_dir, image_budget=0)).sample if audit_sample(scenario) else None
    audits = attack_records(records)
    utility = utility_records(records)
    planned = planned_attacks(scenario.get("audit") if isinstance(scenario.get("audit"), dict) else {})
    order = {name: i for i, name in enumerate(attack_order(audits, planned))}
    rounds: dict[int, list] = defaultdict(list)
    for r in sorted(audits, key=lambda r: (natural_key(clean_text(r.client)), order[r.attack])):
        rounds[r.round].append(r)
    env = Environment(
        loader=template_loader(),
        undefined=StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["md"] = md_escape
    env.filters["metrics"] = format_metrics
    env.filters["fixed"] = fixed
    env.filters["plural"] = plural
    env.filters["clip"] = clip
    env.filters["epsilon"] = lambda e: str(e) if isinstance(e, str) else f"{e:.3g}"
    env.filters["percent"] = lambda x: fixed(100 * x, 1) + "%"
    return env.get_template("report.template.md").render(
        run_id=run_dir.name,
        scenario=scenario,
        defenses=defenses_line(scenario) if scenario else "",
        summaries=summarize(records, planned),
        utility=utility,
        accuracy_line=sparkline([u.metrics.get("accuracy") for u in utility]),
        loss_line=sparkline([u.metrics.get("loss") for u in utility]),
        rounds=sorted(rounds.items()),
        errors=_in_order(client_errors(records)),
        rejected=_in_order(rejected_updates(records)),
        skipped=_in_order(skipped_rounds(records)),
        completed_rounds=rounds_completed(records),
        sample=sample,
    )


def _in_order(events: list[Any]) -> list[Any]:
    return sorted(events, key=lambda e: (e.round, natural_key(clean_text(getattr(e, "client", "")))))


def write_reports(run_dir: str | Path, formats: Iterable[str] = tuple(FORMATS)) -> list[Path]:
    """Write the report of ``run_dir`` in ``formats`` (``html``, ``md``, ``json``), each file
    0600 (it quotes recovered private data) and atomically; returns the paths written."""
    run_dir = Path(run_dir)
    formats = list(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown report format {unknown[0]!r}; allowed: {', '.join(FORMATS)}")
    data = build(run_dir) if {"html", "json"} & set(formats) else None
    render = {
        "html": lambda: render_html(data),
        "md": lambda: render_report(run_dir, data),
        "json": lambda: render_json(data),
    }
    return [write_private(run_dir / FORMATS[f], render[f]()) for f in formats]


def write_report(run_dir: str | Path) -> Path:
    """Write every format of the report (``report.html``, ``report.md``, ``summary.json``);
    returns the path of ``report.md``."""
    write_reports(run_dir)
    return Path(run_dir) / FORMATS["md"]
