"""Data loading, demo records and partitions, checked against the real shared fixtures."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fedaudit.config import ConfigError, DataConfig
from fedaudit.data import (
    DataError,
    TextExamples,
    generate_demo_records,
    holdout_split,
    load_text,
    partition,
)

COLA_FIRST = "Our friends won't buy this analysis, let alone the next one we propose."
EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(\.[\w-]+)+\b")
# en_US phone layouts Faker uses: 555-555-5555, (555)555-5555, 555.555.5555, +1-..., 001-..., x123.
PHONE = re.compile(r"(?<![\w-])(\+1-|001-)?\(?\d{3}\)?[-.]?\d{3}[-.]?\d{4}(x\d+)?(?![\w-])")


def cfg(**kwargs) -> DataConfig:
    return DataConfig(**kwargs)


@pytest.fixture(scope="module")
def cola(data_dir: Path) -> TextExamples:
    return load_text(cfg(source=str(data_dir / "text/cola/in_domain_train.tsv")), seed=0)


def label_skew(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between each client's label mix and the global one."""
    classes = np.unique(labels)
    overall = np.array([(labels == c).mean() for c in classes])
    mixes = [np.array([(labels[p] == c).mean() for c in classes]) for p in parts]
    return float(np.mean([0.5 * np.abs(mix - overall).sum() for mix in mixes]))


# ------------------------------------------------------------------------ real files


def test_cola_raw_headerless_tsv(cola: TextExamples) -> None:
    assert len(cola) == 8551
    assert cola.texts[0] == COLA_FIRST
    assert cola.labels[0] == 1
    assert set(cola.labels) == {0, 1}
    assert cola.label_names == ["0", "1"] and cola.num_labels == 2
    # Quotes are literal in CoLA: a csv reader that honours them would merge rows.
    assert any('"' in t for t in cola.texts)
    # The raw file's unacceptable sentences (label 0) are a minority, about 30 %.
    assert 0.25 < cola.labels.count(0) / len(cola) < 0.35


def test_cola_with_explicit_columns(data_dir: Path) -> None:
    path = str(data_dir / "text/cola/in_domain_dev.tsv")
    columns = ["src", "y", "mark", "text"]
    ex = load_text(cfg(source=path, columns=columns, text_column="text", label_column="y"), 0)
    assert len(ex) == 527
    assert set(ex.labels) == {0, 1}


def test_sst2_header_tsv(data_dir: Path) -> None:
    ex = load_text(cfg(source=str(data_dir / "text/sst2/train.tsv")), seed=0)
    assert len(ex) == 60614
    assert ex.texts[:2] == ["when are bears bears and", "kids , spirit"]  # stripped
    assert ex.labels[:2] == [1, 1]
    assert ex.label_names == ["0", "1"]
    assert 0.5 < np.mean(ex.labels) < 0.6  # SST-2 train is about 56 % positive
    val = load_text(cfg(source=str(data_dir / "text/sst2/validation.tsv")), seed=0)
    assert len(val) == 872


def test_max_examples_subset_is_deterministic(data_dir: Path, cola: TextExamples) -> None:
    source = str(data_dir / "text/cola/in_domain_train.tsv")
    a = load_text(cfg(source=source, max_examples=100), seed=3)
    b = load_text(cfg(source=source, max_examples=100), seed=3)
    c = load_text(cfg(source=source, max_examples=100), seed=4)
    assert a == b
    assert len(a) == 100 and a.texts != c.texts
    # A subset of the full data, in the original order.
    positions = [cola.texts.index(t) for t in a.texts]
    assert positions == sorted(positions)
    assert all(cola.labels[p] == y for p, y in zip(positions, a.labels))
    assert a.label_names == cola.label_names
    # Asking for more than there is keeps everything.
    assert len(load_text(cfg(source=source, max_examples=10**6), seed=3)) == 8551


# ------------------------------------------------------------------- round-trip files


def test_csv_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    path.write_text('text,stars\n"Great, really great",pos\n  meh  ,neg\n,pos\n"He said ""no""",neg\n')
    ex = load_text(cfg(source=str(path), text_column="text", label_column="stars"), 0)
    assert ex.texts == ["Great, really great", "meh", 'He said "no"']  # the empty text is dropped
    assert ex.label_names == ["neg", "pos"]
    assert ex.labels == [1, 0, 0]


def test_headerless_csv_with_columns(tmp_path: Path) -> None:
    path = tmp_path / "plain.csv"
    path.write_text("2,first one\n0,second one\n")
    ex = load_text(cfg(source=str(path), columns=["y", "body"], text_column="body", label_column="y"), 0)
    assert ex.texts == ["first one", "second one"]
    assert ex.labels == [2, 0] and ex.label_names == ["0", "1", "2"]


def test_jsonl_round_trip(tmp_path: Path) -> None:
    rows = [
        {"sentence": "alpha", "label": 1},
        {"sentence": "beta", "label": "0"},
        {"sentence": "gamma", "label": 1},
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    ex = load_text(cfg(source=str(path)), 0)
    assert ex.texts == ["alpha", "beta", "gamma"]
    assert ex.labels == [1, 0, 1] and ex.label_names == ["0", "1"]
    # The same records as one JSON array.
    path2 = tmp_path / "d.json"
    path2.write_text(json.dumps(rows))
    assert load_text(cfg(source=str(path2)), 0) == ex


def test_jsonl_missing_key(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "x", "label": 0}) + "\n")
    with pytest.raises(DataError, match=r"^data\.text_column: 'sentence' is not a column .*text, label"):
        load_text(cfg(source=str(path)), 0)


def test_txt_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "lines.txt"
    path.write_text("first line\n\n   \nsecond line  \n")
    ex = load_text(cfg(source=str(path)), 0)
    assert ex.texts == ["first line", "second line"]
    assert ex.labels == [0, 0] and ex.label_names == ["none"] and ex.num_labels == 1


def test_no_label_column(tmp_path: Path) -> None:
    path = tmp_path / "t.tsv"
    path.write_text("sentence\nhello\nworld\n")
    ex = load_text(cfg(source=str(path), label_column=None), 0)
    assert ex.texts == ["hello", "world"] and ex.label_names == ["none"]


# ---------------------------------------------------------------------------- errors


def test_headerless_not_cola_shaped(tmp_path: Path) -> None:
    path = tmp_path / "odd.tsv"
    path.write_text("a\tb\tc\nd\te\tf\n")
    with pytest.raises(DataError) as info:
        load_text(cfg(source=str(path)), 0)
    msg = str(info.value)
    assert msg.startswith("data.text_column: 'sentence' is not a column of ")
    assert "(columns: a, b, c)" in msg and "set data.columns" in msg
    assert "\n" not in msg
    assert isinstance(info.value, ConfigError)


def test_missing_label_column(tmp_path: Path) -> None:
    path = tmp_path / "t.tsv"
    path.write_text("sentence\ty\nhello\t1\n")
    with pytest.raises(DataError, match=r"^data\.label_column: 'label' is not a column .*sentence, y"):
        load_text(cfg(source=str(path)), 0)


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "x.tsv"
    with pytest.raises(DataError) as info:
        load_text(cfg(source=str(missing)), 0)
    assert str(info.value) == f"data.source: file not found: {missing}"


def test_hub_offline_is_a_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets
    import huggingface_hub.constants

    # The libraries read HF_HUB_OFFLINE at import time, so patch their copies as well;
    # offline mode fails at once instead of retrying the network.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError) as info:
        load_text(cfg(source="glue/cola"), 0)
    msg = str(info.value)
    assert msg.startswith("data.source 'glue/cola': could not load from the Hugging Face hub (")
    assert "\n" not in msg


def test_hub_dataset_path(monkeypatch: pytest.MonkeyPatch, cola: TextExamples) -> None:
    """The hub branch end to end, with load_dataset answering from the real CoLA rows."""
    import datasets

    calls = []
    features = datasets.Features(
        {
            "sentence": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["unacceptable", "acceptable"]),
            "idx": datasets.Value("int32"),
        }
    )
    table = {"sentence": cola.texts[:50], "label": cola.labels[:50], "idx": list(range(50))}

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict(table, features=features)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ex = load_text(cfg(source="glue/cola", split="validation"), 0)
    assert calls == [("nyu-mll/glue", "cola", "validation")]
    assert ex.texts == cola.texts[:50] and ex.labels == cola.labels[:50]
    assert ex.label_names == ["unacceptable", "acceptable"]
    with pytest.raises(DataError, match=r"^data\.text_column: .text. is not a column .*sentence, label"):
        load_text(cfg(source="glue/cola", text_column="text"), 0)


def test_hub_name_mapping() -> None:
    from fedaudit.data.text import hub_arguments

    assert hub_arguments("glue/cola", None) == ("nyu-mll/glue", "cola")
    assert hub_arguments("glue/sst2", None) == ("nyu-mll/glue", "sst2")
    assert hub_arguments("glue", "mrpc") == ("nyu-mll/glue", "mrpc")
    assert hub_arguments("super_glue/boolq", None)[1] == "boolq"
    assert hub_arguments("rotten_tomatoes", None) == ("rotten_tomatoes", None)
    assert hub_arguments("stanfordnlp/imdb", "plain_text") == ("stanfordnlp/imdb", "plain_text")


# ------------------------------------------------------------------------------ demo


def test_demo_records() -> None:
    a = generate_demo_records(90, seed=7)
    assert a == generate_demo_records(90, seed=7)
    assert a.texts != generate_demo_records(90, seed=8).texts
    assert a.label_names == ["medical", "financial", "contact"]
    assert Counter(a.labels) == {0: 30, 1: 30, 2: 30}
    assert any(EMAIL.search(t) for t in a.texts)
    contact = [t for t, y in zip(a.texts, a.labels) if y == 2]
    assert any(PHONE.search(t) for t in contact)
    assert all(len(t.split()) <= 40 for t in a.texts)
    assert len(set(a.texts)) == len(a.texts)


def test_demo_via_load_text() -> None:
    ex = load_text(cfg(source="demo", demo_size=40), seed=1)
    assert ex == generate_demo_records(40, 1)
    small = load_text(cfg(source="demo", demo_size=40, max_examples=10), seed=1)
    assert len(small) == 10 and set(small.texts) <= set(ex.texts)


# ------------------------------------------------------------------------- partitions


def check_partition(parts: list[np.ndarray], n: int, clients: int) -> None:
    assert len(parts) == clients
    joined = np.concatenate(parts)
    assert len(joined) == n and set(joined.tolist()) == set(range(n))  # disjoint and covering


def test_partition_iid(cola: TextExamples) -> None:
    parts = partition(cola.labels, clients=7, method="iid", alpha=0.5, seed=0)
    check_partition(parts, len(cola), 7)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    again = partition(cola.labels, clients=7, method="iid", alpha=0.5, seed=0)
    assert all(np.array_equal(x, y) for x, y in zip(parts, again))
    other = partition(cola.labels, clients=7, method="iid", alpha=0.5, seed=1)
    assert not np.array_equal(parts[0], other[0])


def test_partition_dirichlet_is_skewed(cola: TextExamples) -> None:
    labels = np.array(cola.labels)
    skewed = partition(cola.labels, clients=8, method="dirichlet", alpha=0.1, seed=0, min_size=5)
    check_partition(skewed, len(labels), 8)
    assert min(len(p) for p in skewed) >= 5
    again = partition(cola.labels, clients=8, method="dirichlet", alpha=0.1, seed=0, min_size=5)
    assert all(np.array_equal(x, y) for x, y in zip(skewed, again))
    iid = partition(cola.labels, clients=8, method="iid", alpha=0.1, seed=0)
    assert label_skew(labels, skewed) > 3 * label_skew(labels, iid)


def test_partition_dirichlet_demo_labels() -> None:
    labels = generate_demo_records(300, seed=0).labels
    parts = partition(labels, clients=5, method="dirichlet", alpha=100.0, seed=2)
    check_partition(parts, 300, 5)


def test_partition_infeasible() -> None:
    expected = r"^federation\.clients = 5: cannot give every client at least 1 examples from 3 "
    with pytest.raises(DataError, match=expected):
        partition([0, 1, 0], clients=5, method="iid", alpha=0.5, seed=0)
    # Two classes, tiny alpha: each class lands on one client, so 10 clients cannot all get data.
    with pytest.raises(DataError, match=r"^federation\.clients = 10: .*partition = 'dirichlet'"):
        partition([0, 1] * 10, clients=10, method="dirichlet", alpha=1e-4, seed=0)


def test_holdout_split() -> None:
    train, hold = holdout_split(101, 0.2, seed=0)
    assert len(hold) == 20 and len(train) == 81
    assert set(train.tolist()).isdisjoint(hold.tolist())
    assert set(train.tolist()) | set(hold.tolist()) == set(range(101))
    t2, h2 = holdout_split(101, 0.2, seed=0)
    assert np.array_equal(train, t2) and np.array_equal(hold, h2)
    assert not np.array_equal(hold, holdout_split(101, 0.2, seed=1)[1])
    assert len(holdout_split(3, 0.01, seed=0)[1]) == 1  # at least one held out
    with pytest.raises(DataError, match=r"^data\.holdout_fraction"):
        holdout_split(1, 0.5, seed=0)
