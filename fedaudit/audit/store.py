"""The run store: ``runs/<run-id>/`` with the resolved scenario and ``records.jsonl``.

Records are appended one JSON object per line and flushed to disk as they are produced, so a
run killed mid-way keeps every record already written; readers skip a torn last line.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import time
from pathlib import Path
from typing import Any

from fedaudit.config import Scenario

RECORDS = "records.jsonl"
SCENARIO = "scenario.toml"


def _finite(value: Any) -> Any:
    """JSON has no inf/nan: store them as strings ("inf", "nan") rather than break the line."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class RunStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.records_path = self.path / RECORDS

    @classmethod
    def create(cls, scenario: Scenario, base_dir: str | Path | None = None) -> RunStore:
        """A new private (0700) run directory holding the resolved scenario."""
        base = Path(base_dir or scenario.output.dir).expanduser().resolve()
        base.mkdir(parents=True, exist_ok=True)
        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{scenario.name}-{secrets.token_hex(2)}"
        path = base / run_id
        path.mkdir(mode=0o700)
        path.chmod(0o700)  # mkdir's mode is filtered by the umask
        (path / SCENARIO).write_text(scenario.to_toml(), encoding="utf-8")
        (path / RECORDS).touch(mode=0o600)
        return cls(path)

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(_finite(record), allow_nan=False, ensure_ascii=False)
        with self.records_path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def records(self) -> list[dict[str, Any]]:
        return read_records(self.path)


def read_records(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every complete record of a run; a torn final line (killed while writing) is skipped."""
    path = Path(run_dir) / RECORDS
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
