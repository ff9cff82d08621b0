"""Optimization-attack benchmark: DLG, iDLG and Inverting Gradients on the same image batches, TAG
beside DAGER on the same GPT-2 text batches.

    python benchmarks/optimization.py [--batches K] [--budget S] [--rows NAME ...]

Image rows are named DATA-INIT-bB-ATTACK: DLG's sigmoid LeNet (``model.name = "cnn"``,
``activation = "sigmoid"``) with torch's default initialization or DLG's U(-0.5, 0.5)
(``init = "uniform"``), on scikit-learn's digits and the CIFAR-10 test subset, FedSGD with b images.
Every attack of a (data, init, b) group sees the same K client updates (same seed), with the step
budget of its option table (``STEPS``) and at most S seconds per update. Text rows put TAG and
DAGER on the same K GPT-2 (random init, 124M) CoLA updates with B = 1, TEXT_SECONDS each. Writes
benchmarks/results/optimization.json and .md after every row; rows measured earlier on the same
device are kept unless rerun.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import arguments, device_name, earlier_rows, fmt, save  # noqa: E402  (this folder, run as scripts)

from fedaudit.federation import prepare  # noqa: E402
from fedaudit.federation.sampled import evaluate_attack  # noqa: E402
from fedaudit.scenario import load_scenario  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
SOURCES = {"digits": "digits", "cifar10": str(DATA / "images" / "cifar10" / "test_2000.npz")}
COLA = str(DATA / "text" / "cola" / "in_domain_train.tsv")
#: Each attack's options in every row (its ``audit.<name>`` table); the seconds come from --budget.
STEPS = {
    "dlg": "{steps=300}",
    "idlg": "{steps=300}",
    "ig": "{steps=2000, restarts=1}",
    "tag": "{steps=2000}",
    "dager": None,
}
TEXT_SECONDS = 90.0
"""Seconds per text update (TAG on GPT-2 small takes about 0.7 s per step on one CPU thread)."""
#: The DAGER paper's GPT-2 CoLA B = 1 ROUGE-1 for each text attack, as the issue quotes it.
PAPER_R1 = {"tag": 0.07, "dager": 1.0}
ALL = ("dlg", "idlg", "ig")
#: (data, init, b, attacks): DLG's own model (uniform init) for CIFAR-10, torch's init beside it.
IMAGE_GROUPS = [
    ("digits", "default", 1, ALL),
    ("digits", "default", 4, ALL),
    ("cifar10", "uniform", 1, ALL),
    ("cifar10", "default", 1, ("dlg", "ig")),
    ("cifar10", "uniform", 2, ("dlg", "ig")),
]


def rows() -> list[tuple[str, str, str, int, str]]:
    """(row name, data, init, b, attack)."""
    out = [
        (f"{data}-{init}-b{b}-{attack}", data, init, b, attack)
        for data, init, b, attacks in IMAGE_GROUPS
        for attack in attacks
    ]
    return out + [(f"gpt2-cola-b1-{attack}", "cola", "random", 1, attack) for attack in ("dager", "tag")]


def overrides(data: str, init: str, b: int, attack: str, budget: float) -> list[str]:
    common = [
        f"training.batch_size={b}",
        "training.mode=fedsgd",
        f"audit.attacks=['{attack}']",
        f"audit.budget_seconds={budget}",
    ]
    if STEPS[attack] is not None:
        common.append(f"audit.{attack}={STEPS[attack]}")
    if data == "cola":
        return [
            "model.name=gpt2-random",
            "model.config={n_layer=12, n_embd=768, n_head=12}",
            f"data.source={COLA}",
            "data.max_examples=2000",
            *common,
        ]
    return [
        "model.name=cnn",
        f"model.config={{activation='sigmoid', init='{init}'}}",
        f"data.source={SOURCES[data]}",
        *common,
    ]


def write(results: dict, path: Path) -> None:
    save(results, path, [name for name, *_ in rows()], markdown)


def markdown(results: dict) -> list[str]:
    lines = [
        f"# Optimization attacks ({results['device']})",
        "",
        "FedSGD. Images: DLG's sigmoid LeNet (3 convolutions, 12 channels, linear head), torch's default "
        "initialization or DLG's U(-0.5, 0.5) (`init`); every attack of a group sees the same batches. "
        "PSNR in dB (capped at 100 for identical images), averaged over the batches, with the share of batches "
        "at >= 30 dB. Steps: L-BFGS steps of up to 20 iterations (DLG, iDLG) or Adam steps over all "
        "restarts (IG, TAG), median per batch; budget = the option table and the seconds per batch.",
        "",
        "| data | init | b | attack | batches | PSNR | >= 30 dB | SSIM | label acc. | s median | steps | "
        "budget | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    text = []
    for r in results["rows"]:
        if r["data"] == "cola":
            text.append(r)
            continue
        lines.append(
            f"| {r['data']} | {r['init']} | {r['b']} | {r['attack']} | {r['batches']} | {fmt(r['psnr'], 1)} | "
            f"{fmt(r['psnr_30'], 2)} | {fmt(r['ssim'])} | {fmt(r['label_accuracy'], 2)} | "
            f"{fmt(r['seconds_median'], 1)} | {fmt(r['steps_median'], 0)} | {r['options']}, "
            f"{r['budget_s']:g} s | {r['status_counts']} |"
        )
    if text:
        lines += [
            "",
            "Text: GPT-2 (random init, 124M, real tokenizer), CoLA, B = 1, the same batches for both attacks. "
            "Paper: the DAGER paper's GPT-2 CoLA B = 1 figure as issue 4 quotes it (pretrained GPT-2 there).",
            "",
            "| attack | batches | R-1 | R-2 | exact match | label acc. | s median | steps | budget | status | "
            "paper R-1 |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in text:
            lines.append(
                f"| {r['attack']} | {r['batches']} | {fmt(r['rouge1'])} | {fmt(r['rouge2'])} | "
                f"{fmt(r['exact_match'])} | {fmt(r['label_accuracy'], 2)} | {fmt(r['seconds_median'], 1)} | "
                f"{fmt(r['steps_median'], 0)} | {r['options'] or '-'}, {r['budget_s']:g} s | "
                f"{r['status_counts']} | {fmt(PAPER_R1.get(r['attack']), 2)} |"
            )
    return lines


def main() -> None:
    args = arguments(__doc__, "optimization", budget=60.0)
    device = device_name()
    results = {"device": device, "rows": earlier_rows(args.out, device, args.rows)}
    for name, data, init, b, attack in rows():
        if args.rows and name not in args.rows:
            continue
        budget = TEXT_SECONDS if data == "cola" else args.budget
        sc = load_scenario(None, overrides(data, init, b, attack, budget))
        prepared, public = prepare(sc)
        result = evaluate_attack(attack, sc, prepared, public, args.batches, seed=0, out=None)
        batches, agg = result["batches"], result["aggregate"]
        steps = [r["diagnostics"]["steps"] for r in batches if "steps" in r["diagnostics"]]
        psnrs = [r["metrics"]["psnr"] for r in batches if "psnr" in r["metrics"]]
        row = {
            "name": name,
            "data": data,
            "init": init,
            "b": b,
            "attack": attack,
            "batches": args.batches,
            "budget_s": budget,
            "options": STEPS[attack],
            "steps_median": statistics.median(steps) if steps else None,
            "psnr_30": sum(p >= 30 for p in psnrs) / len(batches) if psnrs else None,
            **{
                k: agg.get(k)
                for k in (
                    "psnr",
                    "ssim",
                    "label_accuracy",
                    "rouge1",
                    "rouge2",
                    "exact_match",
                    "seconds_median",
                    "peak_mem_mb",
                    "status_counts",
                )
            },
        }
        results["rows"] = [r for r in results["rows"] if r["name"] != name] + [row]
        quality = f"PSNR {fmt(row['psnr'], 1)}" if data != "cola" else f"R-1 {fmt(row['rouge1'])}"
        print(
            f"{name}: {quality} labels {fmt(row['label_accuracy'], 2)} {fmt(row['seconds_median'], 1)} s "
            f"steps {fmt(row['steps_median'], 0)} {row['status_counts']}",
            flush=True,
        )
        write(results, args.out)
    if not results["rows"]:
        print("no row matched", file=sys.stderr)


if __name__ == "__main__":
    main()
