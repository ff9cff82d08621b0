"""Image and table data: loading into float arrays the models read, with integer labels.

Images are N x C x H x W float32 in [0, 1]: scikit-learn's ``digits`` (offline, the built-in
default), MNIST or CIFAR-10 from the Hugging Face hub (``mnist``, ``cifar10``, or any hub id
with an image column), a local ``.npz`` (``images`` uint8 N x H x W or N x H x W x C,
``labels``, optional ``classes``) or MNIST's idx files (``...-images-idx3-ubyte[.gz]``; the
labels file beside it). Tables are CSV files (``data.modality = "table"``): see ``TableSchema``.
"""

from __future__ import annotations

import csv
import gzip
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fedaudit.config import DataConfig
from fedaudit.data.examples import DataError
from fedaudit.data.text import map_labels

IMAGE_NAMES = {"digits": None, "mnist": "ylecun/mnist", "cifar10": "uoft-cs/cifar10"}
"""Built-in image sources: scikit-learn's digits, or the hub id of the named dataset."""
MISSING = ("", "?")
"""Cell values that mean "unknown" in CSV tables (UCI writes "?")."""


@dataclass(frozen=True)
class Column:
    """One table column as the model reads it: ``stop - start`` entries of the encoded row."""

    name: str
    kind: Literal["numeric", "categorical"]
    start: int
    stop: int
    mean: float = 0.0
    std: float = 1.0
    low: float = 0.0
    high: float = 0.0
    categories: tuple[str, ...] = ()


def _as_written(value: float, column: Column) -> float | int:
    """A decoded number as the table wrote it: standardizing and back leaves rounding noise
    (21.000000356 for 21), so a value within a millionth of the column's range of a whole number
    is that number, and any other keeps 9 significant digits."""
    if abs(value - round(value)) <= 1e-6 * max(column.high - column.low, 1.0):
        return int(round(value))
    return float(f"{value:.9g}")


@dataclass(frozen=True)
class TableSchema:
    """Numeric columns standardized (z-scores, missing values at the mean), categorical ones
    one-hot (missing is a category of its own); ``decode`` maps an encoded row back to a record."""

    columns: tuple[Column, ...]

    @property
    def width(self) -> int:
        return self.columns[-1].stop if self.columns else 0

    def decode(self, row: np.ndarray) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for c in self.columns:
            part = np.asarray(row[c.start : c.stop], dtype=np.float64)
            out[c.name] = (
                _as_written(part[0] * c.std + c.mean, c) if c.kind == "numeric" else c.categories[int(part.argmax())]
            )
        return out

    def feature_hits(self, predicted: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """Per column, whether the prediction reads back right: the same category, or a number
        within 1% of the column's range."""
        hits = []
        for c in self.columns:
            p, r = predicted[c.start : c.stop], reference[c.start : c.stop]
            if c.kind == "categorical":
                hits.append(int(p.argmax()) == int(r.argmax()))
            else:
                hits.append(abs(float(p[0] - r[0])) * c.std <= 0.01 * max(c.high - c.low, np.finfo(float).tiny))
        return np.array(hits)


@dataclass(frozen=True)
class ArrayExamples:
    """Float inputs (N x ...) with class indices and class names; tables carry their schema."""

    inputs: np.ndarray
    labels: list[int]
    label_names: list[str]
    kind: Literal["image", "table"]
    schema: TableSchema | None = None

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.labels):
            raise ValueError(f"{len(self.inputs)} inputs but {len(self.labels)} labels")

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.inputs.shape[1:])

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Any) -> ArrayExamples:
        idx = np.asarray([int(i) for i in indices], dtype=np.int64)
        return ArrayExamples(
            self.inputs[idx], [self.labels[i] for i in idx], list(self.label_names), self.kind, self.schema
        )


def modality(cfg: DataConfig) -> Literal["text", "image", "table"]:
    """``data.modality``, or for "auto": images for the built-in image names, .npz and idx files."""
    if cfg.modality != "auto":
        return cfg.modality
    name = Path(cfg.source).name.lower()
    if cfg.source.lower() in IMAGE_NAMES or name.endswith(".npz") or "idx3" in name:
        return "image"
    return "text"


# ---------------------------------------------------------------- images


def load_images(cfg: DataConfig) -> ArrayExamples:
    source = cfg.source
    if source.lower() == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        return _images(digits.images[:, None] / 16.0, digits.target, [str(c) for c in digits.target_names], source)
    path = Path(source).expanduser()
    if path.name.lower().endswith(".npz"):
        return _load_npz(path)
    if "idx3" in path.name.lower():
        return _load_idx_pair(path)
    return _load_hub_images(cfg)


def _images(pixels: np.ndarray, labels: Any, names: list[str] | None, where: str) -> ArrayExamples:
    """N x C x H x W floats in [0, 1] (checked) with labels mapped to class indices."""
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    if pixels.ndim != 4 or len(pixels) == 0:
        raise DataError(f"data.source: {where} holds no images (got an array of shape {pixels.shape})")
    if float(pixels.min()) < 0.0 or float(pixels.max()) > 1.0:
        raise DataError(f"data.source: {where}: pixel values outside [0, 1] after scaling")
    raw = [int(v) for v in np.asarray(labels).reshape(-1)]
    if len(raw) != len(pixels):
        raise DataError(f"data.source: {where} has {len(pixels)} images but {len(raw)} labels")
    if names is None:
        idx, names = map_labels(raw, where)
    else:
        idx = raw
        if min(idx) < 0 or max(idx) >= len(names):
            raise DataError(f"data.source: {where}: labels outside 0..{len(names) - 1}")
    return ArrayExamples(pixels, idx, list(names), "image")


def _to_nchw(images: np.ndarray, where: str) -> np.ndarray:
    """uint8 N x H x W or N x H x W x C -> float N x C x H x W in [0, 1]."""
    if images.dtype != np.uint8:
        raise DataError(f"data.source: {where}: images must be uint8 (0..255), got {images.dtype}")
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[-1] in (1, 3, 4):
        images = images.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"data.source: {where}: images must be N x H x W or N x H x W x C, got {images.shape}")
    return images.astype(np.float32) / 255.0


def _load_npz(path: Path) -> ArrayExamples:
    if not path.is_file():
        raise DataError(f"data.source: file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise DataError(f"data.source: {path} is not an .npz archive (numpy.savez)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in ("images", "labels") if k not in archive.files]
            if missing:
                raise DataError(f"data.source: {path} has no {missing[0]!r} array (arrays: {', '.join(archive.files)})")
            images, labels = archive["images"], archive["labels"]
            names = [str(c) for c in archive["classes"]] if "classes" in archive.files else None
    except DataError:
        raise
    except ValueError as err:
        # numpy refuses object arrays (pickled Python objects) and says to allow pickle; never.
        why = "holds object arrays (pickled Python objects, never loaded)" if "pickle" in str(err) else "is unreadable"
        raise DataError(f"data.source: {path} {why}") from None
    except (OSError, EOFError, zipfile.BadZipFile):
        raise DataError(f"data.source: {path} is not an .npz archive (numpy.savez)") from None
    if labels.dtype.kind not in "iub":
        raise DataError(f"data.source: {path}: labels must be integers, got {labels.dtype}")
    return _images(_to_nchw(images, str(path)), labels, names, str(path))


def _read_idx(path: Path) -> np.ndarray:
    """An idx file (MNIST's format): 0, 0, type 0x08 (uint8), ndim, then big-endian int32 dims."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"data.source: {path} is not a uint8 idx file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != math.prod(dims):
        raise DataError(f"data.source: {path} is truncated ({body.size} of {math.prod(dims)} values)")
    return body.reshape(dims)


def _load_idx_pair(path: Path) -> ArrayExamples:
    if not path.is_file():
        raise DataError(f"data.source: file not found: {path}")
    labels_path = path.with_name(path.name.replace("images-idx3", "labels-idx1"))
    if not labels_path.is_file():
        raise DataError(f"data.source: the labels file {labels_path.name} is not beside {path}")
    return _images(_to_nchw(_read_idx(path), str(path)), _read_idx(labels_path), [str(d) for d in range(10)], str(path))


def _load_hub_images(cfg: DataConfig) -> ArrayExamples:
    hub_id = IMAGE_NAMES.get(cfg.source.lower()) or cfg.source
    where = f"{cfg.source!r} (split {cfg.split!r})"
    try:
        import datasets

        ds = datasets.load_dataset(hub_id, cfg.subset, split=cfg.split)
    except Exception as err:  # noqa: BLE001 - any failure here is the user's source/network
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataError(f"data.source {cfg.source!r}: could not load from the Hugging Face hub ({first})") from None
    image_cols = [name for name, f in ds.features.items() if type(f).__name__ == "Image"]
    if not image_cols:
        raise DataError(f"data.source: {where} has no image column (columns: {', '.join(ds.column_names)})")
    label = cfg.label_column or "label"
    if label not in ds.column_names:
        raise DataError(
            f"data.label_column: {label!r} is not a column of {where} (columns: {', '.join(ds.column_names)})"
        )
    images = np.stack([np.asarray(img) for img in ds[image_cols[0]]])
    names = getattr(ds.features[label], "names", None)
    return _images(_to_nchw(images, where), ds[label], list(names) if names else None, where)


# ---------------------------------------------------------------- tables


def load_table(cfg: DataConfig) -> ArrayExamples:
    """A CSV table: ``data.columns`` names a headerless file's columns, ``data.label_column`` the
    class; every other column is a feature (numeric when every known value parses as a number).
    Rows starting with "|" (UCI's comment lines) are skipped, and a label's trailing period (UCI
    Adult's test file writes ">50K.") is dropped."""
    path = Path(cfg.source).expanduser()
    if not path.is_file():
        raise DataError(f"data.source: file not found: {path}")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open(encoding="utf-8-sig", newline="") as handle:
        rows = [
            [cell.strip() for cell in row]
            for row in csv.reader(handle, delimiter=delimiter)
            if row and any(cell.strip() for cell in row) and not row[0].startswith("|")
        ]
    if not rows:
        raise DataError(f"data.source: {path} is empty")
    names = list(cfg.columns) if cfg.columns else rows[0]
    body = rows if cfg.columns and rows[0] != names else rows[1:]
    label = cfg.label_column
    if not label or label not in names:
        raise DataError(
            f"data.label_column: {label!r} is not a column of {path} (columns: {', '.join(names)}"
            f"{'; set data.columns for a headerless file' if not cfg.columns else ''})"
        )
    for number, row in enumerate(body, start=1):
        if len(row) != len(names):
            raise DataError(f"data.source: {path}: data row {number} has {len(row)} columns, expected {len(names)}")
    label_i = names.index(label)
    labels, label_names = map_labels([row[label_i].removesuffix(".") for row in body], str(path))
    columns, parts, start = [], [], 0
    for i, name in enumerate(names):
        if i == label_i:
            continue
        column, encoded = _encode_column(name, [row[i] for row in body], start)
        columns.append(column)
        parts.append(encoded)
        start = column.stop
    if not columns:
        raise DataError(f"data.source: {path} has no feature columns besides {label!r}")
    inputs = np.concatenate(parts, axis=1).astype(np.float32)
    return ArrayExamples(inputs, labels, label_names, "table", TableSchema(tuple(columns)))


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _encode_column(name: str, values: list[str], start: int) -> tuple[Column, np.ndarray]:
    known = [v for v in values if v not in MISSING]
    numbers = [_number(v) for v in known]
    if known and all(n is not None and math.isfinite(n) for n in numbers):
        array = np.array(numbers, dtype=np.float64)
        mean, std = float(array.mean()), float(array.std()) or 1.0
        filled = np.array([mean if v in MISSING else float(v) for v in values])
        column = Column(
            name, "numeric", start, start + 1, mean=mean, std=std, low=float(array.min()), high=float(array.max())
        )
        return column, ((filled - mean) / std)[:, None]
    categories = tuple(sorted(set(values)))
    lookup = {c: j for j, c in enumerate(categories)}
    onehot = np.zeros((len(values), len(categories)))
    onehot[np.arange(len(values)), [lookup[v] for v in values]] = 1.0
    return Column(name, "categorical", start, start + len(categories), categories=categories), onehot
