"""The run store: ``runs/<run-id>/`` with the resolved scenario, ``records.jsonl`` and the
global model after each round.

Records are appended one JSON object per line (``records.to_json``) and flushed to disk as they
are produced, so a run killed mid-way keeps every record already written; the reader
(``records.read_records``) skips a torn last line. Every file is private (0600, the directory
0700): records and reports quote recovered client data.

Resuming: the global model after round t is checkpointed (safetensors, written to a temporary
file and renamed) before round t's utility record, the mark of a finished round. ``resume``
finds the last finished round k, moves the records of any later, unfinished round to
``records.discarded.jsonl`` (kept, never deleted) and returns k with its checkpoint; the two
newest checkpoints are kept, so round k's survives a kill between a checkpoint and its record.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from fedaudit.audit.records import RECORDS, Record, from_json, read_records, rounds_completed, to_json
from fedaudit.config import ConfigError, Scenario
from fedaudit.safety import write_private

if TYPE_CHECKING:  # checkpoints only: reading records and reports must not load torch
    import torch

SCENARIO = "scenario.toml"
DISCARDED = "records.discarded.jsonl"
CHECKPOINT = "global-round-{:05d}.safetensors"


class RunStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.records_path = self.path / RECORDS
        self.closed = False
        """Set when the run is being stopped: what its threads produce afterwards (clients
        failing as their processes end) is not part of the run and is not written."""

    def close(self) -> None:
        self.closed = True

    @classmethod
    def create(cls, scenario: Scenario, base_dir: str | Path | None = None) -> RunStore:
        """A new private (0700) run directory holding the resolved scenario."""
        base = Path(base_dir or scenario.output.dir).expanduser().resolve()
        base.mkdir(parents=True, exist_ok=True)
        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{scenario.name}-{secrets.token_hex(2)}"
        path = base / run_id
        path.mkdir(mode=0o700)
        path.chmod(0o700)  # mkdir's mode is filtered by the umask
        write_private(path / SCENARIO, scenario.to_toml())
        (path / RECORDS).touch(mode=0o600)
        return cls(path)

    def append(self, record: Record) -> None:
        """Write the record's images (PNG files it names), then the record, flushed to disk."""
        if self.closed:
            return
        for name, image in getattr(record, "images", {}).items():
            write_png(self.path, name, image)
        line = json.dumps(to_json(record), allow_nan=False, ensure_ascii=False)
        with self.records_path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def records(self) -> list[Record]:
        return read_records(self.path)

    # -- checkpoints and resuming -----------------------------------------------------------
    def save_checkpoint(self, server_round: int, weights: dict[str, torch.Tensor]) -> Path:
        """The global model after ``server_round``; checkpoints older than the previous round go."""
        path = self.path / CHECKPOINT.format(server_round)
        if self.closed:
            return path
        from safetensors.torch import save as safetensors_bytes

        tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
        path = write_private(self.path / CHECKPOINT.format(server_round), safetensors_bytes(tensors))
        for old in self.path.glob(CHECKPOINT.replace("{:05d}", "*")):
            if old != path and _checkpoint_round(old) < server_round - 1:
                old.unlink(missing_ok=True)
        return path

    def load_checkpoint(self, server_round: int) -> dict[str, torch.Tensor]:
        path = self.path / CHECKPOINT.format(server_round)
        if not path.is_file():
            raise ConfigError(f"--resume {self.path}: no checkpoint of round {server_round} ({path.name})")
        from safetensors.torch import load_file

        return load_file(path)

    def resume(self) -> int:
        """The last finished round k; records of later rounds move to ``records.discarded.jsonl``."""
        if not (self.path / SCENARIO).is_file() or not self.records_path.is_file():
            raise ConfigError(f"--resume {self.path}: not a run directory (no {SCENARIO} or {RECORDS})")
        for torn in self.path.glob(".*.tmp"):  # a write cut short by the kill
            torn.unlink()
        finished = rounds_completed(self.records())
        kept, dropped = [], []
        for line in self.records_path.read_text(encoding="utf-8").split("\n"):
            if line.strip():
                (kept if _round_of(line) <= finished else dropped).append(line + "\n")
        if dropped:
            with (self.path / DISCARDED).open("a", encoding="utf-8") as fh:
                fh.writelines(dropped)
            os.chmod(self.path / DISCARDED, 0o600)
            write_private(self.records_path, "".join(kept))
        return finished

    def keep_last_checkpoint(self) -> None:
        """After the last round: only the final global model stays."""
        found = sorted(self.path.glob(CHECKPOINT.replace("{:05d}", "*")), key=_checkpoint_round)
        for old in found[:-1]:
            old.unlink(missing_ok=True)


def write_png(run_dir: Path, name: str, image: np.ndarray) -> Path:
    """A C x H x W image in [0, 1] (C = 1 or 3) as an 8-bit PNG at ``run_dir / name`` (0600)."""
    path = (run_dir / name).resolve()
    if not path.is_relative_to(run_dir.resolve()):
        raise ValueError(f"image path {name!r} leaves the run directory")
    pixels = np.rint(np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0) * 255).astype(np.uint8)
    picture = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return write_private(path, buffer.getvalue())


def _checkpoint_round(path: Path) -> int:
    return int(path.name.removeprefix("global-round-").removesuffix(".safetensors"))


def _round_of(line: str) -> float:
    """The round of a stored line; a torn or unreadable line counts as unfinished (inf)."""
    try:
        record = from_json(json.loads(line))
    except (json.JSONDecodeError, TypeError, AttributeError):
        return float("inf")
    return float("inf") if record is None else record.round


__all__ = ["RECORDS", "SCENARIO", "RunStore", "read_records"]
