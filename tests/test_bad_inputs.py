"""Every bad input is one clear line (exit 2), and client-controlled text is inert wherever it
is shown: the terminal, report.md."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from rich.console import Console
from typer.testing import CliRunner

from fedaudit.audit.records import AttackRecord, ClientError, RejectedUpdate, UtilityRecord, read_records
from fedaudit.audit.store import RunStore
from fedaudit.cli import app
from fedaudit.config import ConfigError, Scenario, read_scenario
from fedaudit.report.console import RoundConsole
from fedaudit.report.markdown import render_report, write_report
from fedaudit.safety import clean_text, write_private
from tests.conftest import TINY_GPT2, run_cli

#: Terminal attacks a client can hide in its text, its id or its error message.
HOSTILE = [
    "\x1b]0;owned\x07title",  # OSC: set the terminal title
    "\x1b[2J\x1b[Hcleared",  # CSI: clear the screen
    "bell\x07nul\x00del\x7f",
    "c1\x9b31mcsi\x85nel",
    "rtl\u202eevil\u202c",
    "line\nbreak\r| fake | row |",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_clean_text_removes_every_control_sequence(text: str) -> None:
    cleaned = clean_text(text)
    assert not any(ord(c) < 32 and c != "\t" or 0x7F <= ord(c) <= 0x9F for c in cleaned), repr(cleaned)
    assert "\u202e" not in cleaned and "\n" not in cleaned
    # A sequence goes whole (the title it would set too); the text around it stays.
    assert clean_text(HOSTILE[0]) == "title" and clean_text(HOSTILE[1]) == "cleared"
    assert clean_text("tab\tkept é ß 漢字") == "tab\tkept é ß 漢字"


def _hostile_run(tmp_path: Path) -> RunStore:
    store = RunStore.create(Scenario(name="hostile"), base_dir=tmp_path)
    for i, text in enumerate(HOSTILE):
        store.append(
            AttackRecord(
                round=1,
                client=f"c{i}{text}",
                attack="embedding-rows",
                status="exact",
                reason=text,
                metrics={"psnr": float("inf"), "ssim": float("nan"), "token_recall": 1.0},
                reconstruction={"texts": [text], "labels": [text, 1]},
            )
        )
        store.append(ClientError(round=1, client=text, reason=f"crashed: {text}"))
        store.append(RejectedUpdate(round=1, client=text, reason=f"tensor {text!r}: shape (1,)"))
    store.append(UtilityRecord(round=1, metrics={"loss": float("nan"), "accuracy": 0.5}))
    return store


def _control_free(text: str) -> bool:
    return not any((ord(c) < 32 and c not in "\t\n") or 0x7F <= ord(c) <= 0x9F or c == "\u202e" for c in text)


def test_report_and_console_never_carry_control_characters(tmp_path: Path) -> None:
    store = _hostile_run(tmp_path)
    report = write_report(store.path)
    text = report.read_text(encoding="utf-8")
    assert _control_free(text)
    assert "title" in text and "Rejected updates" in text and "| fake |" not in text
    assert report.stat().st_mode & 0o777 == 0o600
    console = Console(record=True, width=200, force_terminal=True, color_system=None)
    screen = RoundConsole(Scenario(name="hostile"), console)
    for record in read_records(store.path):
        screen.record(record)
    screen.round_done(1)
    assert _control_free(console.export_text())


def test_non_finite_numbers_are_null_in_json_and_read_back_as_floats(tmp_path: Path) -> None:
    store = _hostile_run(tmp_path)
    lines = [json.loads(line) for line in store.records_path.read_text().split("\n") if line]
    assert lines[0]["metrics"]["psnr"] is None and lines[0]["non_finite"]["metrics.psnr"] == "inf"
    assert lines[-1]["metrics"]["loss"] is None and lines[-1]["non_finite"] == {"metrics.loss": "nan"}
    records = read_records(store.path)
    assert records[0].metrics["psnr"] == float("inf") and np.isnan(records[-1].metrics["loss"])
    assert "| 1 | nan | 0.500 |" in render_report(store.path)  # the NaN loss reported, not a crash
    result = run_cli("report", str(store.path), timeout=120)
    assert result.returncode == 0, result.stderr


def test_private_writes_are_atomic_owner_only_and_never_share_a_temp_name(tmp_path: Path) -> None:
    target = tmp_path / "sweep.csv"
    write_private(target, "a")
    write_private(target, "b")
    assert target.read_text() == "b" and target.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["sweep.csv"]  # no temp file left behind


def test_a_scenario_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    path = tmp_path / "bom.toml"
    path.write_bytes("\ufeff[federation]\nclients = 3\n".encode())
    assert read_scenario(path).federation.clients == 3


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "not UTF-8 text"),
        (b"[federation\nclients = 3", "invalid TOML"),
    ],
)
def test_unreadable_scenario_files_are_one_line(tmp_path: Path, content: bytes, needle: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=needle):
        read_scenario(path)


def _npz(tmp_path: Path, name: str, **arrays) -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ("not-a-zip", "data.source"),
        ("string-labels", "data.source"),
        ("object-array", "data.source"),
    ],
)
def test_bad_data_files_fail_at_start_up_in_one_line(tmp_path: Path, source: str, needle: str) -> None:
    images = np.zeros((8, 6, 6), dtype=np.uint8)
    paths = {
        "not-a-zip": tmp_path / "x.npz",
        "string-labels": _npz(tmp_path, "s.npz", images=images, labels=np.array(["a"] * 8)),
        "object-array": tmp_path / "o.npz",
    }
    paths["not-a-zip"].write_bytes(b"plain text, not a zip")
    np.savez(paths["object-array"], images=np.array([object()] * 8, dtype=object), labels=np.zeros(8))
    model = ["model.name=mlp", "model.config={}"]
    args = ["run", "--check", "--set", f"data.source={paths[source]}", *(a for m in model for a in ("--set", m))]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedaudit: error: ") and needle in lines[0], result.output
    assert "allow_pickle" not in lines[0] and len(lines[0]) < 300


def test_one_pixel_images_run_and_their_ssim_is_undefined_not_a_crash(tmp_path: Path) -> None:
    from fedaudit.metrics.arrays import image_metrics

    pixels = np.zeros((8, 1, 1), dtype=np.uint8)
    path = _npz(tmp_path, "p.npz", images=pixels, labels=np.arange(8, dtype=np.int64) % 2)
    result = CliRunner().invoke(app, ["run", "--check", "--set", f"data.source={path}", "--set", "model.name=cnn",
                                      "--set", "model.config={}"])  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = image_metrics(np.zeros((2, 1, 1, 1)), np.zeros((2, 1, 1, 1)))
    assert np.isnan(metrics["ssim"]) and metrics["exact_fraction"] == 1.0


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("model.config={n_layer=0, n_embd=64, n_head=2}", "model.config.n_layer = 0"),
        ("model.config={n_layer=-1, n_embd=64, n_head=2}", "model.config.n_layer = -1"),
        ("model.config={n_layer=1, n_embd=30, n_head=4}", "divisible by model.config.n_head"),
        ("federation.seed=18446744073709551616", "federation.seed"),
        ("audit.budget_seconds=inf", "audit.budget_seconds = inf"),
        ("audit.budget_seconds=1e300", "audit.budget_seconds"),
        ("training.lr=inf", "training.lr = inf"),
        ("training.lr=nan", "training.lr = nan"),
        ("defenses.noise.scale=inf", "defenses.noise.scale"),
        ("training.max_seq_len=5000", "training.max_seq_len = 5000: 'gpt2-random' has 1024 positions"),
        (f'name="{"x" * 5000}"', ""),
    ],
)
def test_out_of_range_settings_are_one_short_line(override: str, needle: str) -> None:
    result = CliRunner().invoke(app, ["run", "--check", *(a for o in [*TINY_GPT2, override] for a in ("--set", o))])
    lines = result.output.strip().splitlines()
    if not needle:  # a long but valid name: accepted
        assert result.exit_code == 0, result.output
        return
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert needle in lines[0] and len(lines[0]) < 250, lines[0]


_VALUES = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2**31, 2**63, 0.5, float("inf"), float("-inf"), float("nan"), 1e308, True]),
    st.text(max_size=30),
    st.lists(st.integers(-3, 3), max_size=3),
)
_KEYS = [
    "federation.clients",
    "federation.rounds",
    "federation.seed",
    "federation.alpha",
    "federation.secure_aggregation_group",
    "training.batch_size",
    "training.mini_batch_size",
    "training.lr",
    "training.max_seq_len",
    "training.local_epochs",
    "audit.budget_seconds",
    "audit.attacks",
    "data.holdout_fraction",
    "data.max_examples",
    "model.config.n_layer",
    "model.config.n_head",
    "model.config.n_embd",
    "model.dtype",
    "defenses.dp_sgd.noise_multiplier",
    "defenses.prune.fraction",
    "defenses.quantize.format",
    "name",
]


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(str(value), repr(value))
    return json.dumps(value)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(_KEYS), value=_VALUES)
@example(key="name", value="\x1f\x07\U00010000" * 5)  # escaped, it outgrew the terminal: the line wrapped
def test_fuzzed_scenario_values_check_out_or_fail_in_one_line(key: str, value) -> None:
    result = CliRunner().invoke(
        app,
        [
            "run",
            "--check",
            *(a for o in [*TINY_GPT2, "data.demo_size=32", f"{key}={_toml(value)}"] for a in ("--set", o)),
        ],
    )
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.output.strip().splitlines()
    if result.exit_code == 0:
        assert "check out" in lines[-1]
    else:
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("fedaudit: error: "), result.output
        assert len(lines[0]) < 300 and _control_free(lines[0])
