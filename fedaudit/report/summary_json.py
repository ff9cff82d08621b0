"""``summary.json``: the report's numbers, machine readable, from the same data model as
``report.html`` (``fedaudit.report.data``).

Per attack: the headline counts (whole run and last round), verdicts, identifiers that leaked,
and per round the verdicts and the headline metric's mean, min and max over clients. Per round,
client and attack: verdict, reason, metrics, cost, epsilon and counts. A sampled run adds
``sample``: what was audited and, per attack, the estimates with their 95% intervals. No
recovered text or images: those stay in the HTML. JSON has no inf or NaN: as in
``records.jsonl``, a non-finite number is null and its value noted under ``non_finite`` by its
path (``audits.3.metrics.psnr``).
"""

from __future__ import annotations

import json
from typing import Any

from fedaudit.audit.records import json_safe
from fedaudit.report.data import AttackView, Audit, ReportData

#: Bumped when a field changes meaning or goes away.
SCHEMA_VERSION = 1


def summary(data: ReportData) -> dict[str, Any]:
    out = {
        "schema": SCHEMA_VERSION,
        "run_id": data.run_id,
        "scenario": data.scenario.get("name"),
        "rounds_planned": data.rounds_planned,
        "rounds_completed": data.rounds_completed,
        "ground_truth": data.ground_truth,
        "max_examples_per_record": data.cap,
        "defenses": data.defenses,
        "attacks": [_attack(a) for a in data.attacks],
        "audits": [_audit(a) for a in data.audits],
        "utility": data.utility,
        "epsilon": data.epsilon,
        "client_errors": data.client_errors,
        "rejected_updates": data.rejected,
        "skipped_rounds": data.skipped,
    }
    if data.sample:  # a sampled run only: a run that audits every update is reported as before
        out["sample"] = data.sample.as_dict()
    return out


def _attack(view: AttackView) -> dict[str, Any]:
    return {
        "attack": view.name,
        "headline_metric": view.metric,
        "unit": view.unit,
        "headline": view.sentence,
        "whole_run": view.whole.as_dict(),
        "last_round": {"round": view.last_round, **view.last.as_dict()},
        "statuses": view.statuses,
        "pii": view.pii,
        "seconds_mean": view.seconds_mean,
        "seconds_median": view.seconds_median,
        "peak_mem_mb": view.peak_mem_mb,
        "rounds": [
            {
                "round": r.round,
                "statuses": r.statuses,
                "headline": {"mean": r.mean, "min": r.low, "max": r.high},
                "exact_match": r.exact_match,
                "seconds_mean": r.seconds_mean,
                "seconds_max": r.seconds_max,
            }
            for r in view.rounds
        ],
    }


def _audit(audit: Audit) -> dict[str, Any]:
    return {
        "round": audit.round,
        "client": audit.client,
        "attack": audit.attack,
        "status": audit.status,
        "reason": audit.reason,
        "metrics": audit.metrics,
        "headline": audit.headline,
        "recovered": audit.recovered.as_dict() if audit.recovered else None,
        "pii": audit.pii,
        "seconds": audit.seconds,
        "peak_mem_mb": audit.peak_mem_mb,
        "epsilon": audit.epsilon,
        "examples": {"total": audit.shown.total, "shown": audit.shown.shown},
    }


def render_json(data: ReportData) -> str:
    notes: dict[str, str] = {}
    out = json_safe(summary(data), "", notes)
    if notes:
        out["non_finite"] = notes
    return json.dumps(out, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
