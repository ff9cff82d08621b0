"""What the benchmark scripts share: arguments, the device name, number formatting, and results
files that keep rows measured earlier on the same device."""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def arguments(doc: str, name: str, budget: float) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--budget", type=float, default=budget)
    parser.add_argument("--rows", nargs="*", help="row names to run (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS / name)
    return parser.parse_args()


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def earlier_rows(out: Path, device: str, rerun: list[str] | None) -> list[dict]:
    """Rows of ``out``.json measured on the same device, minus those about to be rerun."""
    path = out.with_suffix(".json")
    if not path.exists():
        return []
    kept = json.loads(path.read_text(encoding="utf-8"))
    if kept.get("device") != device:
        return []
    return [r for r in kept["rows"] if not rerun or r["name"] not in rerun]


def fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def save(results: dict, out: Path, order: list[str], render: Callable[[dict], list[str]]) -> None:
    """Sort the rows into ``order``, then write ``out``.json and ``out``.md (``render``'s lines)."""
    results["rows"].sort(key=lambda r: order.index(r["name"]))
    out.with_suffix(".json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    out.with_suffix(".md").write_text("\n".join(render(results)) + "\n", encoding="utf-8")
