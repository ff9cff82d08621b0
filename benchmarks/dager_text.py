"""DAGER text-recovery benchmark: quality, speed and memory per (model family, dataset, B).

    python benchmarks/dager_text.py [--quick] [--batches K] [--rows NAME ...]

Writes benchmarks/results/dager_text.json and .md, rewritten after every row so an interrupted
run keeps what finished; rows measured earlier on the same device are kept unless rerun. Each
row attacks K client updates computed exactly as a client does (`fedaudit attack dager` with the
same scenario), on this machine's device. All K updates share one global model, as the clients
of one round do, so the first batch computes the layer-1 terms and the others reuse them: the
median is the per-client cost within a round, "first" the cost of a round's first client. The paper's figure
for the same cell is printed beside ours where the paper has one (Petrov et al., NeurIPS 2024,
Tables 1-4). The layer-1 check's achieved FLOP/s is reported beside a plain matmul's.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import arguments, device_name, earlier_rows, fmt, save  # noqa: E402  (this folder, run as scripts)

from fedaudit.federation import prepare  # noqa: E402
from fedaudit.federation.sampled import evaluate_attack  # noqa: E402
from fedaudit.scenario import load_scenario  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "text"
COLA = str(DATA / "cola" / "in_domain_train.tsv")
SST2 = str(DATA / "sst2" / "train.tsv")
GPT2_SMALL = "model.config={n_layer=12, n_embd=768, n_head=12}"

#: (row name, family, dataset, B, overrides, paper R-1/R-2 or None)
PAPER_GPT2_COLA = {b: (1.0, 1.0) for b in (1, 2, 4, 8, 16, 32, 64)}
PAPER_GPT2_SST2 = {b: (1.0, None) for b in (1, 2, 4, 8, 16, 32)}
PAPER_BERT_COLA = {1: (1.0, None), 2: (1.0, None), 4: (0.940, None), 8: (0.678, None)}


def rows() -> list[tuple[str, str, str, int, list[str], tuple | None]]:
    out = []
    for b in (1, 2, 4, 8, 16, 32, 64):
        out.append(
            (
                f"gpt2-cola-{b}",
                "GPT-2 (random, 124M)",
                "CoLA",
                b,
                ["model.name=gpt2-random", GPT2_SMALL, f"data.source={COLA}"],
                PAPER_GPT2_COLA.get(b),
            )
        )
        out.append(
            (
                f"gpt2-sst2-{b}",
                "GPT-2 (random, 124M)",
                "SST-2",
                b,
                ["model.name=gpt2-random", GPT2_SMALL, f"data.source={SST2}"],
                PAPER_GPT2_SST2.get(b),
            )
        )
    for b in (1, 2, 4, 8):
        out.append(
            (
                f"llama-cola-{b}",
                "LLaMA (random, 4 layers, d=512)",
                "CoLA",
                b,
                ["model.name=llama-random", "model.config={}", f"data.source={COLA}"],
                None,
            )
        )
        out.append(
            (
                f"bert-cola-{b}",
                "BERT (MiniLM-L6, pretrained)",
                "CoLA",
                b,
                ["model.name=minilm-l6", "model.config={}", f"data.source={COLA}"],
                PAPER_BERT_COLA.get(b),
            )
        )
    out.append(
        (
            "gpt2-cola-fedavg-4",
            "GPT-2 FedAvg E=2 mb=2 float64",
            "CoLA",
            4,
            [
                "model.name=gpt2-random",
                GPT2_SMALL,
                f"data.source={COLA}",
                "model.dtype=float64",
                "training.mode=fedavg",
                "training.local_epochs=2",
                "training.mini_batch_size=2",
            ],
            None,
        )
    )
    out.append(
        (
            "gpt2-cola-lora-8",
            "GPT-2 LoRA r=256 (round 1)",
            "CoLA",
            8,
            ["model.name=gpt2-random", GPT2_SMALL, f"data.source={COLA}", "model.lora={r=256, alpha=256}"],
            None,
        )
    )
    return out


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 3) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def layer1_gflops(diagnostics: dict) -> float | None:
    """Achieved GFLOP/s of a full layer-1 check (terms computed, not reused): its products are
    V x d x 2p (centered token x position terms), V x d x r (projection on the span) and V x r x p."""
    if diagnostics.get("layer1_terms_reused", True) or "seconds_layer1" not in diagnostics:
        return None
    d, r, p = diagnostics["model_width"], diagnostics["rank_layer1"], diagnostics["positions_checked"]
    v = diagnostics["vocabulary"]
    flops = 2 * v * d * (2 * p + r) + 2 * v * r * p
    return flops / diagnostics["seconds_layer1"] / 1e9


def write(results: dict, path: Path) -> None:
    save(results, path, [name for name, *_ in rows()], markdown)


def markdown(results: dict) -> list[str]:
    lines = [
        f"# DAGER text recovery ({results['device']})",
        "",
        "FedSGD unless named. Seconds per batch: median over the row's batches (clients of one round, "
        "sharing the layer-1 terms) and the first batch (which computes them). "
        f"Plain matmul on this machine: {fmt(results['matmul_gflops_f32'], 1)} GFLOP/s float32, "
        f"{fmt(results['matmul_gflops_f64'], 1)} float64.",
        "",
        "| model | data | B | batches | R-1 | R-2 | exact match | token recall | s/batch median | s first | "
        "peak MB | layer-1 GFLOP/s (first) | budget s | status | paper R-1 / R-2 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        paper = r["paper"]
        paper_s = "-" if paper is None else f"{fmt(paper[0], 3)} / {fmt(paper[1], 3)}"
        lines.append(
            f"| {r['family']} | {r['dataset']} | {r['B']} | {r['batches']} | {fmt(r.get('rouge1'))} | "
            f"{fmt(r.get('rouge2'))} | {fmt(r.get('exact_match'))} | {fmt(r.get('token_recall'))} | "
            f"{fmt(r['seconds_median'], 2)} | {fmt(r['seconds_first'], 2)} | {fmt(r['peak_mem_mb'], 0)} | "
            f"{fmt(r['layer1_gflops'], 1)} | {r['budget_s']:g} | {r['status_counts']} | {paper_s} |"
        )
    return lines


def main() -> None:
    args = arguments(__doc__, "dager_text", budget=300.0)
    device = device_name()
    results = {
        "device": device,
        "matmul_gflops_f32": matmul_gflops(torch.float32),
        "matmul_gflops_f64": matmul_gflops(torch.float64),
        "rows": earlier_rows(args.out, device, args.rows),
    }
    for name, family, dataset, b, overrides, paper in rows():
        if args.rows and name not in args.rows:
            continue
        sc = load_scenario(
            None,
            [
                *overrides,
                f"training.batch_size={b}",
                "audit.attacks=['dager']",
                f"audit.budget_seconds={args.budget}",
                "data.max_examples=4000",
            ],
        )
        data, public = prepare(sc)
        result = evaluate_attack("dager", sc, data, public, args.batches, seed=0, out=None)
        agg = result["aggregate"]
        row = {
            "name": name,
            "family": family,
            "dataset": dataset,
            "B": b,
            "paper": paper,
            "batches": args.batches,
            "budget_s": args.budget,
            "seconds_first": result["batches"][0]["seconds"],
            "layer1_gflops": layer1_gflops(result["batches"][0]["diagnostics"]),
            **{
                k: agg.get(k)
                for k in (
                    "rouge1",
                    "rouge2",
                    "exact_match",
                    "token_recall",
                    "seconds_median",
                    "peak_mem_mb",
                    "status_counts",
                )
            },
        }
        results["rows"] = [r for r in results["rows"] if r["name"] != name] + [row]
        print(
            f"{name}: R-1 {fmt(row['rouge1'])} R-2 {fmt(row['rouge2'])} EM {fmt(row['exact_match'])} "
            f"{fmt(row['seconds_median'], 2)} s {row['status_counts']} (paper {paper})",
            flush=True,
        )
        write(results, args.out)


if __name__ == "__main__":
    main()
