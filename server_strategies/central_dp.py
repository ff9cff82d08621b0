"""Flower's central DP around the auditing strategy, with the auditor where a curious server sits.

``[defenses.central_dp]`` (FedAvg only) wraps the AuditingStrategy in one of Flower's wrappers:
* ``clipping = "server"``: ``DifferentialPrivacyServerSideFixedClipping`` scales each reply's
  weight difference (reply weights minus the weights it sent) down to L2 norm ``clipping_norm``
  and writes back weights; the auditor then sees each client's clipped, un-noised update.
* ``clipping = "client"``: ``DifferentialPrivacyClientSideFixedClipping`` sends
  ``clipping_norm`` in the train config and the client's ``fixedclipping_mod`` clips the same
  difference before sending.
Either way the wrapper adds N(0, (noise_multiplier * clipping_norm / clients)^2) to every entry
of the aggregated weights only. Both wrappers go through ``GroundTruthAround``: the server-side
one clips every ArrayRecord of a reply, so the client's ``audit`` record travels around it, and
both skip a round with a failed client: replies are screened (failures and rejected updates
recorded) before they run, and a round with a failed or rejected reply is recorded as skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from fedaudit.config import Scenario
from server_strategies.strategy import AuditingStrategy


class GroundTruthAround(Strategy):
    """Carries each reply's ``audit`` record (the client's ground truth, simulation only) around a
    Flower DP wrapper that would treat it as model weights: taken out of the replies before
    ``wrapper.aggregate_train`` and put back when the wrapper hands them to ``inner``.

    Build it with ``GroundTruthAround(inner, lambda s: Wrapper(s, ...))``: the wrapper wraps
    this object's inside view (``self.inside``), which delegates to ``inner``.

    Flower's DP wrappers skip the whole aggregation when a client failed (their noise is
    calibrated to the number of sampled clients): the replies are screened here, and a round
    with a failed or rejected reply is recorded as skipped without reaching the wrapper."""

    def __init__(self, inner: AuditingStrategy, wrap: Callable[[Strategy], Strategy]) -> None:
        self.inner = inner
        self.held: dict[int, ArrayRecord] = {}
        self.inside = _Reattach(self)
        self.wrapper = wrap(self.inside)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.wrapper.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Record failed replies, hold every ``audit`` record aside, and let the DP wrapper clip
        (and later noise) what remains.

        Returns:
            The wrapper's aggregate: noised weights and the inner strategy's metrics, or
            (None, None) when the wrapper skips the round (a client failed).
        """
        replies = list(replies)
        accepted = self.inner.screen(server_round, replies)
        if len(accepted) < len(replies):  # Flower's rule, kept for rejected updates too
            bad = len(replies) - len(accepted)
            self.inner.skip(server_round, f"central DP: {bad} of {len(replies)} replies failed or were rejected")
            return None, None
        self.held = {
            id(msg): msg.content.array_records.pop("audit") for msg in accepted if "audit" in msg.content.array_records
        }
        return self.wrapper.aggregate_train(server_round, accepted)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.wrapper.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.wrapper.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.wrapper.summary()


class _Reattach(Strategy):
    """``GroundTruthAround``'s inside view: puts the held ``audit`` records back, then delegates."""

    def __init__(self, around: GroundTruthAround) -> None:
        self.around = around

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.around.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The clipped replies from the wrapper, with their ``audit`` records put back, to the
        AuditingStrategy; returns its aggregate (the wrapper then adds the noise)."""
        replies = list(replies)
        for msg in replies:
            held = self.around.held.pop(id(msg), None)
            if held is not None:
                msg.content["audit"] = held
        return self.around.inner.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.around.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.around.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.around.inner.summary()


def with_central_dp(strategy: AuditingStrategy, scenario: Scenario) -> Strategy:
    """``strategy`` inside Flower's central-DP wrapper when ``[defenses.central_dp]`` asks for it."""
    cdp = scenario.defenses.central_dp
    if cdp is None:
        return strategy
    wrapper = (
        DifferentialPrivacyClientSideFixedClipping
        if cdp.clipping == "client"
        else DifferentialPrivacyServerSideFixedClipping
    )
    return GroundTruthAround(
        strategy, lambda inside: wrapper(inside, cdp.noise_multiplier, cdp.clipping_norm, scenario.federation.clients)
    )
