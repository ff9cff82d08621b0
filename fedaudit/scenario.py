"""Loading a scenario for a run: the schema (``fedaudit.config``) and the attacks it names
(checked against the attack registry by ``fedaudit.audit.plan``), in one call.

``fedaudit run`` hands the Flower apps its scenario directly; under ``flwr run`` they read it from
``[tool.flwr.app.config]``: ``scenario`` (a path, resolved against the working directory and
then the app's own folder), ``overrides`` (``KEY=VALUE`` pairs separated by ``;``) and
``output-dir``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedaudit.audit.plan import check_audit
from fedaudit.config import Scenario, read_scenario

APP_ROOT = Path(__file__).resolve().parent.parent


def load_scenario(path: str | Path | None = None, overrides: list[str] | None = None) -> Scenario:
    """Read a scenario file (default: simulations/quickstart.toml), apply ``--set`` overrides and
    validate everything, attacks and their options included; ``ConfigError`` names the bad key."""
    scenario = read_scenario(path, overrides)
    check_audit(scenario.audit)
    return scenario


def scenario_from_run_config(run_config: Mapping[str, Any]) -> Scenario:
    """The scenario a Flower app runs under ``flwr run``, from its run config."""
    path = Path(str(run_config.get("scenario", "simulations/quickstart.toml")))
    if not path.is_absolute() and not path.is_file() and (APP_ROOT / path).is_file():
        path = APP_ROOT / path
    overrides = [item.strip() for item in str(run_config.get("overrides", "")).split(";") if item.strip()]
    scenario = load_scenario(path, overrides)
    output_dir = str(run_config.get("output-dir", "")).strip()
    if output_dir:
        scenario.output.dir = output_dir
    ray_address = str(run_config.get("ray-address", "")).strip()
    if ray_address:  # the audit tasks join that Ray cluster (``audit.backend = "ray"``)
        scenario.federation.ray_address = ray_address
    return scenario
