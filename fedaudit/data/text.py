"""Text classification data: the demo generator, local files, or a Hugging Face dataset.

Whatever the source, the result is a :class:`TextExamples` with integer labels, so the
rest of the simulator never sees file formats. Problems become :class:`DataError`
messages that name the scenario key to change.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedaudit.config import DataConfig
from fedaudit.data.demo import generate_demo_records
from fedaudit.data.examples import DataError, TextExamples, seeded_rng

LOCAL_SUFFIXES = (".tsv", ".csv", ".jsonl", ".json", ".txt")
COLA_COLUMNS = ["source", "label", "original_mark", "sentence"]
NO_LABEL_NAMES = ["none"]


def load_text(cfg: DataConfig, seed: int) -> TextExamples:
    """Load the examples ``cfg`` describes; ``seed`` drives the demo data and ``max_examples``."""
    if cfg.source == "demo":
        examples = generate_demo_records(cfg.demo_size, seed)
    elif _is_local(cfg.source):
        examples = _load_local(cfg)
    else:
        examples = _load_hub(cfg)
    return limit(examples, cfg.max_examples, seed)


def limit(examples: Any, max_examples: int | None, seed: int) -> Any:
    """At most ``max_examples`` of ``examples`` (seeded), in the source's order."""
    if max_examples is not None and max_examples < len(examples):
        # Sorted so the subset keeps the source's order (and is the same for the same seed).
        rng = seeded_rng(seed, "max_examples")
        examples = examples.subset(np.sort(rng.choice(len(examples), max_examples, replace=False)))
    return examples


# ---------------------------------------------------------------------------- helpers


def _is_local(source: str) -> bool:
    path = Path(source).expanduser()
    return path.exists() or path.suffix.lower() in LOCAL_SUFFIXES


def _label_column(cfg: DataConfig) -> str | None:
    # TOML has no null, so an empty string is the way a scenario file says "no labels".
    return cfg.label_column or None


def _build(
    texts: Sequence[Any], raw_labels: Sequence[Any] | None, where: str, label_names: list[str] | None = None
) -> TextExamples:
    """Strip texts, drop empty ones, and turn raw label values into class indices."""
    keep = [i for i, t in enumerate(texts) if t is not None and str(t).strip()]
    clean = [str(texts[i]).strip() for i in keep]
    if not clean:
        raise DataError(f"data.source: {where} has no non-empty texts")
    if raw_labels is None:
        return TextExamples(texts=clean, labels=[0] * len(clean), label_names=list(NO_LABEL_NAMES))
    values = [raw_labels[i] for i in keep]
    if label_names is not None:  # a hub ClassLabel: values are already indices into its names
        return TextExamples(texts=clean, labels=[int(v) for v in values], label_names=list(label_names))
    labels, names = map_labels(values, where)
    return TextExamples(texts=clean, labels=labels, label_names=names)


def _as_index(value: Any) -> int | None:
    """The value as a non-negative class index, or None when it is not an integer."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value) if value >= 0 else None
    if isinstance(value, (float, np.floating)):
        return int(value) if float(value).is_integer() and value >= 0 else None
    if isinstance(value, str):
        s = value.strip()
        return int(s) if s.isdigit() else None
    return None


def map_labels(values: Sequence[Any], where: str) -> tuple[list[int], list[str]]:
    for row, value in enumerate(values):
        if value is None or (isinstance(value, str) and not value.strip()):
            raise DataError(f"data.label_column: example {row} of {where} has no label")
    indices = [_as_index(v) for v in values]
    if all(i is not None for i in indices):
        ints = [int(i) for i in indices if i is not None]
        return ints, [str(i) for i in range(max(ints) + 1)]
    # Not all integers: each distinct string value becomes a class, in sorted order.
    strings = [str(v).strip() for v in values]
    names = sorted(set(strings))
    lookup = {name: i for i, name in enumerate(names)}
    return [lookup[s] for s in strings], names


def _missing_column(key: str, column: str, where: str, columns: Iterable[str], hint: str = "") -> DataError:
    listed = ", ".join(str(c) for c in columns)
    return DataError(f"data.{key}: {column!r} is not a column of {where} (columns: {listed}){hint}")


# ------------------------------------------------------------------------- local files


def _load_local(cfg: DataConfig) -> TextExamples:
    path = Path(cfg.source).expanduser()
    if not path.exists():
        raise DataError(f"data.source: file not found: {path}")
    if not path.is_file():
        raise DataError(f"data.source: not a file: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".txt":
            lines = path.read_text(encoding="utf-8-sig").splitlines()
            return _build(lines, None, str(path))
        if suffix in (".tsv", ".csv"):
            return _load_delimited(cfg, path, delimiter="\t" if suffix == ".tsv" else ",")
        if suffix in (".jsonl", ".json"):
            return _load_json(cfg, path)
    except UnicodeDecodeError as err:
        raise DataError(f"data.source: {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    raise DataError(
        f"data.source: unsupported file type {suffix or '(none)'!r} for {path}; use one of {', '.join(LOCAL_SUFFIXES)}"
    )


def _is_cola_row(row: list[str]) -> bool:
    """GLUE CoLA's raw files: source, 0/1 label, original mark, sentence; no header."""
    return len(row) == 4 and row[1].strip() in ("0", "1") and bool(row[3].strip())


def _load_delimited(cfg: DataConfig, path: Path, delimiter: str) -> TextExamples:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        if delimiter == "\t":
            # TSV corpora (CoLA, SST-2) use quotes as plain characters, never for quoting.
            reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        else:
            reader = csv.reader(handle, delimiter=",")
        rows = [row for row in reader if any(cell.strip() for cell in row)]
    if not rows:
        raise DataError(f"data.source: {path} is empty")

    label_col = _label_column(cfg)
    first = [cell.strip() for cell in rows[0]]
    if cfg.columns:
        names = list(cfg.columns)
        body = rows[1:] if first == names else rows  # tolerate a header that repeats them
    elif cfg.text_column in first and (label_col is None or label_col in first):
        names, body = first, rows[1:]
    elif _is_cola_row(rows[0]):
        names, body = list(COLA_COLUMNS), rows
    else:
        names, body = first, rows[1:]

    hint = "; set data.columns for a headerless file" if not cfg.columns else ""
    if cfg.text_column not in names:
        raise _missing_column("text_column", cfg.text_column, str(path), names, hint)
    if label_col is not None and label_col not in names:
        raise _missing_column("label_column", label_col, str(path), names, hint)

    text_i = names.index(cfg.text_column)
    label_i = names.index(label_col) if label_col is not None else None
    need = max(text_i, label_i if label_i is not None else 0) + 1
    texts: list[str] = []
    labels: list[str] = []
    for number, row in enumerate(body, start=1):
        if len(row) < need:
            raise DataError(
                f"data.source: {path}: data row {number} has {len(row)} columns, expected at least "
                f"{need} ({', '.join(names)})"
            )
        texts.append(row[text_i])
        if label_i is not None:
            labels.append(row[label_i])
    return _build(texts, labels if label_i is not None else None, str(path))


def _load_json(cfg: DataConfig, path: Path) -> TextExamples:
    text = path.read_text(encoding="utf-8-sig")
    whole: Any = None
    if path.suffix.lower() == ".json":
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None  # not one JSON document: read it as JSON Lines, as many tools write
    records: list[Any]
    if isinstance(whole, dict):
        # Column-oriented ({"sentence": [...], "label": [...]}) or a wrapper {"data": [...]}.
        if len(whole) > 1 and all(isinstance(v, list) for v in whole.values()):
            length = len(next(iter(whole.values())))
            records = [{k: v[i] if i < len(v) else None for k, v in whole.items()} for i in range(length)]
        elif isinstance(whole.get("data"), list):
            records = whole["data"]
        else:
            records = [whole]
    elif isinstance(whole, list):
        records = whole
    elif whole is not None:
        raise DataError(f"data.source: {path} holds a JSON {type(whole).__name__}, expected records")
    else:
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(f"data.source: {path} line {number}: invalid JSON ({err.msg})") from None
    if not records:
        raise DataError(f"data.source: {path} is empty")

    label_col = _label_column(cfg)
    texts: list[Any] = []
    labels: list[Any] = []
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise DataError(f"data.source: {path} record {number} is not a JSON object")
        if cfg.text_column not in record:
            raise _missing_column("text_column", cfg.text_column, f"{path} (record {number})", record)
        if label_col is not None and label_col not in record:
            raise _missing_column("label_column", label_col, f"{path} (record {number})", record)
        texts.append(record[cfg.text_column])
        if label_col is not None:
            labels.append(record[label_col])
    return _build(texts, labels if label_col is not None else None, str(path))


# ---------------------------------------------------------------------- Hugging Face hub

# Benchmark collections whose "owner" part is really the config name: "glue/cola".
_BENCHMARKS = {"glue": "nyu-mll/glue", "super_glue": "aps/super_glue"}


def hub_arguments(source: str, subset: str | None) -> tuple[str, str | None]:
    """(dataset path, config name) for ``load_dataset``: "glue/cola" -> ("nyu-mll/glue", "cola")."""
    owner, sep, name = source.partition("/")
    if sep and owner in _BENCHMARKS and "/" not in name:
        return _BENCHMARKS[owner], subset or name
    if source in _BENCHMARKS:
        return _BENCHMARKS[source], subset
    return source, subset


def _load_hub(cfg: DataConfig) -> TextExamples:
    path, config_name = hub_arguments(cfg.source, cfg.subset)
    where = f"{cfg.source!r} (split {cfg.split!r})"
    try:
        import datasets

        ds = datasets.load_dataset(path, config_name, split=cfg.split)
    except Exception as err:  # noqa: BLE001 - any failure here is the user's source/network
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataError(
            f"data.source {cfg.source!r}: could not load from the Hugging Face hub ({first_line})"
        ) from None

    columns = list(ds.column_names)
    label_col = _label_column(cfg)
    if cfg.text_column not in columns:
        raise _missing_column("text_column", cfg.text_column, where, columns)
    if label_col is not None and label_col not in columns:
        raise _missing_column("label_column", label_col, where, columns)

    texts = list(ds[cfg.text_column])
    if label_col is None:
        return _build(texts, None, where)
    raw = list(ds[label_col])
    feature = ds.features.get(label_col)
    names = getattr(feature, "names", None)
    if names and all(isinstance(v, (int, np.integer)) for v in raw):
        if any(v < 0 for v in raw):
            # GLUE-style test splits mark hidden labels with -1.
            raise DataError(
                f"data.split = {cfg.split!r}: {cfg.source!r} has no labels in this split; use a labelled split"
            )
        # ClassLabel names ("unacceptable", "acceptable") read better in reports than "0", "1".
        return _build(texts, raw, where, label_names=list(names))
    return _build(texts, raw, where)
