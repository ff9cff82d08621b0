"""How much disk one audit takes in a run directory, and so a 1000-client round.

Worst case per data kind: an attack that returns every example of a batch of 64, so the record
keeps the cap's worth of recovered examples beside the originals (text: the synthetic private
records; images: MNIST and CIFAR-10 batches as PNG files; tables: Adult rows). The records are
made by the real auditor and written by the real run store; the attack is a stand-in that
returns the batch with noise (``tests.helpers.Returns``), since the cost measured is the
record's, not the attack's.

    python benchmarks/record_size.py            # prints a table, writes results/record_size.md
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedaudit.attacks import Reconstruction  # noqa: E402
from fedaudit.audit.auditor import Auditor  # noqa: E402
from fedaudit.audit.store import RunStore  # noqa: E402
from tests.helpers import Returns, client_updates, scenario  # noqa: E402

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
ADULT_COLUMNS = (
    "['age','workclass','fnlwgt','education','education_num','marital_status','occupation',"
    "'relationship','race','sex','capital_gain','capital_loss','hours_per_week','native_country','income']"
)
CASES = {
    "text (demo records, GPT-2 tokens)": ["data.source=demo", "model.config={n_layer=1, n_embd=64, n_head=2}"],
    "MNIST 28x28": [
        "model.name=mlp",
        "model.config={hidden=[32]}",
        f"data.source={DATA / 'images/mnist/t10k-images-idx3-ubyte.gz'}",
    ],
    "CIFAR-10 32x32 RGB": [
        "model.name=mlp",
        "model.config={hidden=[32]}",
        f"data.source={DATA / 'images/cifar10/test_2000.npz'}",
    ],
    "Adult rows (15 columns)": [
        "model.name=mlp",
        "model.config={hidden=[32]}",
        f"data.source={DATA / 'tabular/adult/adult.data'}",
        "data.modality=table",
        f"data.columns={ADULT_COLUMNS}",
        "data.label_column=income",
    ],
}


def audit_bytes(overrides: list[str], batch: int, cap: int) -> int:
    observation, truth = client_updates(scenario(*overrides, f"training.batch_size={batch}"), 1)[0]
    if truth.features is not None:
        noisy = truth.features.double() + 0.02 * torch.randn_like(truth.features.double())
        returned = Reconstruction("partial", inputs=noisy.clamp(0, 1) if noisy.ndim == 4 else noisy)
    else:
        returned = Reconstruction("partial", sequences=[s[:-1] for s in truth.sequences()])
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(Path(tmp))
        store.records_path.touch()
        auditor = Auditor([Returns(returned)], budget_seconds=60, sink=store.append, max_examples=cap)
        auditor.audit(observation, truth)
        return sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file())


def main() -> None:
    rows = ["| data, batch of 64 | examples kept | disk per audit | 1000 clients, one attack, one round |"]
    rows.append("|---|---|---|---|")
    for cap in (64, 16):
        for name, overrides in CASES.items():
            size = audit_bytes(overrides, 64, cap)
            rows.append(f"| {name} | {cap} | {size / 1024:.1f} KiB | {size * 1000 / 2**20:.0f} MiB |")
            print(rows[-1], flush=True)
    text = "\n".join(
        [
            "# Disk per audit (record + PNG files) by audit.max_examples_per_record",
            "",
            "`python benchmarks/record_size.py`; every example returned (the worst case).",
            "",
            *rows,
            "",
        ]
    )
    out = Path(__file__).resolve().parent / "results" / "record_size.md"
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
