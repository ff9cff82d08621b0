"""Report rendering benchmark: how large report.html is and how long a report takes to render,
for the demo run (``fedaudit run simulations/quickstart.toml``: 4 clients, 3 rounds, DAGER and
embedding-rows). Targets: report.html under 2 MB, a render under 2 s.

Renders the run's report ``--repeat`` times in this process (the first render also imports
matplotlib; it is reported apart) and writes benchmarks/results/report_render.md.

    python benchmarks/report_render.py [--run RUNS/<run-id>] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "benchmarks" / "results" / "report_render.md"
SCENARIO = "simulations/quickstart.toml"
MAX_BYTES, MAX_SECONDS = 2_000_000, 2.0


def demo_run(base: Path) -> Path:
    """A fresh run of the demo scenario under ``base``; its run directory."""
    exe = Path(sys.executable).parent / "fedaudit"
    cmd = [str(exe), "run", SCENARIO, "--set", f"output.dir={base}"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"the demo run failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    (run_dir,) = [p for p in base.iterdir() if p.is_dir()]
    return run_dir


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def measure(run_dir: Path, repeat: int) -> dict:
    from fedaudit.report.data import build
    from fedaudit.report.html import render_html
    from fedaudit.report.markdown import write_reports

    cold = timed(lambda: write_reports(run_dir))
    every = [timed(lambda: write_reports(run_dir)) for _ in range(repeat)]
    html_only = [timed(lambda: render_html(build(run_dir))) for _ in range(repeat)]
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    data = build(run_dir)
    return {
        "run": run_dir.name,
        "clients": len({a.client for a in data.audits}),
        "rounds": data.rounds_completed,
        "audits": len(data.audits),
        "attacks": ", ".join(a.name for a in data.attacks),
        "html_bytes": len(html.encode("utf-8")),
        "json_bytes": (run_dir / "summary.json").stat().st_size,
        "md_bytes": (run_dir / "report.md").stat().st_size,
        "figures": html.count('<figure class="plot">'),
        "svg_bytes": _svg_bytes(html),
        "cold_s": cold,
        "all_median_s": statistics.median(every),
        "html_median_s": statistics.median(html_only),
        "repeat": repeat,
    }


def _svg_bytes(html: str) -> int:
    total, start = 0, html.find("<svg")
    while start != -1:
        end = html.index("</svg>", start) + len("</svg>")
        total += len(html[start:end].encode("utf-8"))
        start = html.find("<svg", end)
    return total


def render_md(r: dict) -> str:
    ok = lambda good: "yes" if good else "**no**"  # noqa: E731
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    return "\n".join(
        [
            "# Report rendering",
            "",
            f"`python benchmarks/report_render.py` on the demo run (`fedaudit run {SCENARIO}`), CPU: {machine}.",
            f"Run `{r['run']}`: {r['clients']} clients, {r['rounds']} rounds, {r['audits']} audits ({r['attacks']}).",
            "",
            "| measure | value | target | met |",
            "|---|---|---|---|",
            f"| report.html size | {r['html_bytes'] / 1000:.0f} kB | < 2000 kB | {ok(r['html_bytes'] < MAX_BYTES)} |",
            f"| of which inline SVG ({r['figures']} figures) | {r['svg_bytes'] / 1000:.0f} kB | | |",
            f"| summary.json / report.md size | {r['json_bytes'] / 1000:.1f} kB / {r['md_bytes'] / 1000:.1f} kB | | |",
            f"| render, all three files, median of {r['repeat']} | {r['all_median_s']:.2f} s | < 2 s "
            f"| {ok(r['all_median_s'] < MAX_SECONDS)} |",
            f"| render, report.html only, median of {r['repeat']} | {r['html_median_s']:.2f} s | < 2 s "
            f"| {ok(r['html_median_s'] < MAX_SECONDS)} |",
            f"| first render in a fresh process (imports matplotlib) | {r['cold_s']:.2f} s | | |",
            "",
            "A render reads records.jsonl, builds the report's data model once, draws the figures as SVG",
            "(matplotlib, Agg) and writes report.html, report.md and summary.json (0600, atomically).",
            "`fedaudit run` rewrites them after every round.",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="an existing run directory (default: run the demo first)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="report-render-") as tmp:
        run_dir = args.run or demo_run(Path(tmp))
        result = measure(run_dir, args.repeat)
        text = render_md(result)
    args.out.write_text(text, encoding="utf-8")
    print(text)
    print(f"html {result['html_bytes']} bytes, render median {result['all_median_s']:.3f} s -> {args.out}")


if __name__ == "__main__":
    main()
