"""Typed records of a run, their one JSON form, and the one per-attack summary.

Five kinds of record land in ``records.jsonl``, one JSON object per line:

* ``AttackRecord``: one attack on one client's update in one round (status, reason, metrics,
  cost, diagnostics, what was recovered and, with ground truth, how it compares; images are
  PNG files in the run directory that the record names);
* ``UtilityRecord``: the global model's loss and accuracy on the holdout after a round;
* ``ClientError``: a client whose reply carried an error instead of an update;
* ``RejectedUpdate``: a reply the server refused (wrong schema, non-finite entries, a bad
  ``num-examples``), left out of aggregation and audit;
* ``RoundSkipped``: a round that produced no new global model (no acceptable update, or an
  aggregate that was not finite); the global model stays as it was.

``to_json`` is the only writer's format and ``from_json`` the only reader's. JSON has no inf or
NaN: a non-finite number is stored as null and its value noted under ``non_finite`` (e.g.
``{"metrics.psnr": "inf"}``), from which the reader restores it, so readers meet either a
float or nothing, never a string. The reader also takes run directories written before records
were typed (a line without ``type`` is an attack record; "inf"/"nan" strings become floats).
``summarize`` is the per-attack summary the report, the sweep and ``fedaudit attack`` share.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Union

RECORDS = "records.jsonl"
NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


@dataclass
class AttackRecord:
    round: int
    client: str
    attack: str
    status: str
    """exact | partial | failed (the attack's verdict), not_applicable, error, timeout."""
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    peak_mem_mb: float = 0.0
    """Peak memory of the worker while the audit ran (resident set, or the CUDA allocator's
    peak), whole: its runtime and the model it holds as well as the attack's own use."""
    diagnostics: dict[str, Any] = field(default_factory=dict)
    reconstruction: dict[str, Any] | None = None
    """What the attack recovered, JSON-ready (texts, tokens, records, labels, image file paths),
    at most ``audit.max_examples_per_record`` examples, with ``total`` and ``shown``."""
    comparison: dict[str, Any] | None = None
    """Scorer side, with ground truth only: each true example beside what was recovered for it
    (``pairs``), recovered labels beside the true ones, and the identifiers that leaked (``pii``)."""
    images: dict[str, Any] = field(default_factory=dict, repr=False, metadata={"stored": "as files"})
    """Image arrays (C x H x W in [0, 1]) under the run-directory paths the record names; the run
    store writes them as PNG files. Not part of the JSON record."""

    type: ClassVar[str] = "attack"


@dataclass
class UtilityRecord:
    round: int
    metrics: dict[str, float]
    """The global model's ``loss`` and ``accuracy`` on the server's holdout."""
    examples: int = 0

    type: ClassVar[str] = "utility"


@dataclass
class ClientError:
    round: int
    client: str
    reason: str

    type: ClassVar[str] = "client_error"


@dataclass
class RejectedUpdate:
    round: int
    client: str
    reason: str
    """Names the tensor or key and what is wrong with it."""

    type: ClassVar[str] = "rejected_update"


@dataclass
class RoundSkipped:
    round: int
    reason: str

    type: ClassVar[str] = "round_skipped"


Record = Union[AttackRecord, UtilityRecord, ClientError, RejectedUpdate, RoundSkipped]
KINDS: dict[str, type] = {
    kind.type: kind for kind in (AttackRecord, UtilityRecord, ClientError, RejectedUpdate, RoundSkipped)
}


# ---------------------------------------------------------------- JSON form


def to_json(record: Record) -> dict[str, Any]:
    """The record as stored: ``type`` first; utility records keep ``client``/``attack`` null;
    non-finite numbers become null, noted under ``non_finite``."""
    out: dict[str, Any] = {"type": record.type, "round": record.round}
    if isinstance(record, UtilityRecord):
        out.update(client=None, attack=None)
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if f.metadata.get("stored") == "as files":
            continue
        if f.name != "round" and not (f.name in ("reconstruction", "comparison") and value is None):
            out[f.name] = value
    notes: dict[str, str] = {}
    out = json_safe(out, "", notes)
    if notes:
        out["non_finite"] = notes
    return out


def json_safe(value: Any, path: str, notes: dict[str, str]) -> Any:
    """``value`` with every non-finite float replaced by None and noted in ``notes`` by path."""
    if isinstance(value, float) and not math.isfinite(value):
        notes[path] = str(value)
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v, f"{path}.{k}" if path else str(k), notes) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, f"{path}.{i}", notes) for i, v in enumerate(value)]
    return value


def _numbers(table: Any) -> dict[str, Any]:
    """A metrics or diagnostics table read back: legacy "inf"/"nan" strings become floats again."""
    if not isinstance(table, dict):
        return {}
    return {k: NON_FINITE.get(v, v) if isinstance(v, str) else v for k, v in table.items()}


def _restore_non_finite(data: dict[str, Any]) -> None:
    """Put back the non-finite numbers ``to_json`` stored as null (top-level and one table deep)."""
    notes = data.pop("non_finite", None)
    if not isinstance(notes, dict):
        return
    for path, text in notes.items():
        value = NON_FINITE.get(text)
        head, _, key = str(path).partition(".")
        if value is None:
            continue
        if not key and data.get(head, 0) is None:
            data[head] = value
        elif isinstance(data.get(head), dict) and key in data[head] and data[head][key] is None:
            data[head][key] = value


def from_json(data: dict[str, Any]) -> Record | None:
    """The typed record of one stored line, or None for a line of an unknown kind."""
    kind = KINDS.get(data.get("type", "attack"))
    if kind is AttackRecord and not data.get("attack"):
        return None
    if kind is None or not isinstance(data.get("round"), int):
        return None
    _restore_non_finite(data)
    fields = [f for f in dataclasses.fields(kind) if f.name in data and not f.metadata.get("stored")]
    values = {f.name: data[f.name] for f in fields}
    for key in ("metrics", "diagnostics"):
        if key in values:
            values[key] = _numbers(values[key])
    if "client" in values or kind in (AttackRecord, ClientError, RejectedUpdate):
        values["client"] = str(values.get("client", ""))
    if kind is AttackRecord:
        values.setdefault("status", "")
    if kind is not AttackRecord and kind is not UtilityRecord:
        values.setdefault("reason", "")
    if kind is UtilityRecord:
        values.setdefault("metrics", {})
    return kind(**values)


def read_records(run_dir: str | Path) -> list[Record]:
    """Every complete record of a run, typed; a torn final line (killed while writing) and lines
    of unknown kinds are skipped."""
    out = []
    # Split on "\n" only: str.splitlines would also split on the U+0085 and U+2028 a client's
    # text may hold, and cut its record in two.
    for line in (Path(run_dir) / RECORDS).read_text(encoding="utf-8").split("\n"):
        if not line.strip():
            continue
        try:
            record = from_json(json.loads(line))
        except (json.JSONDecodeError, TypeError, AttributeError):
            continue
        if record is not None:
            out.append(record)
    return out


def attack_records(records: list[Record]) -> list[AttackRecord]:
    return [r for r in records if isinstance(r, AttackRecord)]


def utility_records(records: list[Record]) -> list[UtilityRecord]:
    return sorted((r for r in records if isinstance(r, UtilityRecord)), key=lambda r: r.round)


def client_errors(records: list[Record]) -> list[ClientError]:
    return [r for r in records if isinstance(r, ClientError)]


def rejected_updates(records: list[Record]) -> list[RejectedUpdate]:
    return [r for r in records if isinstance(r, RejectedUpdate)]


def skipped_rounds(records: list[Record]) -> list[RoundSkipped]:
    return [r for r in records if isinstance(r, RoundSkipped)]


def rounds_completed(records: list[Record]) -> int:
    """The last round whose global model was evaluated (0: only the initial model, or none); a
    skipped round is evaluated too, with the weights it kept."""
    return max((r.round for r in utility_records(records)), default=0)


# ---------------------------------------------------------------- the per-attack summary


@dataclass
class AttackSummary:
    """One attack over a set of audits: how many, with which verdicts, mean metrics and cost."""

    attack: str
    audits: int
    statuses: dict[str, int]
    metrics: dict[str, float]
    """Mean of each metric over the audits that report it as a finite number."""
    seconds_mean: float
    seconds_median: float
    peak_mem_mb: float
    """The largest peak over the audits."""


def mean_metrics(records: list[AttackRecord]) -> dict[str, float]:
    """Mean of each metric over the records that report it as a finite number."""
    keys = dict.fromkeys(k for r in records for k in r.metrics)
    values = {k: [v for r in records if finite_number(v := r.metrics.get(k))] for k in keys}
    return {k: statistics.mean(v) for k, v in values.items() if v}


def finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def attack_order(audits: list[AttackRecord], planned: Sequence[str] = ()) -> list[str]:
    """The attacks of ``audits`` in the scenario's order (``audit.attacks``), then any other in
    the order it first appears: audits finish in any order, the report's order must not follow."""
    present = dict.fromkeys(r.attack for r in audits)
    return [name for name in planned if name in present] + [name for name in present if name not in planned]


def summarize(records: list[Record], planned: Sequence[str] = ()) -> list[AttackSummary]:
    """One summary per attack, in ``attack_order``."""
    audits = attack_records(records)
    out = []
    for name in attack_order(audits, planned):
        mine = [r for r in audits if r.attack == name]
        seconds = [r.seconds for r in mine]
        out.append(
            AttackSummary(
                attack=name,
                audits=len(mine),
                statuses=dict(Counter(r.status for r in mine)),
                metrics=mean_metrics(mine),
                seconds_mean=statistics.mean(seconds),
                seconds_median=statistics.median(seconds),
                peak_mem_mb=max(r.peak_mem_mb for r in mine),
            )
        )
    return out
