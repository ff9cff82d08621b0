"""SPEAR benchmark: exact fraction, PSNR / feature accuracy, seconds and memory per (data, width m, batch size b).

    python benchmarks/spear.py [--batches K] [--budget S] [--rows NAME ...]

Rows are named DATA-mM-bB (e.g. mnist-m1000-b16) for DATA in mnist, cifar10, adult, m in
{200, 1000} and b in {1, 4, 8, 16, 20, 25, 32}. Each row attacks K client updates (FedSGD, a
ReLU MLP with one hidden layer of width m, SPEAR on that layer) computed exactly as a client
does. Writes benchmarks/results/spear.json and .md after every row; rows measured earlier on
the same device are kept unless rerun.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import arguments, device_name, earlier_rows, fmt, save  # noqa: E402  (this folder, run as scripts)

from fedaudit.federation import prepare  # noqa: E402
from fedaudit.federation.sampled import evaluate_attack  # noqa: E402
from fedaudit.scenario import load_scenario  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
ADULT_COLUMNS = (
    "['age','workclass','fnlwgt','education','education_num','marital_status','occupation',"
    "'relationship','race','sex','capital_gain','capital_loss','hours_per_week','native_country',"
    "'income']"
)
SOURCES = {
    "mnist": [f"data.source={DATA / 'images/mnist/t10k-images-idx3-ubyte.gz'}"],
    "cifar10": [f"data.source={DATA / 'images/cifar10/test_2000.npz'}"],
    "adult": [
        f"data.source={DATA / 'tabular/adult/adult.data'}",
        "data.modality=table",
        f"data.columns={ADULT_COLUMNS}",
        "data.label_column=income",
    ],
}


def rows() -> list[tuple[str, str, int, int]]:
    return [
        (f"{data}-m{m}-b{b}", data, m, b) for data in SOURCES for m in (200, 1000) for b in (1, 4, 8, 16, 20, 25, 32)
    ]


def write(results: dict, path: Path) -> None:
    save(results, path, [name for name, *_ in rows()], markdown)


def markdown(results: dict) -> list[str]:
    lines = [
        f"# SPEAR ({results['device']})",
        "",
        "FedSGD, ReLU MLP with one hidden layer of width m, SPEAR on that layer. Exact = every input "
        "within 1e-4 (images) or every feature right (tables); exact inputs counts a batch that returned "
        "nothing as 0; PSNR / features average the batches that returned inputs.",
        "",
        "| data | m | b | batches | exact batches | exact inputs | PSNR / features | s median | s max | "
        "peak MB | budget s | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        quality = fmt(r.get("psnr"), 1) if r.get("psnr") is not None else fmt(r.get("feature_accuracy"))
        lines.append(
            f"| {r['data']} | {r['m']} | {r['b']} | {r['batches']} | {fmt(r['exact_batches'], 2)} | "
            f"{fmt(r.get('exact_fraction'))} | {quality} | {fmt(r['seconds_median'], 2)} | "
            f"{fmt(r['seconds_max'], 2)} | {fmt(r['peak_mem_mb'], 0)} | {r['budget_s']:g} | "
            f"{r['status_counts']} |"
        )
    return lines


def main() -> None:
    args = arguments(__doc__, "spear", budget=300.0)
    device = device_name()
    results = {"device": device, "rows": earlier_rows(args.out, device, args.rows)}
    for name, data, m, b in rows():
        if args.rows and name not in args.rows:
            continue
        sc = load_scenario(
            None,
            [
                "model.name=mlp",
                f"model.config={{hidden=[{m}]}}",
                *SOURCES[data],
                f"training.batch_size={b}",
                "training.mode=fedsgd",
                "audit.attacks=['spear']",
                f"audit.budget_seconds={args.budget}",
            ],
        )
        prepared, public = prepare(sc)
        result = evaluate_attack("spear", sc, prepared, public, args.batches, seed=0, out=None)
        batches = result["batches"]
        agg = result["aggregate"]
        # a batch that returned no inputs (budget, full rank) recovered none of them
        row = {
            "name": name,
            "data": data,
            "m": m,
            "b": b,
            "batches": args.batches,
            "budget_s": args.budget,
            "exact_batches": sum(r["metrics"].get("exact_fraction", 0.0) == 1.0 for r in batches) / len(batches),
            "exact_fraction": sum(r["metrics"].get("exact_fraction", 0.0) for r in batches) / len(batches),
            "seconds_max": max(r["seconds"] for r in batches),
            **{
                k: agg.get(k)
                for k in ("psnr", "ssim", "feature_accuracy", "seconds_median", "peak_mem_mb", "status_counts")
            },
        }
        results["rows"] = [r for r in results["rows"] if r["name"] != name] + [row]
        print(
            f"{name}: exact batches {row['exact_batches']:.2f} exact inputs {fmt(row['exact_fraction'])} "
            f"{fmt(row['seconds_median'], 2)} s (max {fmt(row['seconds_max'], 2)}) {row['status_counts']}",
            flush=True,
        )
        write(results, args.out)
    if not results["rows"]:
        print("no row matched", file=sys.stderr)


if __name__ == "__main__":
    main()
