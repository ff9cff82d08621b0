"""Scale benchmark (issue 16): what auditing costs a federation, overlap against blocking audits,
and peak memory per process.

    python benchmarks/scale.py [--only overhead|schedule|memory ...] [--reps 3] [--schedule-reps 1]
        [--variant "blocking, 1 worker" ...] [--tree DIR] [--set KEY=VALUE ...]
        [--baseline KEY=VALUE ...] [--baseline-tree DIR]

Sections (all by default; ``--only`` picks some; earlier results, and other commits', are kept):

* ``overhead``: plain Flower FedAvg against ``fedaudit run`` with ``audit.attacks = []``, 20 and
  100 clients x 3 rounds, a tiny model (digits, an MLP with one hidden layer of 32, FedAvg),
  ``--reps`` repetitions, interleaved (plain and fedaudit side by side, their order swapped
  every repetition). Both go through ``fedaudit.cli._simulate``: the same ClientApp, the same
  ``run_simulation`` call and backend_config; the plain one's ServerApp is Flower's ``FedAvg``
  started the way fedaudit starts it (same arguments, initial weights and train config) with no
  AuditingStrategy, auditor, records, evaluation, checkpoints or reports. Plain runs without
  ground truth (Flower's FedAvg refuses a reply with a second ArrayRecord). Target: < 3 %.
* ``schedule``: DAGER on GPT-2 (2 blocks, width 768, causal LM: in a 2-block classifier DAGER is
  not applicable), B = 8, FedSGD, CoLA, 16 clients x 3 rounds, ``audit.schedule`` overlap and
  blocking with ``audit.workers`` 1 and 2 (``--variant`` reruns some): the federation's wall
  time and the share of it the clients waited (a round's last reply to the next round's
  training messages), ``--schedule-reps`` runs each.
* ``memory``: the same DAGER run, peak resident memory per process (the server, each audit
  worker, each Flower client actor, Ray's own processes), sampled every 0.5 s over the run's
  whole process tree, for the single-process run (``--baseline`` overrides on
  ``--baseline-tree``, e.g. the commit before the audit pool) and the pool (overlap, 2 workers;
  taken from the schedule section when it ran in the same invocation).

Times come from the child: the ``run_simulation`` call, and Flower's in-memory grid (when each
round's training messages went out and its replies came in). Every run is a fresh process
(``--child``) leading its own process group, ended after it; a run that stops early or hangs
stops the benchmark. ``--tree`` runs another checkout's code (e.g. a ``git archive`` of a
commit, so the working tree can change meanwhile); results name the commit they measured.
Writes benchmarks/results/scale.json and scale.md after every section. One full invocation on
2 shared cores: about 8 min (overhead, 3 repetitions) + 25 min (schedule, 4 DAGER runs) + 5 min
(memory's single-process run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "results" / "scale"
COLA = REPO.parent / "shared" / "data" / "text" / "cola" / "in_domain_train.tsv"
SECTIONS = ("overhead", "schedule", "memory")
SAMPLE_SECONDS = 0.5
PATCHED = "+schedule-fix"  # an exported tree's name: the commit with the fix the notes describe
#: Seconds a run may take before it is taken for a hang: the tiny runs, the DAGER runs.
CHILD_TIMEOUT = {False: 300, True: 1800}

TINY = (
    "simulations/digits_quick.toml",
    [
        "model.config={hidden=[32]}",
        "federation.rounds=3",
        "training.mode=fedavg",
        "training.batch_size=8",
        "training.mini_batch_size=8",
        "audit.attacks=[]",
    ],
)
OVERHEAD_CLIENTS = (20, 100)
DAGER = (
    "simulations/gpt2_dager.toml",
    [
        f"data.source={COLA}",
        "model.config={n_layer=2, n_embd=768, n_head=12}",
        "model.task=causal-lm",
        "federation.clients=16",
        "federation.rounds=3",
        "training.mode=fedsgd",
        "training.batch_size=8",
        'audit.attacks=["dager"]',
    ],
)
SCHEDULES = {
    f"{schedule}, {workers} worker{'s' * (workers > 1)}": [f"audit.schedule={schedule}", f"audit.workers={workers}"]
    for schedule in ("blocking", "overlap")
    for workers in (1, 2)
}
POOL = "overlap, 2 workers"


# -- the child: one federation in this process --------------------------------------------------
def child(spec: dict) -> None:
    """Run one federation as ``fedaudit run`` does (``variant`` fedaudit) or with Flower's plain
    FedAvg ServerApp (``variant`` plain); write its timings to ``spec["out"]`` and exit."""
    import fedaudit.cli as cli  # Flower's and Ray's environment defaults, as for `fedaudit run`
    from fedaudit.audit.store import RunStore
    from fedaudit.federation import federated_data as federation_data
    from fedaudit.federation import prepare
    from fedaudit.scenario import load_scenario

    started = time.perf_counter()
    sc = load_scenario(spec["scenario"], spec["overrides"])
    timers: dict[str, list[float]] = {}
    events: list[tuple[str, float, int]] = []
    _probe_grid(events)
    _time_calls(timers)
    if spec["variant"] == "plain":
        import server_strategies.app

        server_strategies.app.build_server_app = _plain_server_app
        federation_data(sc)  # loaded before the clock starts, as prepare() does for fedaudit
        store = None
    else:
        prepare(sc)
        store = RunStore.create(sc)
    begin = time.perf_counter()
    stopped = cli._simulate(sc, store, False, False)
    end = time.perf_counter()
    finish = None
    if store is not None:
        try:
            cli._finish(sc, store, stopped)
        except BaseException as err:  # noqa: BLE001 - typer.Exit on an incomplete run: recorded
            stopped = stopped or f"finish: {type(err).__name__}: {err}"
        finish = time.perf_counter() - end
    result = {
        "federation_s": end - begin,
        "before_s": begin - started,
        "finish_s": finish,
        "stopped": stopped,
        "timers": {k: [sum(v), len(v)] for k, v in timers.items()},
        "rounds": _rounds(events, begin, end),
        "run_dir": None if store is None else str(store.path),
    }
    Path(spec["out"]).write_text(json.dumps(result), encoding="utf-8")
    sys.stdout.flush()
    os._exit(0)  # as `fedaudit run` does: Flower's threads are not waited for


def _plain_server_app(scenario, store=None, resume=False, progress=None):
    """Flower's FedAvg, started as ``run_audited_federation`` starts its strategy, alone."""
    from flwr.app import ArrayRecord, ConfigRecord
    from flwr.serverapp import ServerApp
    from flwr.serverapp.strategy import FedAvg

    from fedaudit import federation

    app = ServerApp()

    @app.main()
    def main(grid, context) -> None:
        data = federation.federated_data(scenario)
        initial = federation.build_global_model(scenario, data.examples).trainable_state()
        n, t = scenario.federation.clients, scenario.training
        keys = {"mode": "mode", "lr": "lr", "local-epochs": "local_epochs", "batch-size": "batch_size"}
        config = {key: getattr(t, name) for key, name in keys.items()} | {"mini-batch-size": t.mini_batch_size}
        FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n).start(
            grid=grid,
            initial_arrays=ArrayRecord.from_torch_state_dict(initial),
            num_rounds=scenario.federation.rounds,
            train_config=ConfigRecord(config),
        )

    return app


def _probe_grid(events: list[tuple[str, float, int]]) -> None:
    """Note when training messages are pushed and when replies are pulled (Flower's in-memory
    grid, under fedaudit's counting grid too): ("push", time, n) and ("reply", time, n)."""
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    push, pull = InMemoryGrid.push_messages, InMemoryGrid.pull_messages

    def push_messages(self, messages):
        messages = list(messages)
        train = sum(m.metadata.message_type == "train" for m in messages)
        if train:
            events.append(("push", time.perf_counter(), train))
        return push(self, messages)

    def pull_messages(self, message_ids):
        replies = list(pull(self, message_ids))
        train = sum(m.metadata.message_type == "train" for m in replies)
        if train:
            events.append(("reply", time.perf_counter(), train))
        return replies

    InMemoryGrid.push_messages, InMemoryGrid.pull_messages = push_messages, pull_messages


def _rounds(events: list[tuple[str, float, int]], begin: float, end: float) -> list[dict]:
    """Per round: seconds from the federation's start to its training messages, the seconds
    until its last reply, and the seconds from then to the next round's messages (or the end)."""
    rounds: list[dict] = []
    for kind, at, _ in events:
        if kind == "push":
            rounds.append({"push": at - begin, "last_reply": at - begin})
        elif rounds:
            rounds[-1]["last_reply"] = at - begin
    for r, following in zip(rounds, [*(x["push"] for x in rounds[1:]), end - begin]):
        r["train_s"] = r["last_reply"] - r["push"]
        r["gap_s"] = following - r["last_reply"]
    return rounds


def _time_calls(timers: dict[str, list[float]]) -> None:
    """Wrap the server's per-round work (where it exists in the tree under test) to sum its seconds."""
    import importlib

    targets = {
        "wait_for_nodes": ("server_strategies.app", None, "wait_for_nodes"),
        "holdout evaluation": ("server_strategies.app", None, "evaluate"),
        "report writes": ("server_strategies.app", None, "write_report"),
        "checkpoints": ("fedaudit.audit.store", "RunStore", "save_checkpoint"),
        "record writes": ("fedaudit.audit.store", "RunStore", "append"),
        "AuditingStrategy.configure_train": ("server_strategies.strategy", "AuditingStrategy", "configure_train"),
        "AuditingStrategy.aggregate_train": ("server_strategies.strategy", "AuditingStrategy", "aggregate_train"),
        "FedAvg.configure_train": ("flwr.serverapp.strategy", "FedAvg", "configure_train"),
        "FedAvg.aggregate_train": ("flwr.serverapp.strategy", "FedAvg", "aggregate_train"),
    }
    for label, (module_name, owner_name, name) in targets.items():
        try:
            module = importlib.import_module(module_name)
            owner = getattr(module, owner_name) if owner_name else module
            original = getattr(owner, name)
        except (ImportError, AttributeError):
            continue
        setattr(owner, name, _timed(original, timers.setdefault(label, [])))


def _timed(function, seconds: list[float]):
    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - start)

    return timed


# -- the parent: runs children, samples their memory ---------------------------------------------
class TreeMemory:
    """Peak resident memory of a process and its descendants, sampled every ``SAMPLE_SECONDS``:
    per process (labelled from its command line) and the tree's total at one instant. A process
    seen in one sample only (e.g. a fork caught before its exec, which shows the server's pages)
    is left out."""

    def __init__(self, pid: int) -> None:
        import psutil

        self._psutil, self.root = psutil, pid
        self.seen: dict[int, dict] = {}
        self.instants: list[dict[int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        psutil = self._psutil
        while not self._stop.wait(SAMPLE_SECONDS):
            try:
                root = psutil.Process(self.root)
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                return
            instant = {}
            for proc in procs:
                try:
                    rss = proc.memory_info().rss / 2**20
                    label, rank = self._label(proc)
                except psutil.Error:
                    continue
                instant[proc.pid] = rss
                entry = self.seen.setdefault(proc.pid, {"label": label, "rank": rank, "peak_mb": 0.0, "samples": 0})
                entry["peak_mb"], entry["samples"] = max(entry["peak_mb"], rss), entry["samples"] + 1
                if rank >= entry["rank"]:  # a Ray worker is "IDLE" before it becomes an actor
                    entry["label"], entry["rank"] = label, rank
            self.instants.append(instant)

    def _label(self, proc) -> tuple[str, int]:
        if proc.pid == self.root:
            return "server (driver)", 3
        line = " ".join(proc.cmdline()).strip()
        if "ClientAppActor" in line:
            return "Flower client actor", 3
        if line.startswith("ray::"):
            title = line.split()[0].removeprefix("ray::")
            if title.endswith("Agent"):  # Ray's dashboard and runtime-env agents
                return "Ray system", 0
            return f"Ray worker ({title})", 1 if title == "IDLE" else 2
        if "default_worker.py" in line:
            return "Ray worker (starting)", 0
        if "--child" in line:
            return "forked from the server", 2
        if "forkserver" in line:  # the fork server, then the workers it forks
            return ("audit fork server", 1) if proc.ppid() == self.root else ("audit worker (process)", 3)
        if "multiprocessing" in line or "spawn_main" in line:
            return ("multiprocessing helper", 1) if "resource_tracker" in line else ("audit worker (process)", 3)
        return "Ray system" if "/ray/" in line else "other", 0

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        kept = {pid: e for pid, e in self.seen.items() if e["samples"] > 1}
        groups: dict[str, dict] = {}
        for entry in kept.values():
            g = groups.setdefault(entry["label"], {"processes": 0, "max_mb": 0.0, "sum_mb": 0.0})
            g["processes"] += 1
            g["max_mb"] = max(g["max_mb"], entry["peak_mb"])
            g["sum_mb"] += entry["peak_mb"]
        total = max((sum(mb for pid, mb in i.items() if pid in kept) for i in self.instants), default=0.0)
        return {"tree_peak_mb": total, "by_kind": groups}


def run_child(variant: str, scenario: str, overrides: list[str], args, memory: bool, tree: Path | None = None) -> dict:
    """One federation in a fresh process (its own process group, ended afterwards); its run
    directory goes under ``args.runs``. Stops the benchmark if the run did not finish, or did not
    end within ``CHILD_TIMEOUT`` (a hang)."""
    import psutil

    tree, log = tree or args.tree, args.log
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out = Path(fh.name)
    # Flower's FedAvg refuses replies with a second ArrayRecord: plain clients send no ground truth.
    truth = ["audit.ground_truth=false"] if variant == "plain" else []
    placed = [*overrides, *truth, f"output.dir={args.runs}"]
    spec = {"variant": variant, "scenario": scenario, "overrides": placed, "out": str(out)}
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with log.open("a", encoding="utf-8") as sink:
        sink.write(f"\n=== {variant} {scenario} {' '.join(overrides)}\n")
        sink.flush()
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
            cwd=tree,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        sampler = TreeMemory(proc.pid) if memory else None
        try:
            code = proc.wait(timeout=CHILD_TIMEOUT[memory])
        except subprocess.TimeoutExpired:
            code = None
    wall = time.perf_counter() - start
    mem = sampler.stop() if sampler else None
    for p in psutil.process_iter():  # what the run left in its group
        try:
            if os.getpgid(p.pid) == proc.pid:
                p.kill()
        except (ProcessLookupError, psutil.Error):
            continue
    if code is None:
        raise SystemExit(f"a run did not end within {CHILD_TIMEOUT[memory]} s (a hang?): see {log}")
    result = json.loads(out.read_text(encoding="utf-8")) if out.stat().st_size else {"stopped": f"exit {code}"}
    out.unlink()
    result.update(variant=variant, overrides=overrides, process_s=wall, exit=code, memory=mem)
    print(
        f"  {variant:<30} federation {result.get('federation_s', float('nan')):7.2f} s, "
        f"process {wall:6.1f} s{'' if not result.get('stopped') else ', STOPPED: ' + str(result['stopped'])}",
        flush=True,
    )
    if code != 0 or result.get("stopped") or "federation_s" not in result:
        raise SystemExit(f"a run did not finish ({result.get('stopped') or f'exit {code}'}): see {log}")
    return result


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def overhead(args) -> dict:
    scenario, base = TINY
    runs: dict[int, dict[str, list[dict]]] = {n: {"plain": [], "fedaudit": []} for n in OVERHEAD_CLIENTS}
    print("warm-up (not counted): plain, 20 clients, 1 round", flush=True)
    run_child("plain", scenario, [*base, "federation.clients=20", "federation.rounds=1"], args, False)
    for rep in range(args.reps):
        for n in OVERHEAD_CLIENTS:
            order = ("plain", "fedaudit") if rep % 2 == 0 else ("fedaudit", "plain")
            for variant in order:
                overrides = [*base, f"federation.clients={n}", *args.set]
                print(f"rep {rep + 1}/{args.reps}, {n} clients:", flush=True)
                runs[n][variant].append(run_child(variant, scenario, overrides, args, False))
    rows = []
    for n, by in runs.items():
        fed = {v: [r["federation_s"] for r in rs] for v, rs in by.items()}
        proc = {v: [r["process_s"] for r in rs] for v, rs in by.items()}
        phases = {v: {k: spread([_phases(r)[k] for r in rs]) for k in PHASES} for v, rs in by.items()}
        added = sum(phases["fedaudit"][k]["median"] - phases["plain"][k]["median"] for k in SERVER_PHASES)
        plain = statistics.median(fed["plain"])
        rows.append(
            {
                "clients": n,
                "plain": spread(fed["plain"]),
                "fedaudit": spread(fed["fedaudit"]),
                "overhead": statistics.median(fed["fedaudit"]) / plain - 1,
                "paired_overhead": spread([a / b - 1 for a, b in zip(fed["fedaudit"], fed["plain"])]),
                "server_added_s": added,
                "server_overhead": added / plain,
                "plain_process": spread(proc["plain"]),
                "fedaudit_process": spread(proc["fedaudit"]),
                "phases": phases,
                "fedaudit_timers": _mean_timers(by["fedaudit"]),
                "plain_timers": _mean_timers(by["plain"]),
                "runs": {v: [{k: r[k] for k in RAW} for r in rs] for v, rs in by.items()},
            }
        )
    return {"scenario": scenario, "overrides": base, "reps": args.reps, "rows": rows}


#: A federation's phases, from the grid's events: start to round 1's training messages; clients
#: training (every round's messages to its last reply; round 1 includes starting the actors);
#: the gaps between rounds (the server alone); the last reply to the end (Ray's shutdown too).
PHASES = ("start", "training", "gaps", "tail")
SERVER_PHASES = ("start", "gaps", "tail")
RAW = ("federation_s", "process_s", "before_s", "finish_s", "rounds", "timers")


def _phases(run: dict) -> dict[str, float]:
    rounds = run["rounds"]
    return {
        "start": rounds[0]["push"],
        "training": sum(r["train_s"] for r in rounds),
        "gaps": sum(r["gap_s"] for r in rounds[:-1]),
        "tail": rounds[-1]["gap_s"],
    }


def _mean_timers(runs: list[dict]) -> dict:
    labels = {k for r in runs for k in r["timers"]}
    return {k: statistics.mean(r["timers"].get(k, [0.0, 0])[0] for r in runs) for k in sorted(labels)}


def dager_run(label: str, overrides: list[str], args, cache: dict, tree: Path | None = None) -> dict:
    tree = tree or args.tree
    key = (label, tuple(overrides), tree)
    if key not in cache:
        scenario, base = DAGER
        result = run_child("fedaudit", scenario, [*base, *overrides, *args.set], args, True, tree)
        rounds = result.get("rounds", [])
        waited = sum(r["gap_s"] for r in rounds[:-1])
        result.update(
            label=label,
            commit=commit_of(tree),
            clients_waited_s=waited,
            waited_share=waited / result["federation_s"] if result.get("federation_s") else None,
            tail_s=rounds[-1]["gap_s"] if rounds else None,
            audit_status=_statuses(result.get("run_dir")),
        )
        cache[key] = result
    return cache[key]


def _statuses(run_dir: str | None) -> dict:
    counts: dict[str, int] = {}
    if run_dir and (Path(run_dir) / "records.jsonl").is_file():
        for line in (Path(run_dir) / "records.jsonl").read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            kind = record["status"] if record.get("type") == "attack" else record.get("type")
            if kind != "utility":  # client errors, rejected updates and skipped rounds count too
                counts[kind] = counts.get(kind, 0) + 1
    return counts


def schedule(args, cache: dict) -> dict:
    rows = []
    chosen = [name for name in SCHEDULES if not args.variant or name in args.variant]
    for rep in range(args.schedule_reps):
        names = chosen if rep % 2 == 0 else chosen[::-1]
        for name in names:
            print(f"schedule rep {rep + 1}/{args.schedule_reps}: {name}", flush=True)
            rows.append(dager_run(f"{name} #{rep + 1}", SCHEDULES[name], args, cache))
    return {"scenario": DAGER[0], "overrides": DAGER[1], "reps": args.schedule_reps, "rows": rows}


def memory(args, cache: dict) -> dict:
    tree = args.baseline_tree or args.tree
    print(f"memory: single process ({commit_of(tree)}, {' '.join(args.baseline) or 'defaults'})", flush=True)
    rows = [dager_run("single process", args.baseline, args, cache, tree)]
    pool = next((r for (label, _, t), r in cache.items() if label.startswith(POOL) and t == args.tree), None)
    if pool is None:
        print(f"memory: {POOL}", flush=True)
        pool = dager_run(f"{POOL} #1", SCHEDULES[POOL], args, cache)
    rows.append(pool)
    return {"scenario": DAGER[0], "overrides": DAGER[1], "rows": rows}


# -- results --------------------------------------------------------------------------------------
def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    threads = torch.get_num_threads()
    return f"CPU ({cpu}, {os.cpu_count()} cores, {threads} torch threads), Python {platform.python_version()}"


def commit_of(tree: Path) -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True)
    if done.returncode == 0:
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=tree, capture_output=True, text=True).stdout
        return done.stdout.strip() + (" + uncommitted changes" if dirty.strip() else "")
    return tree.name  # an exported tree (git archive) named after its commit


def ms(stats: dict, scale: float = 1.0, digits: int = 2) -> str:
    s = {k: v * scale for k, v in stats.items() if k != "n"}
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def _started(run: dict) -> str:
    """When a run started, from its run directory's name (runs/<YYYYmmdd-HHMMSS>-<name>-<hex>)."""
    stamp = Path(run.get("run_dir") or "").name.split("-")[1:2]
    return f"started {stamp[0][:2]}:{stamp[0][2:4]}" if stamp and len(stamp[0]) == 6 else "start unknown"


def markdown(results: dict) -> list[str]:
    lines = [f"# Scale: auditing overhead, overlap vs blocking, memory per process ({results['device']})", ""]
    lines += ["`python benchmarks/scale.py` (sections: `--only overhead|schedule|memory`). One run at a time on"]
    lines += [
        "2 shared cores: timings are noisy; variants are interleaved in one invocation and compared side by side.",
        "Code: the commit each section ran (an exported tree, `--tree`).",
        "",
    ]
    commits = {c for section in SECTIONS for c in results.get(section, {})}
    if any(c.endswith(PATCHED) for c in commits):
        lines += [
            f"`COMMIT{PATCHED}`: that commit with one line added to `AuditSchedule.add` (return at once when "
            "given no futures; c8e1243 later committed the same line): without it `audit.attacks = []` hangs "
            "the ServerApp. A round "
            "with no audits keeps a count of 0 in the schedule that nothing removes, so its utility record "
            "is never written and back-pressure blocks for good (overlap: round `max_pending_rounds + 2`; "
            "blocking: round 1).",
            "",
        ]
    for o in results.get("overhead", {}).values():
        lines += [
            f"## Auditing overhead: plain Flower FedAvg vs fedaudit, `audit.attacks = []` (code: {o['commit']})",
            "",
            f"`{o['scenario']}` with `{'`, `'.join(o['overrides'])}`; {o['reps']} repetitions each, interleaved "
            "(order swapped every repetition), after one uncounted warm-up run. Federation = the "
            "`run_simulation` call (Ray's start to its end); process = the whole child process (imports, "
            "`prepare`, the final report). Median [min-max]; paired = each repetition's fedaudit run "
            "against the plain run beside it. Server-side added = the medians' differences in the "
            "phases where only the server works (start to round 1's messages, the gaps between rounds, "
            "the last reply to the end), against plain's median federation: the same work every run, so "
            "far less noisy than the wall times, whose spread here is larger than the target.",
            "",
            "| clients | plain federation s | fedaudit federation s | wall overhead (medians) | paired "
            "| server-side added s | server-side overhead | target < 3 % | plain process s | fedaudit process s |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in o["rows"]:
            lines.append(
                f"| {r['clients']} | {ms(r['plain'])} | {ms(r['fedaudit'])} | {100 * r['overhead']:+.1f} % "
                f"| {ms(r['paired_overhead'], 100, 1)} % | {r['server_added_s']:.2f} "
                f"| {100 * r['server_overhead']:+.1f} % | {'met' if r['server_overhead'] < 0.03 else 'not met'} "
                f"| {ms(r['plain_process'], digits=1)} | {ms(r['fedaudit_process'], digits=1)} |"
            )
        lines += ["", "Phases (seconds, median [min-max]):", "", "| clients | run | " + " | ".join(PHASES) + " |"]
        lines += ["|---" * (2 + len(PHASES)) + "|"]
        for r in o["rows"]:
            for v, ph in r["phases"].items():
                lines.append(f"| {r['clients']} | {v} | " + " | ".join(ms(ph[k]) for k in PHASES) + " |")
        timers = sorted(o["rows"][0]["fedaudit_timers"])
        lines += ["", "Where the fedaudit server's time went (seconds per run, mean; inside the federation):", ""]
        lines += ["| clients | " + " | ".join(timers) + " |", "|---" * (1 + len(timers)) + "|"]
        for r in o["rows"]:
            lines.append(f"| {r['clients']} | " + " | ".join(f"{r['fedaudit_timers'][k]:.3f}" for k in timers) + " |")
        lines.append("")
    kinds = (("schedule", "Overlap vs blocking"), ("memory", "Peak memory per process"))
    for title, s in [(title, s) for key, title in kinds for s in results.get(key, {}).values()]:
        lines += [
            f"## {title}: DAGER, GPT-2 2 blocks, B = 8, 16 clients x 3 rounds (code: {s['commit']})",
            "",
            f"`{s['scenario']}` with `{'`, `'.join(s['overrides'])}`. Clients waited = the sum over rounds "
            "1-2 of a round's last reply to the next round's training messages (the server busy, no "
            "client training); tail = last reply to the federation's end. Memory: peak RSS per process, "
            f"sampled every {SAMPLE_SECONDS} s over the run's process tree (RSS counts shared pages in "
            "each process, so the tree total over-counts). Each row is one run, started at the time shown: "
            "rows of different times were not interleaved, and the machine's other work varied between them.",
            "",
            "| run | overrides | federation s | per round: training / gap s | clients waited s | share | tail s "
            "| audits | tree peak MB | peak MB by process kind (count x max) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in s["rows"]:
            mem = r.get("memory") or {"tree_peak_mb": 0, "by_kind": {}}
            kinds = "; ".join(f"{k}: {g['processes']} x {g['max_mb']:.0f}" for k, g in sorted(mem["by_kind"].items()))
            share = "-" if r.get("waited_share") is None else f"{100 * r['waited_share']:.0f} %"
            per_round = ", ".join(f"{x['train_s']:.0f} / {x['gap_s']:.0f}" for x in r.get("rounds", []))
            lines.append(
                f"| {r['label']} ({r.get('commit', '?')}, {_started(r)}) "
                f"| `{' '.join(r['overrides'][len(DAGER[1]) :]) or '-'}` "
                f"| {r.get('federation_s', float('nan')):.1f} | {per_round} | {r['clients_waited_s']:.1f} | {share} "
                f"| {r['tail_s'] or 0:.1f} | {r['audit_status']} | {mem['tree_peak_mb']:.0f} | {kinds} |"
            )
        lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--only", action="append", choices=SECTIONS, help="run this section (repeatable)")
    parser.add_argument("--reps", type=int, default=3, help="overhead repetitions per variant and size")
    parser.add_argument("--schedule-reps", type=int, default=1, help="DAGER repetitions per schedule variant")
    parser.add_argument("--variant", action="append", choices=SCHEDULES, help="schedule: run only this one")
    parser.add_argument("--tree", type=Path, default=REPO, help="the code to run (a checkout or exported tree)")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE added to every run")
    parser.add_argument("--baseline", action="append", default=[], help="KEY=VALUE of the single-process run")
    parser.add_argument("--baseline-tree", type=Path, help="the single-process run's code (default: --tree)")
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    args.tree = args.tree.resolve()
    args.baseline_tree = args.baseline_tree.resolve() if args.baseline_tree else None
    sections = args.only or list(SECTIONS)
    path = OUT.with_suffix(".json")
    results = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    device = machine()
    if results.get("device") != device:
        results = {"device": device}
    args.log = Path(tempfile.gettempdir()) / "fedaudit-scale.log"
    print(f"{device}; code: {args.tree} ({commit_of(args.tree)}); child logs: {args.log}", flush=True)
    cache: dict = {}
    for name in sections:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="fedaudit-scale-") as runs:
            args.runs = runs
            if name == "overhead":
                section = overhead(args)
            elif name == "schedule":
                section = schedule(args, cache)
            else:
                section = memory(args, cache)
        commit = commit_of(args.tree)
        section.update(commit=commit, seconds=time.perf_counter() - start, extra_set=args.set)
        earlier = results.setdefault(name, {}).get(commit, {}).get("rows", [])
        if name == "schedule" and args.variant:  # the variants not rerun are kept
            rerun = {r["label"] for r in section["rows"]}
            section["rows"] = [r for r in earlier if r["label"] not in rerun] + section["rows"]
            section["rows"].sort(key=lambda r: list(SCHEDULES).index(r["label"].split(" #")[0]))
        results[name][commit] = section  # other commits' results are kept
        path.write_text(json.dumps(results, indent=2), encoding="utf-8")
        OUT.with_suffix(".md").write_text("\n".join(markdown(results)) + "\n", encoding="utf-8")
        print("\n".join(markdown({"device": device, name: {commit: section}})), flush=True)
    print(f"wrote {OUT.with_suffix('.md')} and .json", flush=True)


if __name__ == "__main__":
    main()
