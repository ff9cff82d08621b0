"""The one data model of a run's report: ``report.html`` renders it and ``summary.json`` is its
numbers, so the two never disagree.

``build(run_dir)`` reads the records once. Every string that came from a record (client ids,
reasons, recovered text) is passed through ``fedaudit.safety.clean_text`` here, before any
renderer sees it. Rows are in round order, then client order (natural: "2" before "10"), then
the order the attacks first appear.

No torch and no Flower: ``fedaudit report`` renders on a machine that has neither.
"""

from __future__ import annotations

import re
import statistics
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedaudit.audit.records import (
    AttackRecord,
    attack_order,
    attack_records,
    client_errors,
    finite_number,
    read_records,
    rejected_updates,
    rounds_completed,
    skipped_rounds,
    utility_records,
)
from fedaudit.report import recovered as rec
from fedaudit.report.estimate import Sample, sample_of
from fedaudit.report.images import IMAGE_BUDGET_BYTES, ImageBudget
from fedaudit.safety import clean_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: ``fedaudit.audit.store.SCENARIO``, not imported from there: the store needs torch.
SCENARIO = "scenario.toml"
#: ``audit.max_examples_per_record``'s default, for runs whose scenario predates the key.
DEFAULT_CAP = 64
#: Side-by-side blocks (one per round and client) a page shows at most.
SIDE_BY_SIDE_BLOCKS = 40
#: The metric that stands for "how much leaked", by preference: text (ROUGE-1), images (PSNR),
#: tables, labels, token sets.
HEADLINE_METRICS = ("rouge1", "psnr", "feature_accuracy", "label_accuracy", "token_recall")
STATUSES = ("exact", "partial", "failed", "not_applicable", "error", "timeout")


def natural_key(text: str) -> list[Any]:
    """Sort key that orders digit runs by value: "2" before "10", "c2" before "c10"."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def planned_attacks(audit_cfg: dict[str, Any]) -> list[str]:
    """``audit.attacks`` as the run's scenario lists them (a list of names, or none)."""
    attacks = audit_cfg.get("attacks")
    return [a for a in attacks if isinstance(a, str)] if isinstance(attacks, list) else []


def load_scenario_dict(run_dir: Path) -> dict[str, Any]:
    """The run's resolved scenario as a plain dict ({} when missing or unreadable)."""
    path = run_dir / SCENARIO
    try:
        return tomllib.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}


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


@dataclass
class Audit:
    """One attack on one client's update in one round, cleaned for display."""

    round: int
    client: str
    attack: str
    status: str
    reason: str
    metrics: dict[str, float | None]
    seconds: float
    peak_mem_mb: float
    epsilon: float | None
    headline: float | None
    """The attack's headline metric for this audit (None when missing or NaN)."""
    recovered: rec.Counts | None
    """Exact / partial / missed examples (from the scorer's pairs) or this audit's verdict."""
    pii: dict[str, int]
    shown: rec.Shown


@dataclass
class AttackRound:
    round: int
    statuses: dict[str, int]
    mean: float | None
    low: float | None
    high: float | None
    exact_match: float | None
    """Mean exact-match rate (text attacks), drawn beside ROUGE-1."""
    seconds_mean: float
    seconds_max: float


@dataclass
class AttackView:
    """One attack over the run: the headline counts, per-round statistics and the round x client
    matrix of its headline metric."""

    name: str
    metric: str | None
    unit: str
    whole: rec.Counts
    last: rec.Counts
    last_round: int
    statuses: dict[str, int]
    reasons: list[str]
    """The distinct reasons of audits that did not run (not applicable), at most three."""
    pii: dict[str, int]
    rounds: list[AttackRound]
    clients: list[str]
    matrix: list[list[float | None]]
    """``matrix[i][j]``: headline metric of ``rounds[i]`` for ``clients[j]`` (None: none)."""
    seconds_mean: float
    seconds_median: float
    peak_mem_mb: float

    @property
    def sentence(self) -> str:
        return self.last.sentence(self.unit, f"in round {self.last_round}")

    @property
    def whole_sentence(self) -> str:
        return self.whole.sentence(self.unit, "over the whole run")


@dataclass
class ReportData:
    run_id: str
    scenario: dict[str, Any]
    defenses: str
    cap: int
    rounds_planned: int | None
    rounds_completed: int
    ground_truth: bool
    """Whether any audit was scored against ground truth (False in a deployment)."""
    attacks: list[AttackView]
    audits: list[Audit]
    utility: list[dict[str, Any]]
    epsilon: list[dict[str, Any]]
    client_errors: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    skipped: list[dict[str, Any]]
    problems: list[Audit] = field(default_factory=list)
    """Audits that ended in an error or a timeout."""
    run_dir: Path | None = None
    sample: Sample | None = None
    """What a sampled run audited and the leakage estimated over it (None: every update audited)."""

    @property
    def has_text(self) -> bool:
        """Whether any audit scored recovered sentences (PII is looked for in text only)."""
        return any(a.shown.scored and a.shown.kind == "text" for a in self.audits)

    def client_rounds(self) -> list[tuple[int, str, list[Audit]]]:
        """(round, client, audits) in round, then client order: the side-by-side blocks. A big
        run keeps the page readable and small: past ``SIDE_BY_SIDE_BLOCKS`` blocks, the first
        and the last round's first clients are shown (``blocks_left_out`` counts the rest)."""
        groups: dict[tuple[int, str], list[Audit]] = defaultdict(list)
        for audit in self.audits:
            groups[(audit.round, audit.client)].append(audit)
        blocks = [(r, c, audits) for (r, c), audits in groups.items()]
        if len(blocks) <= SIDE_BY_SIDE_BLOCKS:
            return blocks
        half = SIDE_BY_SIDE_BLOCKS // 2
        first, last = blocks[0][0], blocks[-1][0]
        later = [b for b in blocks if b[0] == last and last != first]
        return [b for b in blocks if b[0] == first][:half] + later[:half]

    @property
    def blocks_left_out(self) -> int:
        return len({(a.round, a.client) for a in self.audits}) - len(self.client_rounds())


def build(run_dir: str | Path, image_budget: int = IMAGE_BUDGET_BYTES) -> ReportData:
    """The report's data model from ``run_dir``'s records and scenario."""
    run_dir = Path(run_dir)
    records = read_records(run_dir)
    scenario = load_scenario_dict(run_dir)
    audit_cfg = scenario.get("audit", {}) if isinstance(scenario.get("audit"), dict) else {}
    cap = audit_cfg.get("max_examples_per_record", DEFAULT_CAP)
    raw = attack_records(records)
    order = {name: i for i, name in enumerate(attack_order(raw, planned_attacks(audit_cfg)))}
    raw.sort(key=lambda r: (r.round, natural_key(clean_text(r.client)), order[r.attack]))
    metric_of = {name: headline_metric([r for r in raw if r.attack == name]) for name in order}
    budget = ImageBudget(image_budget)
    audits = [_audit(r, metric_of[r.attack], run_dir, budget) for r in raw]
    federation = scenario.get("federation", {})
    data = ReportData(
        run_id=clean_text(run_dir.name),
        scenario=scenario,
        defenses=defenses_line(scenario) if scenario else "",
        cap=cap if isinstance(cap, int) else DEFAULT_CAP,
        rounds_planned=federation.get("rounds") if isinstance(federation, dict) else None,
        rounds_completed=rounds_completed(records),
        ground_truth=any(a.shown.scored or any(finite_number(v) for v in a.metrics.values()) for a in audits),
        attacks=[_attack_view(name, [a for a in audits if a.attack == name], metric_of[name]) for name in order],
        audits=audits,
        utility=[
            {"round": u.round, "loss": u.metrics.get("loss"), "accuracy": u.metrics.get("accuracy")}
            for u in utility_records(records)
        ],
        epsilon=_epsilon_by_round(audits),
        client_errors=_events(client_errors(records), client=True),
        rejected=_events(rejected_updates(records), client=True),
        skipped=_events(skipped_rounds(records), client=False),
        problems=[a for a in audits if a.status in ("error", "timeout")],
        run_dir=run_dir,
    )
    data.sample = sample_of(
        scenario,
        audits,
        {view.name: view.metric for view in data.attacks},
        utility=data.utility,
        skipped=data.skipped,
        errors=data.client_errors,
    )
    return data


def headline_metric(records: list[AttackRecord]) -> str | None:
    """The first of ``HEADLINE_METRICS`` any of ``records`` reports."""
    present = {k for r in records for k in r.metrics}
    return next((k for k in HEADLINE_METRICS if k in present), None)


def _audit(r: AttackRecord, metric: str | None, run_dir: Path, budget: ImageBudget) -> Audit:
    comparison = getattr(r, "comparison", None)
    comparison = comparison if isinstance(comparison, dict) else None
    epsilon = r.diagnostics.get("epsilon")
    value = r.metrics.get(metric) if metric else None
    return Audit(
        round=r.round,
        client=clean_text(r.client),
        attack=clean_text(r.attack),
        status=clean_text(r.status),
        reason=clean_text(r.reason),
        metrics={
            clean_text(k): v if finite_number(v) else (float(v) if isinstance(v, float) else None)
            for k, v in r.metrics.items()
        },
        seconds=float(r.seconds) if finite_number(r.seconds) else 0.0,
        peak_mem_mb=float(r.peak_mem_mb) if finite_number(r.peak_mem_mb) else 0.0,
        epsilon=float(epsilon) if isinstance(epsilon, (int, float)) and not isinstance(epsilon, bool) else None,
        # PSNR is inf for an image recovered exactly: kept (drawn at the top of the scale), NaN is not.
        headline=float(value) if rec.number(value) else None,
        recovered=rec.pair_counts(comparison)
        or rec.measured_counts(r.metrics, comparison)
        or rec.status_counts(r.status),
        pii=rec.pii_counts(comparison),
        shown=rec.shown(r.reconstruction, comparison, run_dir, budget),
    )


def _attack_view(name: str, audits: list[Audit], metric: str | None) -> AttackView:
    last_round = max(a.round for a in audits)
    by_examples = any(a.recovered and a.recovered.basis == "examples" for a in audits)
    whole = rec.total(a.recovered for a in audits if a.recovered and (a.recovered.basis == "examples") == by_examples)
    last = rec.total(
        a.recovered
        for a in audits
        if a.round == last_round and a.recovered and (a.recovered.basis == "examples") == by_examples
    )
    if by_examples:  # audits scored without pairs (errors, timeouts) are named, not counted
        whole.unscored = sum(1 for a in audits if not (a.recovered and a.recovered.basis == "examples"))
        last.unscored = sum(
            1 for a in audits if a.round == last_round and not (a.recovered and a.recovered.basis == "examples")
        )
    kinds = [a.shown.kind for a in audits if a.shown.scored]
    pii: Counter[str] = Counter()
    for a in audits:
        pii.update(a.pii)
    seconds = [a.seconds for a in audits]
    clients = sorted(dict.fromkeys(a.client for a in audits), key=natural_key)
    rounds = sorted(dict.fromkeys(a.round for a in audits))
    cell = {(a.round, a.client): a.headline for a in audits}
    return AttackView(
        name=name,
        metric=metric,
        unit=rec.unit(kinds[0] if kinds and by_examples else None, metric),
        whole=whole,
        last=last,
        last_round=last_round,
        statuses=_ordered_statuses(Counter(a.status for a in audits)),
        reasons=list(dict.fromkeys(a.reason for a in audits if a.status == "not_applicable" and a.reason))[:3],
        pii=dict(pii),
        rounds=[_attack_round(rnd, [a for a in audits if a.round == rnd]) for rnd in rounds],
        clients=clients,
        matrix=[[cell.get((rnd, c)) for c in clients] for rnd in rounds],
        seconds_mean=statistics.mean(seconds),
        seconds_median=statistics.median(seconds),
        peak_mem_mb=max(a.peak_mem_mb for a in audits),
    )


def _attack_round(rnd: int, audits: list[Audit]) -> AttackRound:
    values = [a.headline for a in audits if a.headline is not None]
    exact = [a.metrics["exact_match"] for a in audits if finite_number(a.metrics.get("exact_match"))]
    seconds = [a.seconds for a in audits]
    return AttackRound(
        round=rnd,
        statuses=_ordered_statuses(Counter(a.status for a in audits)),
        mean=statistics.mean(values) if values else None,
        low=min(values) if values else None,
        high=max(values) if values else None,
        exact_match=statistics.mean(exact) if exact else None,
        seconds_mean=statistics.mean(seconds),
        seconds_max=max(seconds),
    )


def _ordered_statuses(counts: Counter[str]) -> dict[str, int]:
    known = {s: counts[s] for s in STATUSES if counts.get(s)}
    return {**known, **{s: n for s, n in counts.items() if s not in known}}


def _epsilon_by_round(audits: list[Audit]) -> list[dict[str, Any]]:
    """The largest epsilon any client reported in each round (DP-SGD's accountant)."""
    by_round: dict[int, list[float]] = defaultdict(list)
    for a in audits:
        if a.epsilon is not None:
            by_round[a.round].append(a.epsilon)
    return [{"round": rnd, "epsilon": max(values)} for rnd, values in sorted(by_round.items())]


def _events(records: list[Any], client: bool) -> list[dict[str, Any]]:
    """Client failures, rejected updates or skipped rounds, cleaned, in round and client order."""
    out = []
    for record in records:
        event = {"round": record.round, "reason": clean_text(record.reason)}
        if client:
            event["client"] = clean_text(record.client)
        out.append(event)
    return sorted(out, key=lambda e: (e["round"], natural_key(e.get("client", ""))))
