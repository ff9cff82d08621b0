"""The command line's manners: live progress on a terminal and none elsewhere, one line per audit
with its reason, no third-party noise, ``--version``, ``list``, attack names in ``--help``, a
``report`` that never loads torch, a ServerApp that stops waiting for missing SuperNodes, and no
"1 rounds"."""

from __future__ import annotations

import importlib.metadata
import io
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from fedaudit import __version__, catalog
from fedaudit.audit.records import AttackRecord, UtilityRecord
from fedaudit.config import Scenario
from fedaudit.report.console import REASON_CHARS, RoundConsole, audit_line
from fedaudit.report.progress import Counter, RunProgress
from fedaudit.report.summary import plural
from tests.conftest import REPO_ROOT, run_cli

#: Modules a light command must not load: each costs seconds.
HEAVY = ("torch", "transformers", "flwr", "ray", "opacus")
LEGACY_RUN = Path(__file__).resolve().parent / "fixtures" / "20261202-180135-legacy_run-4e9a"


def _cli(*args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """``fedaudit *args`` in a fresh interpreter, through pipes: its result and the heavy modules
    it loaded."""
    code = (
        "import atexit, json, sys\n"
        f"atexit.register(lambda: print('LOADED=' + json.dumps([m for m in {HEAVY!r} if m in sys.modules]), "
        "file=sys.stderr))\n"
        f"sys.argv = ['fedaudit', *{list(args)!r}]\n"
        "from fedaudit.cli import main\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    loaded = re.search(r"LOADED=(.*)", proc.stderr)
    return proc, json.loads(loaded.group(1)) if loaded else ["<the command did not finish>"]


def _flat(text: str) -> str:
    """Help text with its line wrapping undone (rich wraps at 80 columns in a pipe)."""
    return " ".join(text.replace("│", " ").split())


# -- --version, list, --help --------------------------------------------------------------------
def test_version_is_the_installed_package_version() -> None:
    proc = run_cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"fedaudit {__version__}\n"
    assert __version__ == importlib.metadata.version("fedaudit")


def test_catalog_holds_every_registered_attack_and_zoo_model() -> None:
    from fedaudit.attacks import REGISTRY
    from fedaudit.models import ZOO_NAMES

    assert list(catalog.ATTACKS) == REGISTRY.names()
    assert list(catalog.MODELS) == list(ZOO_NAMES)
    assert all(len(text) > 20 for text in [*catalog.ATTACKS.values(), *catalog.MODELS.values()])


@pytest.mark.parametrize("what", ["attacks", "models", "scenarios"])
def test_list_prints_one_line_each_without_loading_torch(what: str) -> None:
    proc, loaded = _cli("list", what)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert loaded == []
    lines = proc.stdout.splitlines()
    entries = catalog.listing(what)
    assert lines[0] == catalog.LISTINGS[what] and len(lines) == 1 + len(entries)
    for line, (name, text) in zip(lines[1:], entries.items()):
        assert line.split()[0] == name and line.endswith(text)
    if what == "scenarios":
        assert {line.split()[0] for line in lines[1:]} == {
            f"simulations/{p.name}" for p in (REPO_ROOT / "simulations").glob("*.toml")
        }
        assert all(text for text in entries.values())  # every shipped scenario says what it is


def test_a_scenario_description_is_its_first_sentence(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text("# Pruning (DLG, Sec. 5) on MNIST: one image\n# per update. Then more.\n[model]\n")
    assert catalog.describe(path) == "Pruning (DLG, Sec. 5) on MNIST: one image per update."
    path.write_text("# " + "word " * 60 + "\n")
    described = catalog.describe(path)
    assert len(described) <= catalog.DESCRIPTION_CHARS and described.endswith("...")
    path.write_text("[model]\n# not a leading comment\n")
    assert catalog.describe(path) == ""


def test_attack_help_names_every_attack() -> None:
    from fedaudit.attacks import REGISTRY

    proc = run_cli("attack", "--help")
    assert proc.returncode == 0
    assert f"Attacks: {', '.join(REGISTRY.names())}." in _flat(proc.stdout)


# -- report and import hygiene ------------------------------------------------------------------
def test_report_renders_without_torch(tmp_path: Path) -> None:
    run = shutil.copytree(LEGACY_RUN, tmp_path / LEGACY_RUN.name)
    proc, loaded = _cli("report", str(run))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert loaded == []
    assert (run / "report.md").is_file() and "Report:" in proc.stdout
    bare = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys, fedaudit.cli, fedaudit.audit; print([m for m in {HEAVY!r} if m in sys.modules])",
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert bare.stdout.strip() == "[]", bare.stderr[-2000:]


# -- the console line of an audit ---------------------------------------------------------------
def test_audit_line_shows_status_metrics_epsilon_and_a_short_clean_reason() -> None:
    reason = "a gradient match is not a proof [bold]" + " x" * 100 + "\x1b[31m"
    record = AttackRecord(
        round=1,
        client="7\x1b]0;title\x07",
        attack="ig",
        status="partial",
        reason=reason,
        metrics={"psnr": 100.0},
        seconds=1.5,
        diagnostics={"epsilon": 3.14159, "delta": 1e-5},
    )
    out = io.StringIO()
    RoundConsole(Scenario(name="t", federation={"rounds": 3}), Console(file=out, soft_wrap=True)).record(record)
    line = out.getvalue()
    assert line.count("\n") == 1 and "\x1b" not in line and "\x07" not in line
    head = "[round 1/3] client 7 ig: partial PSNR 100.00 (1.50 s, epsilon 3.14): "
    assert line.startswith(head)
    shown = line[len(head) :].rstrip("\n")
    assert shown.startswith("a gradient match is not a proof [bold]") and shown.endswith("...")
    assert len(shown) <= REASON_CHARS
    plain = AttackRecord(round=2, client="0", attack="labels", status="not_applicable", reason="no bias", seconds=0.0)
    assert "epsilon" not in audit_line(plain, 3) and audit_line(plain, 3).endswith("(0.00 s): no bias")


# -- progress: drawn on a terminal only ---------------------------------------------------------
def _feed(progress: RunProgress) -> None:
    progress.round_started(2, 4)
    progress.clients_replied(3, 4)
    progress.audits_queued(8)
    progress.record(AttackRecord(round=2, client="0", attack="dager", status="exact"))
    progress.record(UtilityRecord(round=1, metrics={}))
    progress.attack_started("1\x1b[2J", "dager", 60.0)


def test_run_progress_draws_nothing_when_output_is_not_a_terminal() -> None:
    piped = io.StringIO()
    with RunProgress(Console(file=piped), rounds=3) as progress:
        _feed(progress)
        time.sleep(0.3)
    assert piped.getvalue() == ""
    assert progress.clients == (3, 4) and progress.audits == (1, 7) and progress.rounds_done == 1
    progress.round_started(3, 4)  # round 2's audits go on while round 3 trains (overlap)
    assert progress.clients == (0, 4) and progress.audits == (1, 7)


def test_run_progress_shows_round_clients_audits_and_the_attack_against_its_budget() -> None:
    progress = RunProgress(rounds=3)
    _feed(progress)
    out = io.StringIO()
    Console(file=out, width=150).print(progress.render())
    text = out.getvalue()
    assert "Round 2/3" in text and "1/3 rounds done" in text
    assert "3/4 trained; audits: 1 done, 7 queued" in text
    assert re.search(r"dager .* client 1: \d+\.\d s of its 60 s budget", text)
    assert "\x1b" not in text  # the client id was cleaned
    progress.record(AttackRecord(round=2, client="1", attack="dager", status="exact"))
    progress.round_done(2)
    assert progress.attack is None and progress.rounds_done == 2


def test_run_progress_and_counter_draw_on_a_terminal() -> None:
    out = io.StringIO()
    terminal = Console(file=out, force_terminal=True, width=150)
    with RunProgress(terminal, rounds=3) as progress:
        _feed(progress)
        time.sleep(0.6)
    assert "Round 2/3" in out.getvalue()
    counted = io.StringIO()
    with Counter(Console(file=counted, force_terminal=True, width=150), "cells", 4) as counter:
        counter.update(1, 1)
        time.sleep(0.3)
    assert "cells" in counted.getvalue() and "1/4" in counted.getvalue() and "left" in counted.getvalue()
    piped = io.StringIO()
    with Counter(Console(file=piped), "cells", 4) as counter:
        counter.update(2, 1)
    assert piped.getvalue() == ""


def test_plural() -> None:
    assert plural(1, "round") == "1 round" and plural(3, "round") == "3 rounds"
    assert plural(1, "batch", "batches") == "1 batch" and plural(0, "batch", "batches") == "0 batches"


def test_attack_through_a_pipe_has_no_progress_and_counts_right(tmp_path: Path) -> None:
    proc = run_cli(
        "attack",
        "labels",
        "--scenario",
        "simulations/digits_quick.toml",
        "--set",
        "training.batch_size=1",
        "--batches",
        "1",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "labels on digits_quick: 1 batch of 1 example" in proc.stdout
    assert "\x1b[" not in proc.stdout + proc.stderr and "batches" not in proc.stdout


def test_sweep_prints_each_cell_and_draws_cells_done_with_the_time_left(monkeypatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedaudit import cli
    from fedaudit import sweep as sweeping

    out = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=out, force_terminal=True, width=150, soft_wrap=True))
    cells = [sweeping.Cell(i, {"training.lr": lr}) for i, lr in enumerate([0.1, 0.2, 0.3])]
    monkeypatch.setattr(sweeping, "plan", lambda *args: cells)

    def run_cells(scenario, grid, overrides, workers, out_dir, progress, resume=False):
        for done, cell in enumerate(cells, start=1):
            time.sleep(0.3)  # the display redraws meanwhile
            progress(sweeping.CellResult(cell, None, 1.0), done, len(cells))
        return tmp_path

    monkeypatch.setattr(sweeping, "sweep", run_cells)
    result = CliRunner().invoke(cli.app, ["sweep", "--grid", "training.lr=0.1,0.2,0.3"])
    assert result.exit_code == 0, result.output
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert "Sweep: 3 cells over training.lr" in text
    assert "[1/3] cell 0 (lr=0.1): done (1 s)" in text and "[3/3] cell 2 (lr=0.3): done" in text
    assert re.search(r"cells .* 1/3 .* about 0:00:0\d left", text)
