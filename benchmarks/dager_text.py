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

import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import arguments, device_name, earlier_rows, fmt, save  # noqa: E402  (this folder, run as scripts)

from fedaudit.federation import prepare  # noqa: E402
from fedaudit.federation.sampled import evaluate_attack  # noqa: E402
from fedaudit.scenario import load_scenario  # noqa: E402
from fedaudit.training.dp import epsilon  # noqa: E402
from fedaudit.training.local import DPSteps  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "text"
COLA = str(DATA / "cola" / "in_domain_train.tsv")
SST2 = str(DATA / "sst2" / "train.tsv")
SST2_VAL = str(DATA / "sst2" / "validation.tsv")
GPT2_SMALL = "model.config={n_layer=12, n_embd=768, n_head=12}"

PAPER_GPT2_COLA = {b: (1.0, 1.0) for b in (1, 2, 4, 8, 16, 32, 64)}
PAPER_GPT2_SST2 = {b: (1.0, None) for b in (1, 2, 4, 8, 16, 32)}
PAPER_BERT_COLA = {1: (1.0, None), 2: (1.0, None), 4: (0.940, None), 8: (0.678, None)}
PAPER_BERT_SST2 = {1: (1.0, None), 2: (0.993, None), 4: (0.956, None), 8: (0.741, None)}


class Row(NamedTuple):
    name: str
    family: str
    dataset: str
    B: int
    overrides: list[str]
    paper: tuple | None = None
    """The paper's R-1 / R-2 for the same cell (None: no such cell)."""
    batches: int | None = None
    """Batches for this row (None: --batches); --batches given on the command line wins."""
    budget: float | None = None
    """Seconds per batch (None: --budget); --budget given on the command line wins."""


def rows() -> list[Row]:
    out = []
    for b in (1, 2, 4, 8, 16, 32, 64):
        gpt2 = ["model.name=gpt2-random", GPT2_SMALL]
        out.append(
            Row(
                f"gpt2-cola-{b}",
                "GPT-2 (random, 124M)",
                "CoLA",
                b,
                [*gpt2, f"data.source={COLA}"],
                PAPER_GPT2_COLA.get(b),
            )
        )
        out.append(
            Row(
                f"gpt2-sst2-{b}",
                "GPT-2 (random, 124M)",
                "SST-2",
                b,
                [*gpt2, f"data.source={SST2}"],
                PAPER_GPT2_SST2.get(b),
            )
        )
    for b in (1, 2, 4, 8):
        llama = ["model.name=llama-random", "model.config={}", f"data.source={COLA}"]
        out.append(Row(f"llama-cola-{b}", "LLaMA (random, 4 layers, d=512)", "CoLA", b, llama))
        minilm = ["model.name=minilm-l6", "model.config={}"]
        out.append(
            Row(
                f"bert-cola-{b}",
                "BERT (MiniLM-L6, pretrained)",
                "CoLA",
                b,
                [*minilm, f"data.source={COLA}"],
                PAPER_BERT_COLA.get(b),
            )
        )
    out += _rows_issue17()
    fedavg = ["model.dtype=float64", "training.mode=fedavg", "training.local_epochs=2", "training.mini_batch_size=2"]
    gpt2_cola = ["model.name=gpt2-random", GPT2_SMALL, f"data.source={COLA}"]
    out.append(Row("gpt2-cola-fedavg-4", "GPT-2 FedAvg E=2 mb=2 float64", "CoLA", 4, [*gpt2_cola, *fedavg], budget=300))
    lora = "model.lora={r=256, alpha=256}"
    out.append(Row("gpt2-cola-lora-8", "GPT-2 LoRA r=256 (round 1)", "CoLA", 8, [*gpt2_cola, lora]))
    return out


def _rows_issue17() -> list[Row]:
    """Real-world fidelity (issue 17): full-length review sentences for the encoders, a 2-layer
    classifier, FedAvg as clients send it, small DP-SGD noise, a pretrained rotary model."""
    out = []
    for b in (1, 2, 4, 8):
        sst2 = [f"data.source={SST2_VAL}"]
        for name, family, model in (
            ("minilm", "BERT (MiniLM-L6, pretrained)", "minilm-l6"),
            ("bert", "BERT (random, base)", "bert-random"),
        ):
            overrides = [f"model.name={model}", "model.config={}", *sst2]
            out.append(
                Row(
                    f"{name}-sst2val-{b}", family, "SST-2 val", b, overrides, PAPER_BERT_SST2[b], batches=20, budget=300
                )
            )
    for b in (2, 4, 8):  # the same lengths, text the encoder search was not developed on
        overrides = ["model.name=minilm-l6", "model.config={}", f"data.source={held_out_text()}"]
        family = "BERT (MiniLM-L6, pretrained)"
        out.append(Row(f"minilm-heldout-{b}", family, "SST-2 train, val lengths", b, overrides, batches=20, budget=300))
    two_layer = [
        "model.name=gpt2-random",
        "model.config={n_layer=2, n_embd=768, n_head=12}",
        "model.task=classification",
    ]
    out.append(
        Row("gpt2-2layer-cls-8", "GPT-2 classifier, 2 layers (random)", "CoLA", 8, [*two_layer, f"data.source={COLA}"])
    )
    for epochs in (2, 5, 10):
        for dtype in ("float32", "float64"):
            overrides = [
                "model.name=gpt2-random",
                "model.config={n_layer=3, n_embd=512, n_head=8}",
                f"model.dtype={dtype}",
                "data.source=demo",
                "training.mode=fedavg",
                f"training.local_epochs={epochs}",
                "training.mini_batch_size=2",
                "training.lr=1e-4",
            ]
            family = f"GPT-2 3x512 FedAvg E={epochs} mb=2 lr=1e-4 {dtype}"
            out.append(
                Row(
                    f"gpt2-demo-fedavg-{dtype}-e{epochs}",
                    family,
                    "demo (PII-like)",
                    4,
                    overrides,
                    batches=5,
                    budget=300,
                )
            )
    for sigma in (1e-5, 1e-4, 1e-3, 1e-2):
        dp = [f"defenses.dp_sgd.noise_multiplier={sigma:g}", "defenses.dp_sgd.max_grad_norm=1.0"]
        overrides = ["model.name=gpt2-random", GPT2_SMALL, "model.task=classification", f"data.source={COLA}", *dp]
        out.append(
            Row(
                f"gpt2-cola-dpsgd-{sigma:g}",
                f"GPT-2 DP-SGD sigma={sigma:g} C=1",
                "CoLA",
                8,
                overrides,
                batches=5,
                budget=300,
            )
        )
    for b, batches in ((1, 10), (8, 10), (16, 5), (32, 3)):
        overrides = ["model.name=smollm2-135m", "model.config={}", f"data.source={SST2_VAL}"]
        out.append(
            Row(
                f"smollm2-sst2val-{b}",
                "SmolLM2-135M (pretrained)",
                "SST-2 val",
                b,
                overrides,
                batches=batches,
                budget=600,
            )
        )
    return out


def held_out_text() -> str:
    """SST-2 train sentences drawn (seed 0) to match the validation sentences' word counts one
    for one, none of them a validation sentence: as long as what the encoder search was
    developed on, but never looked at. Written once to the temporary folder; returns its path."""
    path = Path(tempfile.gettempdir()) / "fedaudit-sst2-train-at-validation-lengths.tsv"
    if path.exists():
        return str(path)
    validation = [line.split("\t")[0] for line in Path(SST2_VAL).read_text().splitlines()[1:]]
    seen = set(validation)
    pools: dict[int, list[str]] = {}
    for line in Path(SST2).read_text().splitlines()[1:]:
        sentence = line.split("\t")[0]
        if sentence not in seen:
            pools.setdefault(len(sentence.split()), []).append(line)
    gen, drawn = random.Random(0), []
    for sentence in validation:
        pool = pools.get(len(sentence.split()))
        if pool:
            drawn.append(pool.pop(gen.randrange(len(pool))))
    path.write_text("sentence\tlabel\n" + "\n".join(drawn) + "\n")
    return str(path)


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
    save(results, path, [row.name for row in rows()], markdown)


SPLIT = (
    ("gradient", "seconds_gradient"),
    ("set-up", "seconds_setup"),
    ("layer 1", "seconds_layer1"),
    ("layer 2", "seconds_layer2"),
)
"""The time split per batch: the client's update (``evaluate_attack``'s ``seconds_gradient``), the
attack's set-up (spans, private model), layer 1 (terms when computed, and the check) and layer 2."""


def time_split(batches: list[dict]) -> dict[str, dict[str, float | None]]:
    """Per part: warm (median over the batches after the first: a round's later clients, layer-1
    terms kept) and cold (the first batch), plus the attack's own seconds split the same way."""

    def value(batch: dict, key: str) -> float | None:
        return batch.get(key) if key in ("seconds", "seconds_gradient") else (batch.get("diagnostics") or {}).get(key)

    out = {}
    for part, key in (*SPLIT, ("attack", "seconds")):
        values = [value(b, key) for b in batches]
        warm = [v for v in values[1:] if v is not None]
        out[part] = {"warm": statistics.median(warm) if warm else None, "cold": values[0] if values else None}
    return out


def markdown(results: dict) -> list[str]:
    lines = [
        f"# DAGER text recovery ({results['device']})",
        "",
        "FedSGD unless named. Seconds per batch: median over the row's batches (clients of one round, "
        "sharing the layer-1 terms) and the first batch (which computes them). "
        f"Plain matmul on this machine: {fmt(results['matmul_gflops_f32'], 1)} GFLOP/s float32, "
        f"{fmt(results['matmul_gflops_f64'], 1)} float64. Epsilon: DP-SGD rows, one round (delta 1e-5).",
        "",
        "| model | data | B | batches | R-1 | R-2 | exact match | token recall | s/batch median | s first | "
        "peak MB | layer-1 GFLOP/s (first) | budget s | status | epsilon | paper R-1 / R-2 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        paper = r["paper"]
        paper_s = "-" if paper is None else f"{fmt(paper[0], 3)} / {fmt(paper[1], 3)}"
        eps = r.get("epsilon")
        lines.append(
            f"| {r['family']} | {r['dataset']} | {r['B']} | {r['batches']} | {fmt(r.get('rouge1'))} | "
            f"{fmt(r.get('rouge2'))} | {fmt(r.get('exact_match'))} | {fmt(r.get('token_recall'))} | "
            f"{fmt(r['seconds_median'], 2)} | {fmt(r['seconds_first'], 2)} | {fmt(r['peak_mem_mb'], 0)} | "
            f"{fmt(r['layer1_gflops'], 1)} | {r['budget_s']:g} | {r['status_counts']} | "
            f"{'-' if eps is None else f'{eps:.3g}'} | {paper_s} |"
        )
    lines += [
        "",
        "## Time split per batch (seconds, warm / cold)",
        "",
        "Warm: median over the batches after the first (a round's later clients: private model, layer-1 "
        "terms and layer-2 calibration kept); cold: the first batch. Gradient: the client's own update; "
        "set-up: the spans (SVDs) and the private model; layer 1: the vocabulary check (with its terms "
        "when cold); layer 2: the sentence search. Load: the 1-minute load average before and after the row "
        "(other processes share this machine's cores).",
        "",
        "| row | B | gradient | set-up | layer 1 | layer 2 | attack | load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        split = r.get("split")
        if not split:
            continue
        cells = [
            f"{fmt(split[p]['warm'], 3)} / {fmt(split[p]['cold'], 3)}"
            for p in ("gradient", "set-up", "layer 1", "layer 2", "attack")
        ]
        load = r.get("load") or [None, None]
        lines.append(f"| {r['name']} | {r['B']} | {' | '.join(cells)} | {fmt(load[0], 1)} -> {fmt(load[1], 1)} |")
    return lines + baseline_lines(results)


def baseline_lines(results: dict) -> list[str]:
    """Rows of this script run on an earlier commit (a second worktree), interleaved with ours
    (``results["baseline"]``, added by hand: {"commit", "note", "rows"})."""
    base = results.get("baseline")
    if not base:
        return []
    ours = {r["name"]: r for r in results["rows"]}
    lines = [
        "",
        f"## Before / after: commit {base['commit']} vs this one (seconds, warm / cold)",
        "",
        base.get("note", ""),
        "",
        "| row | side | R-1 | gradient | set-up | layer 1 | layer 2 | s/batch median | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for before in base["rows"]:
        for side, r in (("before", before), ("after", before.get("after") or ours.get(before["name"]))):
            if r is None or not r.get("split"):
                continue
            cells = [
                f"{fmt(r['split'][p]['warm'], 3)} / {fmt(r['split'][p]['cold'], 3)}"
                for p in ("gradient", "set-up", "layer 1", "layer 2")
            ]
            load = r.get("load") or [None, None]
            lines.append(
                f"| {r['name']} | {side} | {fmt(r.get('rouge1'))} | {' | '.join(cells)} | "
                f"{fmt(r['seconds_median'], 2)} | {fmt(load[0], 1)} -> {fmt(load[1], 1)} |"
            )
    return lines


def dp_epsilon(sc) -> float | None:
    """Epsilon of one round of the scenario's DP-SGD (FedSGD: one step over the batch, rate 1)."""
    dp = sc.defenses.dp_sgd
    if dp is None:
        return None
    batch = sc.training.batch_size
    mini = min(sc.training.mini_batch_size, batch)
    if sc.training.mode == "fedsgd":
        steps = DPSteps(dp.noise_multiplier, 1.0, 1)
    else:
        steps = DPSteps(dp.noise_multiplier, mini / batch, sc.training.local_epochs * -(-batch // mini))
    return epsilon(steps, 1, dp)


def given(flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in sys.argv[1:])


def run_row(row: Row, args) -> dict:
    batches = args.batches if given("--batches") or row.batches is None else row.batches
    budget = args.budget if given("--budget") or row.budget is None else row.budget
    sc = load_scenario(
        None,
        [
            *row.overrides,
            f"training.batch_size={row.B}",
            "audit.attacks=['dager']",
            f"audit.budget_seconds={budget}",
            "data.max_examples=4000",
        ],
    )
    data, public = prepare(sc)
    load_before = os.getloadavg()[0]
    result = evaluate_attack("dager", sc, data, public, batches, seed=0, out=None)
    agg = result["aggregate"]
    return {
        "name": row.name,
        "family": row.family,
        "dataset": row.dataset,
        "B": row.B,
        "paper": row.paper,
        "batches": batches,
        "budget_s": budget,
        "seconds_first": result["batches"][0]["seconds"],
        "layer1_gflops": layer1_gflops(result["batches"][0]["diagnostics"] or {}),
        "epsilon": dp_epsilon(sc),
        "split": time_split(result["batches"]),
        "load": [load_before, os.getloadavg()[0]],
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


def main() -> None:
    args = arguments(__doc__, "dager_text", budget=300.0)
    device = device_name()
    results = {
        "device": device,
        "matmul_gflops_f32": matmul_gflops(torch.float32),
        "matmul_gflops_f64": matmul_gflops(torch.float64),
        "rows": earlier_rows(args.out, device, args.rows),
    }
    for row in rows():
        if args.rows and row.name not in args.rows:
            continue
        measured = run_row(row, args)
        results["rows"] = [r for r in results["rows"] if r["name"] != row.name] + [measured]
        split = measured["split"]
        print(
            f"{row.name}: R-1 {fmt(measured['rouge1'])} R-2 {fmt(measured['rouge2'])} "
            f"EM {fmt(measured['exact_match'])} "
            f"{fmt(measured['seconds_median'], 2)} s {measured['status_counts']} (paper {row.paper})"
            + "".join(f" {p} {fmt(v['warm'], 3)}/{fmt(v['cold'], 3)}" for p, v in split.items())
            + (f" epsilon {measured['epsilon']:.3g}" if measured["epsilon"] is not None else ""),
            flush=True,
        )
        write(results, args.out)


if __name__ == "__main__":
    main()
