"""Compare finished runs side by side: `python scripts/compare_runs.py BASELINE_DIR RUN_DIR ...`.

Reads each directory's results.json and prints accuracy (or rmse), NLL, ECE, runtime,
example_grads and the wall-clock and example-gradient ratios against the first (baseline) run.
Used to measure a schedule against full-batch SMC with the same J, K and seed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load(run_dir: Path) -> dict:
    path = run_dir / "results.json"
    if not path.is_file():
        raise SystemExit(f"compare_runs: error: {path} not found (is {run_dir} a finished run?)")
    return json.loads(path.read_text())


def rows(results: list[dict]) -> list[list[str]]:
    base = results[0]
    score = "accuracy" if "accuracy" in base else "rmse"
    out = [["schedule", "proposal", "seed", score, "nll", "ece", "runtime_s", "example_grads",
            "speed-up", "grad ratio", "status"]]  # fmt: skip
    for r in results:
        out.append(
            [
                str(r.get("schedule")),
                str(r.get("proposal")),
                str(r.get("seed")),
                f"{r.get(score, float('nan')):.4f}",
                f"{r.get('nll', float('nan')):.4f}",
                f"{r.get('ece', float('nan')):.4f}",
                f"{r['runtime_s']:.1f}",
                f"{r['example_grads']:.3g}",
                f"{base['runtime_s'] / r['runtime_s']:.2f}x",
                f"{r['example_grads'] / base['example_grads']:.3f}",
                str(r.get("status")),
            ]
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories; the first is the base")
    args = parser.parse_args(argv)
    table = rows([load(d) for d in args.runs])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
