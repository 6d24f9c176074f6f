"""Summarise the VI benchmark (scripts/bench_vi.sh): a markdown table and a convergence plot.

Usage: python scripts/plot_vi.py outputs/bench_vi docs/results/vi_convergence.png
Reads RUN_ROOT/<algorithm>/<seed>/{results.json,metrics.jsonl}; prints mean +- std over seeds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ALGORITHMS = ("score_prox", "advi", "gsm", "bam")
KEYS = ("accuracy", "nll", "ece", "neg_elbo")


def sync_points(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(time_s, mean neg_elbo) per host sync: records of one sync share its time stamp."""
    times = sorted({r["time_s"] for r in rows})
    elbo = [np.mean([r["neg_elbo"] for r in rows if r["time_s"] == t]) for t in times]
    return np.asarray(times), np.asarray(elbo)


def main(root: Path, png: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    print("| algorithm | iterations | train time (s) | runtime (s) | " + " | ".join(KEYS) + " |")
    print("| --- " * (4 + len(KEYS)) + "|")
    for color, name in zip(("C0", "C1", "C2", "C3"), ALGORITHMS, strict=True):
        runs = sorted((root / name).glob("*/results.json"))
        if not runs:
            continue
        res = [json.loads(p.read_text()) for p in runs]
        train = []
        for i, p in enumerate(runs):
            rows = [json.loads(ln) for ln in (p.parent / "metrics.jsonl").read_text().splitlines()]
            t, e = sync_points(rows)
            train.append(t[-1])
            ax.plot(t, e, color=color, alpha=0.8, label=name if i == 0 else None)
        cells = [
            f"{np.mean([r[k] for r in res]):.4g} +- {np.std([r[k] for r in res]):.2g}" for k in KEYS
        ]
        print(
            f"| {name} | {res[0]['iterations']} | {np.mean(train):.1f} +- {np.std(train):.1f} | "
            f"{np.mean([r['runtime_s'] for r in res]):.1f} | " + " | ".join(cells) + " |"
        )
    ax.set_yscale("symlog", linthresh=1e3)
    ax.set_xlabel("training wall-clock time (s)")
    ax.set_ylabel("neg_elbo (minibatch MC estimate, mean per 25 iterations)")
    ax.set_title("FashionMNIST reduced (N = 1,000), CNN, 3 seeds each")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
