"""``fedaudit attack`` evaluates one engine on K client updates and writes the documented JSON."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import TINY_BERT, run_cli


def test_attack_embedding_rows_on_cola_writes_json(tmp_path: Path, cola_path: Path) -> None:
    out = tmp_path / "x.json"
    proc = run_cli(
        "attack",
        "embedding-rows",
        "--scenario",
        "simulations/quickstart.toml",
        "--set",
        f"data.source={cola_path}",
        "--batches",
        "3",
        "--seed",
        "1",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["attack"] == "embedding-rows"
    assert result["scenario"]["data"]["source"] == str(cola_path)
    assert len(result["batches"]) == 3
    for row in result["batches"]:
        assert {"metrics", "status", "seconds", "peak_mem_mb"} <= set(row)
        assert row["status"] == "exact" and row["metrics"]["token_recall"] == 1.0
    agg = result["aggregate"]
    assert agg["token_precision"] == 1.0 and agg["token_recall"] == 1.0
    assert agg["seconds_median"] > 0 and agg["peak_mem_mb"] >= 0
    assert "embedding-rows on quickstart" in proc.stdout


def test_attack_labels_same_seed_same_batches(tmp_path: Path, cola_path: Path) -> None:
    outs = []
    for name in ("a.json", "b.json"):
        args = [
            "attack",
            "labels",
            "--set",
            f"data.source={cola_path}",
            "--set",
            "training.batch_size=1",
            "--batches",
            "4",
            "--seed",
            "3",
            "--out",
            str(tmp_path / name),
        ]
        for s in TINY_BERT:
            args += ["--set", s]
        proc = run_cli(*args)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs.append(json.loads((tmp_path / name).read_text()))
    assert [b["metrics"] for b in outs[0]["batches"]] == [b["metrics"] for b in outs[1]["batches"]]
    assert outs[0]["aggregate"]["label_accuracy"] == 1.0
    assert outs[0]["aggregate"]["status_counts"] == {"exact": 4}


def test_attack_out_keeps_what_was_recovered(tmp_path: Path) -> None:
    out = tmp_path / "spear.json"
    proc = run_cli(
        "attack",
        "spear",
        "--scenario",
        "simulations/digits_quick.toml",
        "--batches",
        "2",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["batches"]
    assert [row["status"] for row in rows] == ["exact", "exact"]
    for row in rows:
        names = row["reconstruction"]["images"]
        assert len(names) == 4 and len({*names}) == 4
        assert {p["recovered"] for p in row["comparison"]["pairs"]} == set(names)
        for pair in row["comparison"]["pairs"]:
            assert (tmp_path / pair["original"]).is_file() and (tmp_path / pair["recovered"]).is_file()
            assert pair["exact"] and pair["score"]["psnr"] == 100.0
