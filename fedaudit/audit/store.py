"""The run store: ``runs/<run-id>/`` with the resolved scenario and ``records.jsonl``.

Records are appended one JSON object per line (``records.to_json``) and flushed to disk as they
are produced, so a run killed mid-way keeps every record already written; the reader
(``records.read_records``) skips a torn last line.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

from fedaudit.audit.records import RECORDS, Record, read_records, to_json
from fedaudit.config import Scenario

SCENARIO = "scenario.toml"


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

    def append(self, record: Record) -> None:
        line = json.dumps(to_json(record), allow_nan=False, ensure_ascii=False)
        with self.records_path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def records(self) -> list[Record]:
        return read_records(self.path)


__all__ = ["RECORDS", "SCENARIO", "RunStore", "read_records"]
