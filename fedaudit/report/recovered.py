"""What came back, per audit: how many examples were recovered exactly, partially or not at all,
and the side-by-side view (original beside recovered, word differences, images, table cells).

It reads a record's ``comparison`` (the scorer's one-to-one pairs, with ground truth) and its
``reconstruction`` (what the attack returned; all a deployment has). Every string is cleaned
(``clean_text``) here; markup is left to the template, which escapes it.

Images are embedded as ``data:`` URIs (``fedaudit.report.images``) so the report stays one file.
"""

from __future__ import annotations

import difflib
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedaudit.report.images import ImageBudget, embed_png
from fedaudit.report.summary import METRIC_ABBREV, compact, fixed
from fedaudit.safety import clean_text

#: A recovered example that is not exact counts as "partially" recovered from this score on
#: (ROUGE-1, the fraction of table fields right, SSIM); below it, "not at all".
PARTIAL_AT = 0.5
PARTIAL_SCORE = {"text": "rouge1", "table": "feature_accuracy", "image": "ssim"}
UNITS = {"text": "sentences", "image": "images", "table": "records"}
#: Without pairs an audit's verdict counts one client update: its batch's token set, label set...
VERDICT_UNITS = {"token_recall": "token sets", "label_accuracy": "label sets"}
#: Without pairs, an audit whose labels ground truth scored is counted by this measured score
#: (1.0: exactly, above 0: partially, 0: not at all) rather than by the attack's own verdict.
MEASURED = "label_accuracy"
#: Images per record drawn in the report.
IMAGES_PER_RECORD = 16
#: Tokens and texts listed for an audit without pairs.
LIST_LIMIT = 64


@dataclass
class Counts:
    """Examples (or, without pairs, audits) recovered exactly, partially and not at all."""

    basis: str = "audits"
    """"examples": from the scorer's pairs; "audits": from each audit's verdict."""
    exact: int = 0
    partial: int = 0
    missed: int = 0
    capped: bool = False
    """Some record kept fewer pairs than it had true examples (the cap)."""
    unscored: int = 0
    """Audits not counted: not applicable, errors, timeouts (or, by examples, audits without pairs)."""
    measured: int = 0
    """Audits counted by their measured label accuracy rather than by their verdict (``MEASURED``)."""

    @property
    def total(self) -> int:
        return self.exact + self.partial + self.missed

    @property
    def outcome(self) -> str:
        """What leaked at worst: ``exact``, ``partial``, ``missed`` (nothing), or "" (nothing counted)."""
        if not self.total:
            return ""
        return "exact" if self.exact else "partial" if self.partial else "missed"

    def sentence(self, unit: str, when: str) -> str:
        """``31 of 32 sentences recovered word for word in round 3``; ``0 of 1 client update ...``."""
        if not self.total:
            return f"nothing scored {when}"
        how = "word for word" if unit == "sentences" else "exactly"
        return f"{self.exact} of {self.total} {unit_word(self.total, unit)} recovered {how} {when}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "basis": self.basis,
            "exact": self.exact,
            "partial": self.partial,
            "missed": self.missed,
            "total": self.total,
            "capped": self.capped,
            "unscored": self.unscored,
            "measured": self.measured,
        }


def status_counts(status: str) -> Counts:
    """One audit's verdict as counts: exact, partial, failed (missed); anything else unscored."""
    key = {"exact": "exact", "partial": "partial", "failed": "missed"}.get(status)
    counts = Counts()
    if key is None:
        counts.unscored = 1
    else:
        setattr(counts, key, 1)
    return counts


def measured_counts(metrics: dict[str, Any], comparison: dict[str, Any] | None) -> Counts | None:
    """One audit counted by its measured label accuracy, when ground truth scored its labels
    (None otherwise): 1.0 exactly, above 0 partially, 0 not at all."""
    value = metrics.get(MEASURED)
    if not (comparison and isinstance(comparison.get("labels"), dict)) or not number(value) or math.isinf(value):
        return None
    counts = Counts(measured=1)
    if value >= 1.0 - 1e-9:
        counts.exact = 1
    elif value > 0:
        counts.partial = 1
    else:
        counts.missed = 1
    return counts


def pair_counts(comparison: dict[str, Any] | None) -> Counts | None:
    """Counts over the scorer's pairs (one per true example), or None without pairs."""
    pairs = comparison.get("pairs") if comparison else None
    if not isinstance(pairs, list) or not pairs:
        return None
    counts = Counts(basis="examples")
    key = PARTIAL_SCORE.get(comparison.get("kind", ""), "")
    for pair in pairs:
        if not isinstance(pair, dict):
            continue
        score = pair.get("score") if isinstance(pair.get("score"), dict) else {}
        value = score.get(key)
        if pair.get("exact") is True:
            counts.exact += 1
        elif pair.get("recovered") is not None and number(value) and value >= PARTIAL_AT:
            counts.partial += 1
        else:
            counts.missed += 1
    total = comparison.get("total")
    counts.capped = _integer(total) and total > len(pairs)
    return counts


def total(parts: Iterable[Counts]) -> Counts:
    out: Counts | None = None
    for part in parts:
        out = out or Counts(basis=part.basis)
        out.exact += part.exact
        out.partial += part.partial
        out.missed += part.missed
        out.unscored += part.unscored
        out.measured += part.measured
        out.capped = out.capped or part.capped
    return out or Counts()


def pii_counts(comparison: dict[str, Any] | None) -> dict[str, int]:
    """Identifiers found verbatim in a reconstruction and in the ground truth, by category."""
    found = comparison.get("pii") if comparison else None
    if not isinstance(found, dict):
        return {}
    return {clean_text(k): int(v) for k, v in found.items() if _integer(v) and v > 0}


def unit(kind: str | None, metric: str | None) -> str:
    """What the headline counts: true examples by kind, else what each audit's verdict is about."""
    return UNITS.get(kind or "") or VERDICT_UNITS.get(metric or "", "client updates")


def unit_word(count: int, unit: str) -> str:
    """``unit`` (a plural such as ``client updates``) for ``count`` of them: singular for one."""
    return unit[:-1] if count == 1 and unit.endswith("s") else unit


def number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---------------------------------------------------------------- the side-by-side view


@dataclass
class Shown:
    """What one audit shows beside the original (``scored``) or alone (no ground truth)."""

    kind: str = ""
    """text | image | table (pairs); otherwise what the reconstruction holds."""
    scored: bool = False
    pairs: list[dict[str, Any]] = field(default_factory=list)
    labels: dict[str, Any] | None = None
    texts: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    tokens_total: int = 0
    columns: list[str] = field(default_factory=list)
    numeric: list[bool] = field(default_factory=list)
    """Per column: every value in it is a number (right-aligned)."""
    rows: list[list[str]] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    inputs: str = ""
    total: int | None = None
    shown: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.pairs or self.labels or self.texts or self.tokens or self.rows or self.images or self.inputs)


def word_diff(original: str, recovered: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Word-level differences as segments: (``same`` | ``del``, words) for the original and
    (``same`` | ``ins``, words) for the recovered text."""
    a, b = original.split(), recovered.split()
    left: list[tuple[str, str]] = []
    right: list[tuple[str, str]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if i2 > i1:
            left.append(("same" if op == "equal" else "del", " ".join(a[i1:i2])))
        if j2 > j1:
            right.append(("same" if op == "equal" else "ins", " ".join(b[j1:j2])))
    return left, right


def scores(score: Any) -> dict[str, str]:
    """A pair's scores for display: ``{"R-1": "0.98", "PSNR": "inf"}``."""
    if not isinstance(score, dict):
        return {}
    return {METRIC_ABBREV.get(k, clean_text(k)): fixed(v, 2) for k, v in score.items()}


def shown(reconstruction: Any, comparison: dict[str, Any] | None, run_dir: Path, budget: ImageBudget) -> Shown:
    """The side-by-side view of one audit."""
    recon = reconstruction if isinstance(reconstruction, dict) else {}
    out = Shown(scored=comparison is not None)
    pairs = comparison.get("pairs") if comparison else None
    if isinstance(pairs, list) and pairs:
        out.kind = clean_text(comparison.get("kind", ""))
        _pairs(out, [p for p in pairs if isinstance(p, dict)], run_dir, budget)
        out.total, out.shown = _count(comparison.get("total")), _count(comparison.get("shown"))
    else:
        _recovered_only(out, recon, run_dir, budget)
        out.total, out.shown = _count(recon.get("total")), _count(recon.get("shown"))
    labels = comparison.get("labels") if comparison else None
    if isinstance(labels, dict):
        out.labels = _labels(labels.get("true"), labels.get("recovered"))
    elif isinstance(recon.get("labels"), list):
        out.labels = _labels(None, recon["labels"])
    out.kind = out.kind or ("labels" if out.labels else "")
    return out


def _count(value: Any) -> int | None:
    return value if _integer(value) and value >= 0 else None


def _pairs(out: Shown, pairs: list[dict[str, Any]], run_dir: Path, budget: ImageBudget) -> None:
    if out.kind == "image":
        if len(pairs) > IMAGES_PER_RECORD:
            out.notes.append(f"the first {IMAGES_PER_RECORD} of {len(pairs)} images kept are drawn here")
        for pair in pairs[:IMAGES_PER_RECORD]:
            original, why = embed_png(run_dir, pair.get("original"), budget)
            recovered, why_rec = embed_png(run_dir, pair.get("recovered"), budget)
            note = "; ".join(dict.fromkeys(w for w in (why, why_rec if pair.get("recovered") else "") if w))
            out.pairs.append(
                {
                    "exact": pair.get("exact") is True,
                    "original": original,
                    "recovered": recovered,
                    "unmatched": pair.get("recovered") is None,
                    "note": note,
                    "score": scores(pair.get("score")),
                }
            )
    elif out.kind == "table":
        _table_pairs(out, pairs)
    else:
        for pair in pairs:
            recovered = pair.get("recovered")
            left, right = word_diff(clean_text(pair.get("original", "")), clean_text(recovered or ""))
            out.pairs.append(
                {
                    "exact": pair.get("exact") is True,
                    "original": left,
                    "recovered": None if recovered is None else right,
                    "score": scores(pair.get("score")),
                }
            )


def cell(value: Any, column_max: float | None = None) -> str:
    """A table field for display: a number compact (``compact``, to 6 digits of its column's
    largest magnitude), anything else cleaned text."""
    shown = compact(value, column_max)
    return clean_text(value) if shown is None else shown


def column_maxima(rows: list[dict[str, Any]], keys: list[Any]) -> list[float | None]:
    """Per key, the largest finite magnitude of the numbers under it in ``rows`` (None: none)."""
    out = []
    for key in keys:
        values = [abs(float(r[key])) for r in rows if compact(r.get(key)) is not None and math.isfinite(r[key])]
        out.append(max(values) if values else None)
    return out


def _table_pairs(out: Shown, pairs: list[dict[str, Any]]) -> None:
    """Every pair of one record in one table: shared columns (``out.columns``), per pair the
    original's and the recovered record's fields in that order and which of them differ."""
    records = [(p.get("original"), p.get("recovered"), p) for p in pairs]
    records = [(o if isinstance(o, dict) else {}, r if isinstance(r, dict) else None, p) for o, r, p in records]
    keys = list(dict.fromkeys(k for o, r, _ in records for k in [*o, *(r or {})]))
    rows = [row for o, r, _ in records for row in (o, r or {})]
    maxima = column_maxima(rows, keys)
    out.columns = [clean_text(k) for k in keys]
    out.numeric = [all(compact(v) is not None for row in rows if (v := row.get(k)) is not None) for k in keys]
    for original, recovered, pair in records:
        shown = [cell(original.get(k, ""), top) for k, top in zip(keys, maxima)]
        back = None if recovered is None else [cell(recovered.get(k, ""), top) for k, top in zip(keys, maxima)]
        differs = pair.get("differs")
        if isinstance(differs, list):
            wrong = {str(c) for c in differs}
        else:  # no verdict from the scorer: the fields that read differently
            wrong = {str(k) for i, k in enumerate(keys) if back is None or shown[i] != back[i]}
        out.pairs.append(
            {
                "exact": pair.get("exact") is True,
                "original": shown,
                "recovered": back,
                "differs": [str(k) in wrong for k in keys],
                "score": scores(pair.get("score")),
            }
        )


def _labels(true: Any, recovered: Any) -> dict[str, Any]:
    """True and recovered labels, each sorted (batch label recovery returns a multiset), and how
    many recovered labels match a true one."""
    true_list = [clean_text(v) for v in true] if isinstance(true, list) else None
    rec_list = [clean_text(v) for v in recovered] if isinstance(recovered, list) else []
    key = lambda s: (0, int(s), s) if s.lstrip("-").isdigit() else (1, 0, s)  # noqa: E731
    matched = None
    if true_list is not None:
        matched = sum((Counter(true_list) & Counter(rec_list)).values())
    return {
        "true": sorted(true_list, key=key) if true_list is not None else None,
        "recovered": sorted(rec_list, key=key),
        "matched": matched,
    }


def _recovered_only(out: Shown, recon: dict[str, Any], run_dir: Path, budget: ImageBudget) -> None:
    """A reconstruction without pairs: what the attack returned, unscored."""
    if isinstance(recon.get("texts"), list):
        out.kind = "text"
        out.texts = [clean_text(t) for t in recon["texts"][:LIST_LIMIT]]
    if isinstance(recon.get("tokens"), list):
        out.kind = out.kind or "tokens"
        out.tokens = [clean_text(t) for t in recon["tokens"][:LIST_LIMIT]]
        total = recon.get("tokens_total")
        out.tokens_total = total if _integer(total) else len(recon["tokens"])
    if isinstance(recon.get("records"), list):
        rows = [r for r in recon["records"] if isinstance(r, dict)][:LIST_LIMIT]
        out.kind = out.kind or "table"
        out.columns = [clean_text(c) for c in dict.fromkeys(k for r in rows for k in r)]
        keys = list(dict.fromkeys(k for r in rows for k in r))
        maxima = column_maxima(rows, keys)
        out.rows = [[cell(r.get(k, ""), top) for k, top in zip(keys, maxima)] for r in rows]
        out.numeric = [all(compact(r[k]) is not None for r in rows if k in r) for k in keys]
    if isinstance(recon.get("images"), list):
        out.kind = out.kind or "image"
        names = recon["images"]
        if len(names) > IMAGES_PER_RECORD:
            out.notes.append(f"the first {IMAGES_PER_RECORD} of {len(names)} images kept are drawn here")
        for name in names[:IMAGES_PER_RECORD]:
            uri, why = embed_png(run_dir, name, budget)
            out.images.append({"uri": uri, "note": why})
    inputs = recon.get("inputs")
    if isinstance(inputs, dict) and _integer(inputs.get("count")):
        shape = inputs.get("shape") if isinstance(inputs.get("shape"), list) else []
        dims = "x".join(clean_text(d) for d in shape)
        count = inputs["count"]
        out.inputs = f"{count} input{'' if count == 1 else 's'}" + (f" of shape {dims}" if dims else "")
