"""Third-party noise is silenced by name (and only that), Flower's lines print once, and the
ServerApp neither hangs for SuperNodes that never come nor hides how many it needs."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from types import SimpleNamespace

import pytest

from fedaudit import noise
from fedaudit.models import quiet
from fedaudit.report.progress import RunProgress
from server_strategies import nodes
from tests.conftest import REPO_ROOT

HEAD_ONLY_REPORT = (
    "\x1b[1mBertForSequenceClassification LOAD REPORT\x1b[0m from: /models/minilm\n"
    "Key               | Status  | \n"
    "------------------+---------+-\n"
    "classifier.bias   | MISSING | \n"
    "classifier.weight | MISSING | \n\n"
    "Notes:\n- MISSING:\tthose params were newly initialized because missing from the checkpoint."
)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def flower_logger():
    """Flower's logger with a collecting handler; its level and filters restored afterwards."""
    logger = logging.getLogger("flwr")
    level, filters, handler = logger.level, list(logger.filters), _Collect()
    logger.addHandler(handler)
    yield logger, handler
    logger.removeHandler(handler)
    logger.setLevel(level)
    logger.filters[:] = filters


def test_flower_and_ray_notices_are_dropped_and_other_warnings_kept(flower_logger) -> None:
    logger, seen = flower_logger
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        noise.quiet_simulation()
        warnings.warn(noise.RAY_NOTICE + " visible devices env var if num_gpus=0", FutureWarning, stacklevel=1)
        warnings.warn("a FutureWarning someone can act on", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a FutureWarning someone can act on"]
    logger.warning("DEPRECATED FEATURE: The `run_simulation` function is deprecated and will be removed")
    logger.warning("fraction_evaluate is set to 0.0. Federated evaluation will be skipped.")
    logger.warning("a node failed")
    logger.info("Starting AuditingStrategy strategy:")
    assert seen.messages == ["a node failed"]


def test_only_a_head_only_load_report_is_dropped() -> None:
    head_only = quiet.ExpectedHeadReport()

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("transformers.modeling_utils", logging.WARNING, "", 0, message, None, None)

    assert not head_only.filter(record(HEAD_ONLY_REPORT))
    body_missing = HEAD_ONLY_REPORT.replace("classifier.bias  ", "bert.pooler.dense.weight")
    assert head_only.filter(record(body_missing))
    unexpected = HEAD_ONLY_REPORT.replace("classifier.bias   | MISSING", "classifier.bias   | UNEXPECTED")
    assert head_only.filter(record(unexpected))
    assert head_only.filter(record("a warning that is not a load report"))


def test_verbose_installs_no_filter(monkeypatch) -> None:
    logger = logging.getLogger(quiet.REPORT_LOGGER)
    before = list(logger.filters)
    monkeypatch.setenv(quiet.VERBOSE_ENV, "1")
    quiet.quiet()
    assert logger.filters == before


def test_flower_lines_reach_only_flowers_handler_and_flwr_run_loads_no_torch() -> None:
    import clients.app  # noqa: F401 - each app module stops Flower's logger from propagating
    import server_strategies.app  # noqa: F401

    # opacus gives the root logger a handler when imported: a Flower line reaching it printed twice.
    root = _Collect()
    logging.root.addHandler(root)
    try:
        logging.getLogger("flwr").warning("fedaudit-test-line")
    finally:
        logging.root.removeHandler(root)
    assert root.messages == []
    # `flwr run` checks the app with find_spec, which imports the package in Flower's CLI process.
    lookup = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib.util, logging, sys\n"
            "importlib.util.find_spec('server_strategies.app'); importlib.util.find_spec('clients.app')\n"
            "print('torch' in sys.modules, 'opacus' in sys.modules, logging.root.handlers)",
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert lookup.stdout.split() == ["False", "False", "[]"], lookup.stderr[-2000:]


class _Grid:
    """A grid whose connected nodes are given per call of ``get_node_ids``."""

    def __init__(self, *counts: int) -> None:
        self.counts = list(counts)
        self.pull_interval = 0.0

    def get_node_ids(self) -> list[int]:
        count = self.counts.pop(0) if len(self.counts) > 1 else self.counts[0]
        return list(range(1, count + 1))


def test_waiting_for_nodes_is_bounded_and_says_how_many(monkeypatch) -> None:
    monkeypatch.setattr(nodes, "POLL_SECONDS", 0.01)
    nodes.wait_for_nodes(_Grid(1, 2, 4), needed=4, timeout=5)  # they arrive: no error
    with pytest.raises(nodes.NotEnoughNodes) as err:
        nodes.wait_for_nodes(_Grid(2), needed=4, timeout=0.1)
    message = str(err.value)
    assert "\n" not in message and "needs 4 SuperNodes" in message and "2 connected" in message
    assert 'num-supernodes=4"' in message


def test_the_server_app_stops_with_one_line_and_no_run_directory(monkeypatch, tmp_path, flower_logger) -> None:
    from flwr.app import Context, RecordDict

    from fedaudit.config import Scenario
    from server_strategies.app import build_server_app

    _, seen = flower_logger
    monkeypatch.setattr(nodes, "NODE_WAIT_SECONDS", 0.1)
    monkeypatch.setattr(nodes, "POLL_SECONDS", 0.01)
    sc = Scenario(name="t", federation={"clients": 4}, output={"dir": str(tmp_path / "runs")})
    app = build_server_app(sc)
    with pytest.raises(SystemExit) as stop:
        app(_Grid(2), Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    assert stop.value.code == 1
    assert len(seen.messages) == 1 and seen.messages[0].startswith("fedaudit: the scenario needs 4 SuperNodes")
    assert not (tmp_path / "runs").exists()


def test_counting_grid_reports_each_reply_as_it_arrives() -> None:
    class Inner:
        pull_interval = 0.0

        def __init__(self) -> None:
            self.waiting = ["a", "b", "c"]

        def push_messages(self, messages):
            return list(self.waiting)

        def pull_messages(self, ids):
            ready, self.waiting = self.waiting[:1], self.waiting[1:]
            return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in ready]

        def get_node_ids(self):
            return [1, 2, 3]

    seen: list[tuple[int, int]] = []
    progress = RunProgress()
    progress.clients_replied = lambda replied, sent: seen.append((replied, sent))
    grid = nodes.CountingGrid(Inner(), progress)
    replies = grid.send_and_receive(["m1", "m2", "m3"], timeout=None)
    assert [r.metadata.reply_to_message_id for r in replies] == ["a", "b", "c"]
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert grid.get_node_ids() == [1, 2, 3]
    assert grid.send_and_receive([], timeout=None) == [] and seen[-1] == (3, 3)
