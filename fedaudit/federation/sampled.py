"""Client updates without a federation: ``fedaudit attack`` and the benchmarks.

``sampled_updates`` computes K updates from the initial global model exactly as a client would,
one per sampled batch, with the server's Observation and the batch's GroundTruth;
``evaluate_attack`` runs one attack on them and summarizes the records.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fedaudit.attacks.base import Observation
from fedaudit.audit.auditor import Auditor
from fedaudit.audit.records import AttackRecord, summarize, to_json
from fedaudit.audit.store import write_png
from fedaudit.audit.truth import GroundTruth
from fedaudit.config import Scenario
from fedaudit.federation.client import client_update
from fedaudit.federation.plan import FederatedData, build_global_model, encode_examples, sample_batches
from fedaudit.federation.server import ground_truth, observe
from fedaudit.models import ModelBundle
from fedaudit.safety import write_private


def sampled_updates(
    scenario: Scenario,
    data: FederatedData,
    public: ModelBundle,
    count: int,
    seed: int,
    seconds: list[float] | None = None,
) -> Iterator[tuple[Observation, GroundTruth]]:
    """``count`` client updates from the initial global model, one per sampled batch, each computed
    exactly as a client would, with the server's Observation and the batch's GroundTruth.
    ``seconds``: gets the wall time of each client update (the client's own cost), in order."""
    client = build_global_model(scenario, data.examples)
    initial = {k: v.clone() for k, v in public.trainable_state().items()}
    for k, index in enumerate(sample_batches(data, scenario, count, seed)):
        client.load_state(initial)
        batch = encode_examples(client, data.examples.subset(index), scenario)
        started = time.perf_counter()
        update = client_update(client, batch, scenario, seed=seed * 1_000_003 + k)
        if seconds is not None:
            seconds.append(time.perf_counter() - started)
        yield (
            observe(scenario, 1, f"batch-{k}", public, initial, update.tensors, update.num_examples),
            ground_truth(batch),
        )


def evaluate_attack(
    name: str,
    scenario: Scenario,
    data: FederatedData,
    public: ModelBundle,
    batches: int,
    seed: int,
    out: Path | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run attack ``name`` on ``batches`` client updates; rewrite ``out`` (JSON) and call
    ``on_batch(batches done)`` after every batch.

    Returns ``{"attack", "scenario", "batches": [one row per batch], "aggregate": {...}}``, the
    aggregate being the per-attack summary (``records.summarize``): mean metrics, median seconds,
    peak memory and status counts.
    """
    auditor = Auditor.for_scenario(scenario.audit, names=[name])
    result: dict[str, Any] = {
        "attack": name,
        "scenario": scenario.model_dump(exclude_none=True),
        "batches": [],
        "aggregate": {},
    }
    records: list[AttackRecord] = []
    gradient_seconds: list[float] = []
    for k, (observation, truth) in enumerate(
        sampled_updates(scenario, data, public, batches, seed, seconds=gradient_seconds)
    ):
        records.extend(auditor.audit(observation, truth))
        row = to_json(records[-1])
        result["batches"].append(
            {
                "batch": k,
                "seconds_gradient": gradient_seconds[-1],
                **{key: row[key] for key in ("status", "reason", "metrics", "seconds", "peak_mem_mb", "diagnostics")},
                # What came back, beside the truth; image paths are relative to the JSON file's folder.
                **{key: row[key] for key in ("reconstruction", "comparison") if key in row},
            }
        )
        if out is not None:
            for image_name, image in records[-1].images.items():
                write_png(out.parent, image_name, image)
        (summary,) = summarize(records)
        result["aggregate"] = {
            **summary.metrics,
            "seconds_median": summary.seconds_median,
            "peak_mem_mb": summary.peak_mem_mb,
            "status_counts": summary.statuses,
        }
        if out is not None:
            _write_json(out, result)
        if on_batch is not None:
            on_batch(k + 1)
    return result


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, json.dumps(payload, indent=2, default=str))
