"""The SuperNodes a run needs: wait a bounded time for them, and count replies as they come.

* ``wait_for_nodes``: Flower's strategies wait forever for ``min_available_nodes``; under
  ``flwr run`` with Flower's default federation (2 simulated SuperNodes) a 4-client scenario
  would hang. The ServerApp waits ``NODE_WAIT_SECONDS`` at most, then stops with one line saying
  how many nodes the scenario needs and how to get them.
* ``CountingGrid``: a Grid whose ``send_and_receive`` reports each reply as it arrives (Flower's
  returns only once every reply is in), for the live display of ``fedaudit run``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

from fedaudit.report.progress import RunProgress

#: Seconds the ServerApp waits for the scenario's SuperNodes before it gives up: simulated nodes
#: are there at once, and deployed SuperNodes connect within seconds of starting.
NODE_WAIT_SECONDS = 30.0
POLL_SECONDS = 0.5


class NotEnoughNodes(RuntimeError):
    """Fewer SuperNodes connected than the scenario has clients."""


def wait_for_nodes(grid: Grid, needed: int, timeout: float | None = None) -> None:
    """Return once ``needed`` nodes are connected; raise ``NotEnoughNodes`` (one line) after
    ``timeout`` seconds (default ``NODE_WAIT_SECONDS``)."""
    timeout = NODE_WAIT_SECONDS if timeout is None else timeout
    deadline = time.monotonic() + timeout
    pause = 0.02  # nodes usually register within a fraction of a second: poll fast, then back off
    while (connected := len(list(grid.get_node_ids()))) < needed:
        if time.monotonic() >= deadline:
            raise NotEnoughNodes(
                f"the scenario needs {needed} SuperNodes (federation.clients = {needed}) and {connected} "
                f"connected in {timeout:g} s: simulate with flwr run . --federation-config "
                f'"num-supernodes={needed}", or start {needed} SuperNodes'
            )
        time.sleep(pause)
        pause = min(POLL_SECONDS, pause * 2)


class CountingGrid:
    """``grid`` with a ``send_and_receive`` that tells ``progress`` each reply as it arrives;
    everything else is ``grid``'s own."""

    def __init__(self, grid: Grid, progress: RunProgress) -> None:
        self._grid = grid
        self._progress = progress

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Flower's loop (push, then pull until every reply is in or ``timeout`` passes), counted."""
        pending = set(self._grid.push_messages(messages))
        sent, replies = len(pending), []
        end = time.time() + (timeout or 0.0)
        while pending and (timeout is None or time.time() < end):
            pulled = list(self._grid.pull_messages(pending))
            replies.extend(pulled)
            pending.difference_update(msg.metadata.reply_to_message_id for msg in pulled)
            if sent:  # the evaluation phase sends nothing: it leaves the round's count alone
                self._progress.clients_replied(len(replies), sent)
            if pending:
                time.sleep(getattr(self._grid, "pull_interval", 0.1))
        return replies
