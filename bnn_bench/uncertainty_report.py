"""The uncertainty evaluation (results.json `ood`, `shift`, `selective`) in reports and plots.

Drawn only from a run's or a sweep's results.json files:
- per run, `entropy_histogram.png`: the predictive entropy of the test inputs against each OOD
  set's (densities on equal bins of [0, log K]);
- per sweep (bnn-bench-report), a section of table.md: AUROC of the entropy and of the mutual
  information for each OOD set, AURC and accuracy at each rotation, mean +- std over seeds per
  report row; and `accuracy_vs_shift.png`: accuracy against each shift's level (one panel per
  rotation or corruption), one line per report row (the mean over seeds).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from bnn_bench import plots


def _value(results: dict, *keys: str):
    for key in keys:
        if not isinstance(results, dict) or key not in results:
            return None
        results = results[key]
    return results if isinstance(results, int | float) and not isinstance(results, bool) else None


def _level_order(level: str) -> float:
    try:
        return float(level)
    except ValueError:
        return math.inf


def columns(jobs_results: list[dict[str, Any]]) -> list[tuple[str, tuple[str, ...]]]:
    """(header, key path) of every uncertainty column some job has, in a fixed order."""
    sets = sorted({s for r in jobs_results for s in r.get("ood", {}) if s != "test"})
    cols = []
    for s in sets:
        name = Path(s).stem if s.endswith(".npz") else s
        cols.append((f"AUROC entropy {name}", ("ood", s, "entropy", "auroc")))
        cols.append((f"AUROC MI {name}", ("ood", s, "mutual_information", "auroc")))
    if any("selective" in r for r in jobs_results):
        cols.append(("AURC", ("selective", "aurc")))
    angles = sorted(
        {a for r in jobs_results for a in r.get("shift", {}).get("rotation", {})},
        key=_level_order,
    )
    for a in angles:
        cols.append((f"accuracy rot {a}", ("shift", "rotation", a, "accuracy")))
        cols.append((f"ECE rot {a}", ("shift", "rotation", a, "ece")))
    return cols


def markdown(rows) -> str:
    """table.md's uncertainty section for report rows (report.Row); "" when no job has one."""
    finished = [j.results for row in rows for j in row.jobs]
    cols = columns(finished)
    if not cols:
        return ""
    header = ["experiment", "row", "seeds", *(c[0] for c in cols)]
    lines = [
        "",
        "## Uncertainty (evaluation.*)",
        "",
        "OOD detection with the OOD set as the positive class (AUROC of the predictive entropy and "
        "of the mutual information); AURC: area under the risk-coverage curve (lower is better); "
        "accuracy and ECE on test inputs rotated by each angle. Mean ± std over seeds.",
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
    ]
    for row in rows:
        results = [j.results for j in row.jobs]
        if not any(k in r for r in results for k in ("ood", "shift", "selective")):
            continue
        cells = [row.experiment, row.label, str(len(results))]
        for _, path in cols:
            values = [v for v in (_value(r, *path) for r in results) if v is not None]
            cells.append(_cell(values))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    mean = float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {float(np.std(values, ddof=1)):.3f}"


def accuracy_vs_shift(rows, path: Path) -> Path | None:
    """accuracy against shift level, one panel per shift kind, one line per report row."""
    kinds = sorted({k for row in rows for j in row.jobs for k in j.results.get("shift", {})})
    if not kinds:
        return None
    fig = plots._figure(4.0 * len(kinds), 3.8)
    axes = np.atleast_1d(fig.subplots(1, len(kinds), squeeze=False)[0])
    for ax, kind in zip(axes, kinds, strict=True):
        for i, row in enumerate(rows):
            levels = sorted(
                {lv for j in row.jobs for lv in j.results.get("shift", {}).get(kind, {})},
                key=_level_order,
            )
            means = []
            for lv in levels:
                vals = [_value(j.results, "shift", kind, lv, "accuracy") for j in row.jobs]
                vals = [v for v in vals if v is not None]
                means.append(float(np.mean(vals)) if vals else np.nan)
            if levels:
                x = [_level_order(lv) for lv in levels]
                ax.plot(x, means, marker="o", color=f"C{i % 10}", label=row.label)
        ax.set_xlabel("angle (degrees)" if kind == "rotation" else "severity")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
        ax.set_title(kind)
    axes[0].legend(fontsize="small")
    return plots._save(fig, path)


def entropy_histogram(results: dict[str, Any], path: Path, title: str = "") -> Path | None:
    """Predictive entropy of the test inputs and of each OOD set (densities), from results.json."""
    ood = results.get("ood") or {}
    test = ood.get("test")
    if not test:
        return None
    top = float(test["histogram_max"])
    fig = plots._figure()
    ax = fig.add_subplot()
    for i, (name, entry) in enumerate(ood.items()):
        counts = np.asarray(entry.get("entropy_histogram", []), float)
        if not counts.size or counts.sum() == 0:
            continue
        edges = np.linspace(0.0, top, len(counts) + 1)
        density = counts / (counts.sum() * np.diff(edges))
        label = "test (in distribution)" if name == "test" else Path(name).stem
        ax.stairs(
            density,
            edges,
            color=f"C{i % 10}",
            lw=1.5,
            label=label,
            fill=name == "test",
            alpha=0.35 if name == "test" else 1.0,
        )
    ax.set_xlabel("predictive entropy (nats)")
    ax.set_ylabel("density")
    ax.set_xlim(0, top)
    ax.set_title(title or "predictive entropy in and out of distribution")
    ax.legend(fontsize="small")
    return plots._save(fig, path)


def run_plot(out_dir: Path, title: str = "") -> list[Path]:
    """entropy_histogram.png of a finished run, if it evaluated OOD sets."""
    results = json.loads((Path(out_dir) / "results.json").read_text(encoding="utf-8"))
    path = entropy_histogram(results, Path(out_dir) / "entropy_histogram.png", title)
    return [path] if path else []
