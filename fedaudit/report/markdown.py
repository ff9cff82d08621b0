"""``report.md`` from a run directory: status and metrics per round, client and attack, and the
utility curve. Client text is untrusted: every string from a record goes through
``fedaudit.safety.clean_text`` (no control characters or escape sequences) and is escaped for
Markdown and HTML before it is written."""

from __future__ import annotations

import math
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from fedaudit.audit.records import (
    attack_records,
    client_errors,
    read_records,
    rejected_updates,
    rounds_completed,
    skipped_rounds,
    summarize,
    utility_records,
)
from fedaudit.audit.store import SCENARIO
from fedaudit.report.summary import fixed, format_metrics
from fedaudit.safety import clean_text, write_private

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

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


def defenses_line(scenario: dict[str, Any]) -> str:
    """The defenses in effect, as one line: DP settings and update transforms in their order,
    secure aggregation, LoRA and a non-SGD local optimizer."""
    parts = []
    defenses = dict(scenario.get("defenses", {}))
    order = defenses.pop("order", [])
    for name in [k for k in defenses if k not in order] + list(order):
        settings = defenses.get(name)
        if isinstance(settings, dict):
            parts.append(f"{name} (" + ", ".join(f"{k} {v}" for k, v in settings.items()) + ")")
    group = scenario.get("federation", {}).get("secure_aggregation_group", 1)
    if group > 1:
        parts.append(f"secure aggregation in groups of {group}")
    lora = scenario.get("model", {}).get("lora")
    if lora:
        parts.append("LoRA (" + ", ".join(f"{k} {v}" for k, v in lora.items()) + ")")
    if scenario.get("training", {}).get("optimizer", "sgd") != "sgd":
        parts.append(f"local optimizer {scenario['training']['optimizer']}")
    return "; ".join(parts) or "none"


def render_report(run_dir: str | Path) -> str:
    run_dir = Path(run_dir)
    records = read_records(run_dir)
    scenario_file = run_dir / SCENARIO
    scenario = tomllib.loads(scenario_file.read_text(encoding="utf-8")) if scenario_file.is_file() else {}
    audits = attack_records(records)
    utility = utility_records(records)
    rounds: dict[int, list] = defaultdict(list)
    for r in audits:
        rounds[r.round].append(r)
    env = Environment(
        loader=PackageLoader("fedaudit.report", "templates"),
        undefined=StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["md"] = md_escape
    env.filters["metrics"] = format_metrics
    env.filters["fixed"] = fixed
    env.filters["epsilon"] = lambda e: str(e) if isinstance(e, str) else f"{e:.3g}"
    return env.get_template("report.template.md").render(
        run_id=run_dir.name,
        scenario=scenario,
        defenses=defenses_line(scenario) if scenario else "",
        summaries=summarize(records),
        utility=utility,
        accuracy_line=sparkline([u.metrics.get("accuracy") for u in utility]),
        loss_line=sparkline([u.metrics.get("loss") for u in utility]),
        rounds=sorted(rounds.items()),
        errors=client_errors(records),
        rejected=rejected_updates(records),
        skipped=skipped_rounds(records),
        completed_rounds=rounds_completed(records),
    )


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.md`` (0600: it quotes recovered private text), atomically."""
    return write_private(Path(run_dir) / "report.md", render_report(run_dir))
