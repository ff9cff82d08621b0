"""Adversarial probes of fedaudit: bad scenarios, bad files, hostile client updates, killed runs.

Each probe runs the real thing (the ``fedaudit`` command, or the auditing strategy on a real
client's reply) and is classified by what a user would see:
* ``one line``: exit status 2 and exactly one line, ``fedaudit: error: ...``, with no control
  characters and under 300 characters;
* ``record``: the run goes on and the problem is a record (``rejected_update``,
  ``round_skipped``, an ``error`` status);
* ``ok``: valid input, accepted;
* ``LEAK``: a traceback, a hang, a lost record, a left-over process or a non-finite model.

Run: ``.venv/bin/python benchmarks/hardening_probes.py`` (about 6 minutes on 2 cores); writes
``benchmarks/results/hardening_probes.md`` and exits non-zero if any probe leaks.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
FEDAUDIT = str(Path(sys.executable).parent / "fedaudit")
COLA = REPO.parent / "shared" / "data" / "text" / "cola" / "in_domain_train.tsv"
TINY = ["model.name=gpt2-random", "model.config={n_layer=1, n_embd=64, n_head=2}", "data.demo_size=32"]
OUT = REPO / "benchmarks" / "results" / "hardening_probes.md"


@dataclass
class Probe:
    group: str
    name: str
    expect: str
    """one line | record | ok"""
    run: Callable[[], tuple[str, str]]
    """Returns (what happened: one line | record | ok | LEAK, detail)."""


def _cli(*args: str, timeout: float = 180) -> tuple[str, str]:
    try:
        done = subprocess.run([FEDAUDIT, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "LEAK", f"hang: no answer in {timeout:.0f} s"
    text = done.stdout + done.stderr
    if "Traceback" in text:
        return "LEAK", "traceback: " + text[text.index("Traceback") :][:160]
    err = done.stderr.strip().splitlines()
    if done.returncode == 0:
        return "ok", (done.stdout.strip().splitlines() or [""])[-1][:160]
    clean = all(32 <= ord(c) or c == "\t" for c in "".join(err)) and not any(
        0x7F <= ord(c) <= 0x9F for c in "".join(err)
    )
    one_line = len(err) == 1 and err[0].startswith("fedaudit: error:") and len(err[0]) <= 300
    if done.returncode == 2 and one_line and clean:
        return "one line", err[0][17:177]
    return "LEAK", f"exit {done.returncode}, {len(err)} stderr lines: {' | '.join(err)[:160]}"


def _check(*settings: str, base: tuple[str, ...] = tuple(TINY)) -> Callable[[], tuple[str, str]]:
    return lambda: _cli("run", "--check", *(a for s in (*base, *settings) for a in ("--set", s)))


def _file(name: str, content: bytes) -> Path:
    path = Path(tempfile.mkdtemp(prefix="probe-")) / name
    path.write_bytes(content)
    return path


def _npz(name: str, **arrays) -> Path:
    path = Path(tempfile.mkdtemp(prefix="probe-")) / name
    np.savez(path, **arrays)
    return path


def scenario_probes() -> list[Probe]:
    bad = {
        "n_layer = 0": "model.config={n_layer=0, n_embd=64, n_head=2}",
        "n_layer = -1": "model.config={n_layer=-1, n_embd=64, n_head=2}",
        "n_embd not divisible by n_head": "model.config={n_layer=1, n_embd=30, n_head=4}",
        "unknown architecture key": "model.config={n_layer=1, n_embd=64, n_head=2, bogus=3}",
        "seed = 2**63": "federation.seed=9223372036854775808",
        "seed = -1": "federation.seed=-1",
        "lr = inf": "training.lr=inf",
        "lr = nan": "training.lr=nan",
        "lr = 0": "training.lr=0",
        "budget = inf": "audit.budget_seconds=inf",
        "budget = 0": "audit.budget_seconds=0",
        "budget = 1e300": "audit.budget_seconds=1e300",
        "clients = 0": "federation.clients=0",
        "rounds = 0": "federation.rounds=0",
        "batch_size = 0": "training.batch_size=0",
        "secure group does not divide clients": "federation.secure_aggregation_group=3",
        "dp noise = -1": "defenses.dp_sgd.noise_multiplier=-1",
        "prune fraction = 2": "defenses.prune.fraction=2",
        "quantize format int4": 'defenses.quantize.format="int4"',
        "unknown key": "training.bogus=1",
        "unknown attack": "audit.attacks=['nope']",
        "unknown attack option": "audit.dager.bogus=1",
        "dtype float16": 'model.dtype="float16"',
        "model name that does not exist": 'model.name="no/such-model"',
        "tokenizer folder missing": 'model.tokenizer="/nonexistent"',
        "data file missing": 'data.source="/nonexistent.tsv"',
        "max_seq_len 5000 > positions": "training.max_seq_len=5000",
        "holdout_fraction = 1": "data.holdout_fraction=1.0",
        "on_bad_update = maybe": 'federation.on_bad_update="maybe"',
        "name 5000 chars of x": 'model.name="' + "x" * 5000 + '"',
        "escape sequence in a value": 'model.name="\\u001b]0;pwned\\u0007"',
        "type mismatch (list for int)": "federation.clients=[1,2]",
    }
    probes = [Probe("scenario", name, "one line", _check(value)) for name, value in bad.items()]
    probes.append(Probe("scenario", "--set without '='", "one line", lambda: _cli("run", "--check", "--set", "foo")))
    probes.append(
        Probe("scenario", "--set through a value", "one line", lambda: _cli("run", "--check", "--set", "name.x=1"))
    )
    probes.append(Probe("scenario", "the quickstart scenario", "ok", _check(base=())))
    probes.append(Probe("scenario", "huge but valid seed 2**32-1", "ok", _check("federation.seed=4294967295")))
    return probes


def file_probes() -> list[Probe]:
    files = {
        "binary scenario file": ("one line", _file("bin.toml", b"\x89PNG\r\n\x1a\n\x00\xff\xfe\xfd")),
        "invalid TOML": ("one line", _file("bad.toml", b"[federation\nclients = 2")),
        "scenario with a UTF-8 BOM": ("ok", _file("bom.toml", "\ufeff[federation]\nclients = 2\n".encode())),
        "scenario is a directory": ("one line", Path(tempfile.mkdtemp(prefix="probe-"))),
        "scenario file missing": ("one line", Path("/nonexistent/scenario.toml")),
    }
    probes = [
        Probe("files", name, expect, lambda p=path: _cli("run", "--check", str(p), *_sets(TINY)))
        for name, (expect, path) in files.items()
    ]
    data = {
        "npz that is not a zip": _file("x.npz", b"plain text"),
        "npz with object arrays": _npz("o.npz", images=np.array([object()] * 4, dtype=object), labels=np.zeros(4)),
        "npz with string labels": _npz("s.npz", images=np.zeros((4, 8, 8), np.uint8), labels=np.array(["a"] * 4)),
        "npz without labels": _npz("n.npz", images=np.zeros((4, 8, 8), np.uint8)),
        "npz with float pixels": _npz("f.npz", images=np.zeros((4, 8, 8)), labels=np.zeros(4, np.int64)),
        "empty csv table": _file("e.csv", b""),
        "ragged csv table": _file("r.csv", b"a,b,label\n1,2,0\n1,2\n"),
        "binary tsv text": _file("b.tsv", b"\x00\xff\xfe\x00" * 64),
    }
    for name, path in data.items():
        model = "mlp" if path.suffix in (".npz", ".csv") else "gpt2-random"
        settings = [f"data.source={path}", f"model.name={model}", "model.config={}"]
        if path.suffix == ".csv":
            settings.append('data.modality="table"')
        probes.append(Probe("files", name, "one line", _check(*settings, base=())))
    one_pixel = _npz("p.npz", images=np.zeros((8, 1, 1), np.uint8), labels=np.arange(8, dtype=np.int64) % 2)
    probes.append(
        Probe(
            "files",
            "1x1 images (model runs; SSIM undefined)",
            "ok",
            _check(f"data.source={one_pixel}", "model.name=cnn", "model.config={}", base=()),
        )  # fmt: skip
    )
    return probes


def _sets(settings: list[str]) -> list[str]:
    return [a for s in settings for a in ("--set", s)]


def report_probes() -> list[Probe]:
    from fedaudit.audit.records import AttackRecord, UtilityRecord
    from fedaudit.audit.store import RunStore
    from fedaudit.config import Scenario

    def run_dir(lines: list[str] | None = None, hostile: bool = False) -> Path:
        store = RunStore.create(Scenario(name="probe"), base_dir=tempfile.mkdtemp(prefix="probe-"))
        store.append(UtilityRecord(round=0, metrics={"loss": math.nan, "accuracy": 0.5}))
        text = "\x1b]0;pwned\x07\x1b[2J<script>x</script>\u2028next" if hostile else "ok"
        store.append(AttackRecord(round=1, client=text, attack="labels", status="exact", reason=text,
                                  metrics={"psnr": math.inf}, reconstruction={"labels": [text]}))  # fmt: skip
        with store.records_path.open("a") as fh:
            fh.writelines(line + "\n" for line in lines or [])
        return store.path

    def report_is_clean(path: Path) -> tuple[str, str]:
        kind, detail = _cli("report", str(path))
        text = (path / "report.md").read_text(encoding="utf-8") if (path / "report.md").exists() else ""
        if kind == "ok" and any(ord(c) < 32 and c not in "\n\t" for c in text):
            return "LEAK", "control character in report.md"
        return kind, detail

    return [
        Probe("report", "report of a missing directory", "one line", lambda: _cli("report", "/nonexistent")),
        Probe("report", "report of a dir without records", "one line",
              lambda: _cli("report", tempfile.mkdtemp(prefix="probe-"))),  # fmt: skip
        Probe("report", "torn last line", "ok", lambda: report_is_clean(run_dir(['{"type": "attack", "rou']))),
        Probe("report", "legacy 'nan' strings in metrics", "ok", lambda: report_is_clean(
            run_dir(['{"type": "utility", "round": 1, "metrics": {"loss": "nan", "accuracy": "inf"}}']))),
        Probe("report", "lines of unknown kinds and types", "ok", lambda: report_is_clean(
            run_dir(["[1, 2]", '{"type": "alien", "round": 1}', '{"type": "attack", "round": "x"}', "null"]))),
        Probe("report", "hostile client text (ESC, OSC, HTML, U+2028)", "ok",
              lambda: report_is_clean(run_dir(hostile=True))),
        Probe("report", "resume a missing directory", "one line", lambda: _cli("run", "--resume", "/nonexistent")),
        Probe("report", "resume with --set", "one line",
              lambda: _cli("run", "--resume", str(run_dir()), "--set", "training.lr=1")),
    ]  # fmt: skip


def update_probes() -> list[Probe]:
    """Hostile replies through the real AuditingStrategy, built on a real client's reply."""
    import torch

    from tests.test_hostile_updates import _round, _with, honest_round  # the tests' harness, real data

    state: dict = {}

    def harness():
        if not state:
            from flwr.supercore.task_identity import TaskIdentity

            for key in ("_run_id", "_node_id", "_task_id"):
                setattr(TaskIdentity, key, 1)
            state["honest"] = honest_round(COLA)
        return state["honest"]

    def probe(corrupt: Callable[[dict, dict], dict]) -> Callable[[], tuple[str, str]]:
        def run() -> tuple[str, str]:
            h = harness()
            weights, sent = h[2], h[3]
            try:
                new, records = _round(h, {1: corrupt(weights, sent[1][0])})
            except Exception as err:  # noqa: BLE001 - a probe reports, never raises
                return "LEAK", f"{type(err).__name__}: {err}"[:160]
            if new is not None and not all(bool(torch.isfinite(v).all()) for v in new.values()):
                return "LEAK", "non-finite global model"
            kinds = [r for r in records if r.type in ("rejected_update", "round_skipped")]
            return ("record", f"{kinds[0].type}: {kinds[0].reason}"[:160]) if kinds else ("ok", "accepted")

        return run

    first = lambda w: next(iter(w))  # noqa: E731
    cases: dict[str, Callable[[dict, dict], dict]] = {
        "all-NaN tensor": lambda w, a: {"arrays": _with(a, first(w), torch.full_like(w[first(w)], math.nan))},
        "one inf entry": lambda w, a: {"arrays": _with(a, first(w), _poke(a[first(w)], math.inf))},
        "one -inf entry": lambda w, a: {"arrays": _with(a, first(w), _poke(a[first(w)], -math.inf))},
        "wrong shape": lambda w, a: {"arrays": _with(a, first(w), torch.zeros(3, 3))},
        "empty tensor": lambda w, a: {"arrays": _with(a, first(w), torch.zeros(0))},
        "scalar tensor": lambda w, a: {"arrays": _with(a, first(w), torch.tensor(1.0))},
        "float64 tensor": lambda w, a: {"arrays": _with(a, first(w), a[first(w)].double())},
        "int64 tensor": lambda w, a: {"arrays": _with(a, first(w), a[first(w)].long())},
        "missing tensor": lambda w, a: {"arrays": _with(a, first(w), None)},
        "extra tensor with ESC in its name": lambda w, a: {"arrays": {**a, "\x1b[2Jx": torch.zeros(1)}},
        "num-examples = 0": lambda w, a: {"metrics": {"num-examples": 0}},
        "num-examples = -1": lambda w, a: {"metrics": {"num-examples": -1}},
        "num-examples = 10**12": lambda w, a: {"metrics": {"num-examples": 10**12}},
        "num-examples = 1.5": lambda w, a: {"metrics": {"num-examples": 1.5}},
        "num-examples = NaN": lambda w, a: {"metrics": {"num-examples": math.nan}},
        "num-examples missing": lambda w, a: {"metrics": {"train-loss": 0.1}},
        "metrics keys differ from others'": lambda w, a: {"metrics": {"num-examples": 2, "surprise": 1.0}},
        "no arrays record": lambda w, a: {"drop": ("arrays",)},
        "no metrics record": lambda w, a: {"drop": ("metrics",)},
        "huge finite values (1e38)": lambda w, a: {"arrays": {k: torch.full_like(v, 1e38) for k, v in a.items()}},
        "honest reply": lambda w, a: {},
    }
    expected = {"honest reply": "ok", "metrics keys differ from others'": "ok", "huge finite values (1e38)": "ok"}
    return [Probe("updates", name, expected.get(name, "record"), probe(fn)) for name, fn in cases.items()]


def _poke(tensor, value: float):
    out = tensor.clone()
    out.view(-1)[0] = value
    return out


def lifecycle_probes() -> list[Probe]:
    def stopped(sig: int, after_round: int = 1) -> Callable[[], tuple[str, str]]:
        def run() -> tuple[str, str]:
            out = Path(tempfile.mkdtemp(prefix="probe-"))
            args = ["run", *_sets([*TINY, f"data.source={COLA}", "federation.clients=2", "federation.rounds=50",
                                   f"output.dir={out}"])]  # fmt: skip
            proc = subprocess.Popen([FEDAUDIT, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and not _finished(out, after_round):
                time.sleep(0.2)
            tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
            before = _records(out)
            proc.send_signal(sig)
            proc.wait(timeout=60)
            time.sleep(10)
            left = [p.pid for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
            if left:
                return "LEAK", f"{len(left)} processes left after 10 s"
            if _records(out) < before:
                return "LEAK", "records lost"
            return "record", f"{len(tree)} processes ended; {_records(out)} records kept"

        return run

    return [
        Probe("lifecycle", "kill -9 of fedaudit run", "record", stopped(signal.SIGKILL)),
        Probe("lifecycle", "Ctrl-C (SIGINT)", "record", stopped(signal.SIGINT)),
        Probe("lifecycle", "SIGTERM", "record", stopped(signal.SIGTERM)),
    ]


def _finished(out: Path, rnd: int) -> bool:
    from fedaudit.audit.records import read_records

    runs = [p for p in out.iterdir() if (p / "records.jsonl").is_file()]
    return bool(runs) and any(r.type == "utility" and r.round >= rnd for r in read_records(runs[0]))


def _records(out: Path) -> int:
    runs = [p for p in out.iterdir() if p.is_dir()]
    return len((runs[0] / "records.jsonl").read_text().split("\n")) - 1 if runs else 0


def main() -> int:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    probes = scenario_probes() + file_probes() + report_probes()
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(lambda p: p.run(), probes))
    for extra in (update_probes(), lifecycle_probes()):
        probes += extra
        outcomes += [p.run() for p in extra]
    rows = ["| group | probe | expected | handled as | detail |", "|---|---|---|---|---|"]
    for probe, (kind, detail) in zip(probes, outcomes):
        mark = kind if kind == probe.expect else f"**{kind}** (expected {probe.expect})"
        safe = detail.replace("|", "\\|").replace("\n", " ")
        rows.append(f"| {probe.group} | {probe.name} | {probe.expect} | {mark} | {safe} |")
    leaks = sum(kind == "LEAK" for kind, _ in outcomes)
    mismatches = sum(kind != p.expect for p, (kind, _) in zip(probes, outcomes))
    summary = (
        f"{len(probes)} probes: {sum(k == 'one line' for k, _ in outcomes)} one line, "
        f"{sum(k == 'record' for k, _ in outcomes)} record, {sum(k == 'ok' for k, _ in outcomes)} ok; "
        f"tracebacks, hangs or losses: {leaks}; not as expected: {mismatches}"
    )
    OUT.write_text(f"# Hardening probes\n\n{summary}\n\n" + "\n".join(rows) + "\n", encoding="utf-8")
    print("\n".join(rows))
    print(summary)
    return 1 if leaks or mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
