"""Compare finished runs side by side: `python scripts/compare_runs.py BASELINE_DIR RUN_DIR ...`.

Reads each directory's results.json (as bnn-bench-report does) and prints accuracy (or rmse),
NLL, ECE, runtime, example_grads (formatted as the report formats them) and the wall-clock and
example-gradient ratios against the first (baseline) run. Used to measure a schedule against
full-batch SMC with the same J, K and seed; for a whole sweep use `bnn-bench-report SWEEP_DIR`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bnn_bench.report import FORMATS, group_key, read_job


def rows(jobs: list) -> list[list[str]]:
    base = jobs[0].results
    score = "accuracy" if "accuracy" in base else "rmse"
    metrics = (score, "nll", "ece", "runtime_s", "example_grads")
    out = [["run", "seed", *metrics, "speed-up", "grad ratio", "status"]]
    for job in jobs:
        r = job.results
        _, method, variant, proposal = group_key(r)
        cells = ["/".join(p for p in (method, variant, proposal) if p), str(r.get("seed"))]
        cells += [FORMATS[m].format(r.get(m, float("nan"))) for m in metrics]
        cells += [
            f"{base['runtime_s'] / r['runtime_s']:.2f}x",
            f"{r['example_grads'] / base['example_grads']:.3f}",
            job.status,
        ]
        out.append(cells)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories; the first is the base")
    args = parser.parse_args(argv)
    jobs = []
    for run_dir in args.runs:
        job = read_job(run_dir / "results.json", run_dir)
        if not job.finished:
            raise SystemExit(
                f"compare_runs: error: {run_dir}: {job.results.get('error', job.status)}"
            )
        jobs.append(job)
    table = rows(jobs)
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
