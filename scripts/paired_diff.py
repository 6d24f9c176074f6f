"""Paired differences between two methods run on the same seeds.

    python scripts/paired_diff.py A_DIR B_DIR [--metrics test_error nll ece neg_elbo]

A_DIR and B_DIR each hold one run directory per seed (any depth; the finished jobs that
bnn-bench-report would list, keyed by their `seed`). For each metric and each seed finished in
both, d = A - B; prints the mean of A, of B, of d and d's standard error (sample std /
sqrt(n)), one markdown row per metric. `test_error` is 1 - accuracy. Used for the paper's
claim in docs/results/vi.md (A = score_prox, B = advi: a negative d means A is better there).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

from bnn_bench.report import collect


def by_seed(root: Path) -> dict[int, dict]:
    """The finished jobs under `root` (found as bnn-bench-report finds them), by seed."""
    return {
        int(job.results["seed"]): job.results
        for job in collect(root)
        if job.finished and job.results.get("seed") is not None
    }


def value(r: dict, metric: str) -> float:
    if metric == "test_error":
        return 1.0 - float(r["accuracy"])
    return float(r[metric])


def rows(a: dict[int, dict], b: dict[int, dict], metrics: list[str]) -> list[str]:
    seeds = sorted(set(a) & set(b))
    n = len(seeds)
    lines = [
        f"seeds: {', '.join(map(str, seeds))} (n = {n})",
        "",
        "| metric | A | B | A - B | se(A - B) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for m in metrics:
        xa = [value(a[s], m) for s in seeds]
        xb = [value(b[s], m) for s in seeds]
        d = [p - q for p, q in zip(xa, xb, strict=True)]
        se = statistics.stdev(d) / math.sqrt(n) if n > 1 else float("nan")
        row = f"| {m} | {statistics.mean(xa):.4g} | {statistics.mean(xb):.4g} | "
        lines.append(row + f"{statistics.mean(d):+.4g} | {se:.2g} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--metrics", nargs="+", default=["test_error", "nll", "ece", "neg_elbo"])
    args = parser.parse_args(argv)
    a, b = by_seed(args.a), by_seed(args.b)
    if not set(a) & set(b):
        print(f"paired_diff: no seed finished in both {args.a} and {args.b}", file=sys.stderr)
        return 2
    print("\n".join(rows(a, b, args.metrics)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
