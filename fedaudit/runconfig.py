"""The scenario a Flower app runs, taken from its run config (``flwr run .``).

``fedaudit run`` hands the apps its scenario directly; under ``flwr run`` they read
``[tool.flwr.app.config]``: ``scenario`` (a path, resolved against the working directory and
then the app's own folder), ``overrides`` (``KEY=VALUE`` pairs separated by ``;``) and
``output-dir``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedaudit.config import Scenario, load_scenario

APP_ROOT = Path(__file__).resolve().parent.parent


def scenario_from_run_config(run_config: Mapping[str, Any]) -> Scenario:
    path = Path(str(run_config.get("scenario", "simulations/quickstart.toml")))
    if not path.is_absolute() and not path.is_file() and (APP_ROOT / path).is_file():
        path = APP_ROOT / path
    overrides = [item.strip() for item in str(run_config.get("overrides", "")).split(";") if item.strip()]
    scenario = load_scenario(path, overrides)
    output_dir = str(run_config.get("output-dir", "")).strip()
    if output_dir:
        scenario.output.dir = output_dir
    return scenario
