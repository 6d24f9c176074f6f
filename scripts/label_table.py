"""One row per labelled group of runs, seeds pooled: `scripts/label_table.py ROOT [LABEL ...]`.

ROOT holds one directory per label (any name, e.g. nested-small) with one run per seed below it
(the finished jobs bnn-bench-report would list). Prints a markdown table of accuracy, NLL, ECE
(mean +- sample std over seeds), example-gradients and runtime (mean), and for exact SMC the
fewest distinct particles of any final cloud; then a row per seed (for exact SMC with the
path's example-gradients before the final sweeps, and how many sweeps it added). Writes
ROOT/reliability.png: each label's reliability diagram, its seeds' bins pooled
(plots.pool_bins). Used where one setting is compared at several budgets, which
bnn-bench-report would group into one row (docs/results/exact-smc.md, FashionMNIST).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from bnn_bench import plots
from bnn_bench.report import collect

METRICS = ("accuracy", "nll", "ece")


def cell(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def finished(root: Path) -> list[dict]:
    runs = [job.results for job in collect(root) if job.finished]
    return sorted(runs, key=lambda r: int(r.get("seed", 0)))


def table(groups: dict[str, list[dict]]) -> list[str]:
    lines = [
        "| run | seeds | accuracy | NLL | ECE | example-grads | runtime (s) | distinct (min) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, runs in groups.items():
        seeds = ",".join(str(r.get("seed")) for r in runs)
        cells = [cell([float(r[m]) for r in runs]) for m in METRICS]
        grads = statistics.mean(float(r["example_grads"]) for r in runs)
        runtime = statistics.mean(float(r["runtime_s"]) for r in runs)
        distinct = [r["distinct_particles"] for r in runs if "distinct_particles" in r]
        d = f"{min(distinct)} of {runs[0]['num_particles']}" if distinct else "-"
        lines.append(
            f"| {label} | {len(runs)} ({seeds}) | {' | '.join(cells)} | {grads:.3g} | "
            f"{runtime:.0f} | {d} |"
        )
    # exact SMC: what its path spent before the final sweeps, and how many sweeps it added
    lines += [
        "",
        "| run | seed | accuracy | NLL | ECE | example-grads | of them the path's | final sweeps "
        "| runtime (s) |",
    ]
    lines.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, runs in groups.items():
        for r in runs:
            values = " | ".join(f"{float(r[m]):.3f}" for m in METRICS)
            path = r.get("path_example_grads")
            path = "-" if path is None else f"{float(path):.3g}"
            if r.get("budget_exceeded"):
                path += " (over the budget)"
            sweeps = r.get("final_sweeps", "-")
            lines.append(
                f"| {label} | {r.get('seed')} | {values} | {float(r['example_grads']):.3g} | "
                f"{path} | {sweeps} | {float(r['runtime_s']):.0f} |"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("labels", nargs="*", help="the order of the rows (default: all, sorted)")
    args = parser.parse_args(argv)
    labels = args.labels or sorted(p.name for p in args.root.iterdir() if p.is_dir())
    groups = {
        label: finished(args.root / label) for label in labels if (args.root / label).is_dir()
    }
    groups = {label: runs for label, runs in groups.items() if runs}
    if not groups:
        print(f"label_table.py: no finished runs under {args.root}", file=sys.stderr)
        return 1
    print("\n".join(table(groups)))
    panels = [
        (label, plots.pool_bins([r["reliability"] for r in runs]))
        for label, runs in groups.items()
        if all(r.get("reliability") for r in runs)
    ]
    if panels:
        plots.reliability_panel(panels, args.root / "reliability.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
