"""What running an attack in a pool worker costs, against running it in the server's process.

DAGER on GPT-2 (3 blocks, width 768), B = 8 CoLA sentences, FedSGD: the same observations,
audited in this process (``attack.run``, as the auditor did before the pool) and through the
audit pool (one forkserver worker), interleaved per observation so that machine load hits
both alike. The pool's first job pays for the worker's start (the fork server's imports) and
for handing over the model; later jobs hand over nothing but the update.

    python benchmarks/audit_worker.py           # prints a table, writes results/audit_worker.md
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import RESULTS, device_name  # noqa: E402  (this folder, run as scripts)

from fedaudit.attacks import REGISTRY, Budget  # noqa: E402
from fedaudit.audit.pool import AuditPool, ProcessPool  # noqa: E402
from tests.helpers import client_updates, scenario  # noqa: E402

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "text" / "cola" / "in_domain_train.tsv"
SCENARIO = [
    f"data.source={DATA}",
    "model.config={n_layer=3, n_embd=768, n_head=12}",
    "training.batch_size=8",
    "audit.attacks=['dager']",
]


def measure(observations: list, repetitions: int) -> dict[str, list[float]]:
    here, there = REGISTRY.make("dager", "cpu"), REGISTRY.make("dager", "cpu")
    pool = AuditPool(ProcessPool(1))
    times: dict[str, list[float]] = {"in the server's process": [], "pool worker, wall": [], "pool worker, attack": []}
    try:
        for _ in range(repetitions):
            for observation in observations:
                start = time.perf_counter()
                assert here.run(observation, Budget(600)).status == "exact"
                times["in the server's process"].append(time.perf_counter() - start)
                start = time.perf_counter()
                outcome = pool.run(there, observation, 600)
                times["pool worker, wall"].append(time.perf_counter() - start)
                times["pool worker, attack"].append(outcome.seconds)
                assert outcome.reconstruction is not None and outcome.reconstruction.status == "exact", outcome.reason
    finally:
        pool.close()
    return times


def main() -> None:
    observations = [obs for obs, _ in client_updates(scenario(*SCENARIO), 4)]
    times = measure(observations, repetitions=2)
    lines = [
        f"# DAGER per audit: in the server's process vs a pool worker ({device_name()})",
        "",
        "GPT-2 3 blocks, width 768, B = 8 CoLA sentences, FedSGD; 4 client updates x 2 repetitions,",
        "interleaved; every audit exact. Seconds.",
        "",
        "| where | first audit | median of the rest | min | max |",
        "|---|---|---|---|---|",
    ]
    for name, values in times.items():
        rest = values[1:]
        median = statistics.median(rest)
        lines.append(f"| {name} | {values[0]:.2f} | {median:.2f} | {min(rest):.2f} | {max(rest):.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    (RESULTS / "audit_worker.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
