"""Leakage as an estimate over an audit sample (``audit.clients`` / ``audit.rounds`` not "all").

A sampled run audits some of its client updates; the report then says what was sampled (the
sample's sentence, and N audits of M client-rounds that trained) and gives, per attack, the
exact-recovery rate with a Wilson 95% interval and the mean headline metric with a 95%
t-interval. The unit is one audit (one client update in one round): the examples of one batch
are not independent draws, so intervals over examples would be too narrow.

A run that audits everything has no sample (``sample_of`` returns None) and its report is as
before.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from pydantic import ValidationError

from fedaudit.audit.sampling import AuditSample
from fedaudit.config.audit import AuditConfig
from fedaudit.report.recovered import Counts

CONFIDENCE = 0.95
#: Headline metrics that are fractions in [0, 1]: their mean is too, so its interval is cut there.
FRACTIONS = {"rouge1", "feature_accuracy", "label_accuracy", "token_recall"}


class Audited(Protocol):
    """What an estimate reads of one audit (``fedaudit.report.data.Audit``; not imported: the
    data model imports this module)."""

    round: int
    client: str
    attack: str
    recovered: Counts | None
    headline: float | None


@dataclass
class AttackEstimate:
    """One attack's leakage over the audited sample, with 95% intervals (None: too few audits)."""

    attack: str
    scored: int
    """Audits counted: those with an exact / partial / missed verdict or scored examples."""
    exact: int
    """Audits whose every counted example came back exactly (or whose verdict was exact)."""
    rate: float | None
    rate_low: float | None
    rate_high: float | None
    metric: str | None
    values: int
    """Audits with a finite headline metric (PSNR is inf for an image recovered exactly)."""
    mean: float | None
    mean_low: float | None
    mean_high: float | None


@dataclass
class Sample:
    """What a sampled run audited, and the leakage estimated over it."""

    sentence: str
    audits: int
    """Distinct (round, client) updates audited in rounds that trained."""
    client_rounds: int
    """Client updates of the rounds that trained (a secure-aggregation group counts once),
    less the clients that failed."""
    by_list: bool
    """Clients chosen by list: not a random sample, so the estimates describe those clients."""
    attacks: list[AttackEstimate]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "confidence": CONFIDENCE}


def audit_sample(scenario: dict[str, Any]) -> AuditSample | None:
    """The run's audit sample from its resolved scenario, or None when it audits everything."""
    audit = scenario.get("audit")
    federation = scenario.get("federation")
    if not isinstance(audit, dict) or not isinstance(federation, dict):
        return None
    try:  # only the sampling keys: the report must not fail on an attack table it cannot check
        cfg = AuditConfig.model_validate({k: audit[k] for k in ("clients", "rounds", "sample_seed") if k in audit})
    except ValidationError:
        return None
    sample = AuditSample(cfg, int(federation.get("clients", 1)))
    return sample if sample.sampled else None


def sample_of(
    scenario: dict[str, Any],
    audits: Sequence[Audited],
    metrics: dict[str, str | None],
    *,
    utility: list[dict[str, Any]],
    skipped: list[dict[str, Any]],
    errors: list[dict[str, Any]],
) -> Sample | None:
    """The sample section of a run's report (None when it audited every update), from the data
    model's audits, each attack's headline metric (``metrics``, in the report's attack order),
    and its utility records, skipped rounds and client failures."""
    sample = audit_sample(scenario)
    if sample is None:
        return None
    group = scenario["federation"].get("secure_aggregation_group", 1)
    # Rounds that trained: evaluated (round 0 is the initial model) and not skipped.
    trained = {u["round"] for u in utility if u["round"] >= 1} - {e["round"] for e in skipped}
    failed = {(e["round"], e["client"]) for e in errors if e["round"] in trained}
    return Sample(
        sentence=sample.describe(),
        audits=len({(a.round, a.client) for a in audits if a.round in trained}),
        client_rounds=max(0, len(trained) * (sample.clients // max(1, group)) - len(failed)),
        by_list=isinstance(sample.audit.clients, list),
        attacks=[_estimate(name, metric, [a for a in audits if a.attack == name]) for name, metric in metrics.items()],
    )


def _estimate(name: str, metric: str | None, audits: list[Audited]) -> AttackEstimate:
    counted = [a.recovered for a in audits if a.recovered and a.recovered.total]
    exact = sum(1 for c in counted if c.exact == c.total)
    low, high = wilson(exact, len(counted))
    values = [a.headline for a in audits if a.headline is not None and math.isfinite(a.headline)]
    mean, mean_low, mean_high = mean_interval(values, bounded=metric in FRACTIONS)
    return AttackEstimate(
        attack=name,
        scored=len(counted),
        exact=exact,
        rate=exact / len(counted) if counted else None,
        rate_low=low,
        rate_high=high,
        metric=metric,
        values=len(values),
        mean=mean,
        mean_low=mean_low,
        mean_high=mean_high,
    )


def wilson(k: int, n: int) -> tuple[float | None, float | None]:
    """The Wilson 95% interval of ``k`` successes in ``n`` trials: unlike the normal
    approximation it stays inside [0, 1] and is not empty at 0 or n successes."""
    if n == 0:
        return None, None
    from scipy import stats  # imported here: ~0.8 s that a run auditing every update never needs

    ci = stats.binomtest(k, n).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return float(ci.low), float(ci.high)


def mean_interval(values: Iterable[float], bounded: bool) -> tuple[float | None, float | None, float | None]:
    """The mean of ``values`` and its 95% t-interval (``bounded``: cut to [0, 1]).

    A t-interval rather than the bootstrap: it is deterministic (no resampling seed for a report
    to depend on), costs nothing for a large sample, and the bootstrap's percentile interval is
    too narrow for the few audits a small sample has."""
    values = list(values)
    if not values:
        return None, None, None
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None, None
    from scipy import stats  # as in ``wilson``

    half = stats.t.ppf(0.5 + CONFIDENCE / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    low, high = mean - half, mean + half
    if bounded:
        low, high = max(0.0, low), min(1.0, high)
    return mean, low, high
