"""``[audit]``: which attacks the server runs, where they run, and which updates it audits."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from fedaudit.config.base import BUDGET_MAX_SECONDS, SEED_MAX, Section

EVERY = re.compile(r"every\s+([1-9][0-9]{0,6})")


class AttackResources(Section):
    """What one audit task asks of a Ray cluster (``audit.backend = "ray"``).

    Flower's simulation engine gives every CPU of the cluster to client actors for the whole
    run, so audits are placed by the custom ``audit`` resource (a node declares how many audits
    it runs at once; a run's own Ray declares ``audit.workers``), not by CPUs."""

    num_cpus: float = Field(default=0.0, ge=0.0, le=4096)
    num_gpus: float = Field(default=0.0, ge=0.0, le=64)
    custom: dict[str, float] = Field(default_factory=lambda: {"audit": 1.0})
    """Custom Ray resources, e.g. ``{audit = 1, gpu_node = 1}``."""

    @field_validator("custom")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        for name, amount in value.items():
            if not 0 <= amount <= 1e6:
                raise ValueError(f"{name} = {amount}: must be in 0..1e6")
        return value


class AuditConfig(Section):
    """``[audit]``: which attacks the server runs and how. Each attack's own options are a table
    ``[audit.<attack name>]``, validated against that attack's ``Options`` by the attack registry
    (``fedaudit.audit.plan``), not here: the schema does not know the attacks."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    attacks: list[str] = Field(default_factory=lambda: ["embedding-rows", "labels"])
    ground_truth: bool = True
    budget_seconds: float = Field(default=120.0, gt=0.0, le=BUDGET_MAX_SECONDS)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # where attacks compute: "auto" takes CUDA when present
    max_examples_per_record: int = Field(default=64, ge=1, le=4096)
    """Examples a record keeps (texts, rows, images, side-by-side pairs): bounds a run's size."""
    backend: Literal["process", "ray"] = "process"
    """Where attacks run: "process", worker processes of the server's machine; "ray", Ray tasks
    (the run's own Ray, or the cluster ``federation.ray_address`` names). Either way ground
    truth stays in the server process, and an attack past its budget is stopped by ending its
    worker."""
    workers: int = Field(default=1, ge=1, le=1024)
    """Audits that run at once (worker processes, or Ray tasks in flight)."""
    schedule: Literal["overlap", "blocking"] = "overlap"
    """"overlap": round t + 1 trains while round t is audited; "blocking": each round waits for its audits."""
    max_pending_rounds: int = Field(default=1, ge=1, le=1000)
    """Overlap: training waits while more than this many rounds have audits still running."""
    clients: Literal["all"] | float | list[int] = "all"
    """Which clients' updates are audited: "all", a fraction (a seeded sample each round), or partition ids."""
    rounds: str | list[int] = "all"
    """Which rounds are audited: "all", "every N" (rounds 1, N + 1, 2N + 1, ...) or a list."""
    sample_seed: int = Field(default=0, ge=0, le=SEED_MAX)
    """Seed of the client sample (``clients`` a fraction)."""
    resources: dict[str, AttackResources] = Field(default_factory=dict)
    """Ray resources per attack name (``[audit.resources.dager]``); "default" for the others."""

    @field_validator("clients", mode="before")
    @classmethod
    def _clients(cls, value: Any) -> Any:
        fraction = isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 < value <= 1.0
        if value == "all" or fraction or _distinct_ids(value, 0):
            return value
        raise ValueError('must be "all", a fraction in (0, 1] or a list of distinct partition ids >= 0')

    @field_validator("rounds", mode="before")
    @classmethod
    def _rounds(cls, value: Any) -> Any:
        if value == "all" or (isinstance(value, str) and EVERY.fullmatch(value.strip())) or _distinct_ids(value, 1):
            return value
        raise ValueError('must be "all", "every N" (N >= 1) or a list of distinct rounds >= 1')

    def options(self, name: str) -> dict[str, Any]:
        """The options table ``[audit.<name>]`` as written (empty if absent)."""
        table = (self.model_extra or {}).get(name)
        return dict(table) if isinstance(table, dict) else {}

    def tables(self) -> dict[str, Any]:
        """Every key of ``[audit]`` beyond the fixed ones: attack option tables, or mistakes."""
        return dict(self.model_extra or {})

    def resources_for(self, attack: str) -> AttackResources:
        """The Ray resources of ``attack``'s audit tasks."""
        return self.resources.get(attack) or self.resources.get("default") or AttackResources()

    def audits_round(self, server_round: int) -> bool:
        """Whether ``audit.rounds`` selects ``server_round``."""
        if isinstance(self.rounds, list):
            return server_round in self.rounds
        match = EVERY.fullmatch(self.rounds.strip())
        return match is None or (server_round - 1) % int(match.group(1)) == 0


def _distinct_ids(value: Any, least: int) -> bool:
    """A non-empty list of distinct whole numbers >= ``least``."""
    if not isinstance(value, list) or not value:
        return False
    whole = all(isinstance(v, int) and not isinstance(v, bool) and v >= least for v in value)
    return whole and len(set(value)) == len(value)
