"""Defenses benchmark: one ``fedaudit sweep`` per question, then benchmarks/results/defenses.md.

Sweeps (each cell is a full ``fedaudit run``: clients train, the server audits and evaluates):

* dp:     DAGER on GPT-2 (width 768, 3 blocks, random init), CoLA, B = 8, vs DP-SGD noise
          multiplier at clip 1.0, one client, one round; epsilon from Opacus's accountant.
* fedavg: DAGER vs FedAvg local epochs x lr (mini-batches of 2 from B = 8, float64 weights).
* prune:  DLG, iDLG, IG and labels on MNIST (the DLG paper's sigmoid LeNet, b = 1) vs gradient
          pruning; prune_spear: SPEAR on MNIST (MLP 784-1000-10, b = 8) vs the same pruning.
* secagg: DAGER on MiniLM-L6 vs secure-aggregation group size K (8 clients of B = 4).

GPT-2 keeps its width but runs 3 transformer blocks (DAGER reads layers 1 and 2; a classifier's
layer-2 queries reach the loss through a third), so a cell
trains and evaluates in minutes on a CPU. ``--collect`` rebuilds defenses.md from the sweep
folders already in ``benchmarks/results/defenses/`` without running anything; ``--resume`` runs
only the cells a sweep folder has not finished.

    python benchmarks/defenses.py [--only dp prune ...] [--resume] [--collect]
"""

from __future__ import annotations

import argparse
import csv
import math
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, device_name  # noqa: E402

from fedaudit.sweep import parse_grid  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OUT = RESULTS / "defenses"
THREE_BLOCKS_GPT2 = "model.config={n_layer=3}"

SWEEPS: dict[str, tuple[str, list[str], list[str]]] = {
    "prune": ("simulations/mnist_pruning.toml", ["defenses.prune.fraction=0,0.1,0.2,0.5,0.9"], []),
    "prune_spear": (
        "simulations/mnist_mlp_spear.toml",
        ["defenses.prune.fraction=0,0.1,0.2,0.5,0.9"],
        ["federation.clients=2", "federation.rounds=1", "audit.attacks=['spear']"],
    ),
    "dp": (
        "simulations/gpt2_dpsgd.toml",
        ["defenses.dp_sgd.noise_multiplier=0,1e-4,1e-3,1e-2,0.1,1"],
        [THREE_BLOCKS_GPT2, "federation.clients=1", "federation.rounds=1", "audit.attacks=['dager']"],
    ),
    "fedavg": (
        "simulations/gpt2_fedavg_epochs.toml",
        ["training.local_epochs=1,2,5,10", "training.lr=1e-5,1e-4,5e-4"],
        [THREE_BLOCKS_GPT2, "federation.clients=1"],
    ),
    "secagg": (
        "simulations/bert_secagg.toml",
        ["federation.secure_aggregation_group=1,2,4,8"],
        ["audit.attacks=['dager']"],
    ),
}

TITLES = {
    "dp": "DAGER vs DP-SGD (GPT-2 width 768, 3 blocks, CoLA, B = 8, clip 1.0, one client, one round)",
    "fedavg": "DAGER vs FedAvg local epochs and learning rate (GPT-2 width 768, 3 blocks, float64, B = 8, "
    "mini-batches of 2, one client, one round)",
    "prune": "DLG / iDLG / IG / labels vs gradient pruning (MNIST, sigmoid LeNet, uniform init, b = 1, 2 clients, "
    "one round)",
    "prune_spear": "SPEAR vs gradient pruning (MNIST, MLP 784-1000-10, b = 8, 2 clients, one round)",
    "secagg": "DAGER vs secure-aggregation group size K (MiniLM-L6, CoLA, 8 clients x B = 4, one round)",
}

COLUMNS = {
    "dp": [
        "defenses.dp_sgd.noise_multiplier",
        "epsilon",
        "statuses",
        "rouge1",
        "rouge2",
        "exact_match",
        "accuracy",
        "attack_seconds",
    ],
    "fedavg": [
        "training.local_epochs",
        "training.lr",
        "statuses",
        "rouge1",
        "rouge2",
        "exact_match",
        "accuracy",
        "attack_seconds",
    ],
    "prune": [
        "defenses.prune.fraction",
        "attack",
        "statuses",
        "psnr",
        "ssim",
        "exact_fraction",
        "label_accuracy",
        "accuracy",
        "attack_seconds",
    ],
    "prune_spear": [
        "defenses.prune.fraction",
        "statuses",
        "psnr",
        "ssim",
        "exact_fraction",
        "accuracy",
        "attack_seconds",
    ],
    "secagg": [
        "federation.secure_aggregation_group",
        "audits",
        "statuses",
        "rouge1",
        "rouge2",
        "exact_match",
        "token_recall",
        "accuracy",
        "attack_seconds",
    ],
}


def run_sweep(name: str, resume: bool) -> None:
    scenario, grid, sets = SWEEPS[name]
    target = OUT / name
    if target.exists() and not resume:
        shutil.rmtree(target)
    cmd = [
        sys.executable,
        "-m",
        "fedaudit.cli",
        "sweep",
        scenario,
        *(a for g in grid for a in ("--grid", g)),
        *(a for s in sets for a in ("--set", s)),
        "--out",
        str(target),
        *(["--resume"] if resume and target.is_dir() else []),
    ]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


def _fmt(value: str) -> str:
    if value in ("", None):
        return "-"
    try:
        number = float(value)
    except ValueError:
        return value
    if number != number or number in (float("inf"), float("-inf")):
        return value
    return (
        f"{number:.3g}"
        if abs(number) >= 1e3 or (number and abs(number) < 1e-2)
        else f"{number:.3f}".rstrip("0").rstrip(".") or "0"
    )


def collect() -> Path:
    lines = [
        f"# Defenses: leakage vs utility vs privacy budget ({device_name()})",
        "",
        "Each table is one `fedaudit sweep` (commands in `benchmarks/defenses.py`); every cell is a full "
        "`fedaudit run`. Leakage is averaged over the audited updates of the cell; accuracy is the global "
        "model's held-out accuracy after the last round; epsilon is the largest any client reported "
        "(Opacus accountant, delta = 1e-5). Plots: `defenses/<sweep>/sweep.png`.",
        "",
    ]
    for name in SWEEPS:
        path = OUT / name / "sweep.csv"
        if not path.is_file():
            continue
        with path.open(encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        scenario, grid, sets = SWEEPS[name]
        columns = COLUMNS[name]
        lines += [
            f"## {TITLES[name]}",
            "",
            f"`fedaudit sweep {scenario} "
            + " ".join(f"--grid {g}" for g in grid)
            + " "
            + " ".join(f'--set "{s}"' for s in sets)
            + "`",
            "",
            "| " + " | ".join(c.rsplit(".", 1)[-1] for c in columns) + " |",
            "|" + "---|" * len(columns),
        ]
        for row in rows:
            lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |")
        expected = math.prod(len(values) for values in parse_grid(grid).values())
        measured = len({row["cell"] for row in rows})
        if measured < expected:
            lines += ["", f"Measured {measured} of {expected} cells: the sweep was stopped before the rest."]
        errors = [row["error"] for row in rows if row.get("error")]
        if errors:
            lines += ["", "Cell errors: " + "; ".join(sorted(set(errors)))]
        lines.append("")
    out = RESULTS / "defenses.md"
    out.write_text("\n".join(lines), encoding="utf-8")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=list(SWEEPS), help="sweeps to run (default: all)")
    parser.add_argument("--collect", action="store_true", help="only rebuild defenses.md from finished sweeps")
    parser.add_argument("--resume", action="store_true", help="keep the cells each sweep folder already finished")
    args = parser.parse_args()
    if not args.collect:
        for name in args.only or SWEEPS:
            run_sweep(name, args.resume)
    print(f"Wrote {collect()}")


if __name__ == "__main__":
    main()
