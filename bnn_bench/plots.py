"""PNG plots from a run's or a sweep's files (matplotlib, no display needed).

Every function reads only what a run wrote (results.json, metrics.jsonl), so a plot can be redrawn
from a finished directory at any time. Figures are drawn with matplotlib's object API (a `Figure`
saved with the Agg canvas), which never opens a window and leaves pyplot's global state alone.

Per run (written by bnn-bench at the end of a finished run, beside results.json):
- `ess_batch.png`: ESS (left axis) and batch size (right axis) against iteration (SMC);
- `reliability.png`: the reliability diagram from results.json's `reliability` bins;
- `entropy_histogram.png`: predictive entropy in and out of distribution (uncertainty_report).
Per sweep (written by bnn-bench-report):
- `accuracy_vs_runtime.png`: each seed as a point, each group's mean with +-1 std bars;
- `neg_elbo_vs_time.png`: neg_elbo against wall-clock time, one curve per VI job;
- `accuracy_vs_shift.png`: accuracy under evaluation.shift, one line per row (uncertainty_report).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

DPI = 120


def _figure(width: float = 6.4, height: float = 4.4):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig, path: Path) -> Path:
    """Render to memory, then write atomically (a temporary file renamed into place)."""
    import io

    from bnn_bench.tracking import atomic_write_bytes

    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON-object records of a .jsonl file; a line cut short (a killed run) ends the read,
    and a line that is valid JSON but not an object is skipped."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            break
        if isinstance(row, dict):  # a line that is not a JSON object is skipped
            rows.append(row)
    return rows


def ess_batch(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """ESS and batch size against iteration on one figure with two y-axes; None without ESS rows."""
    rows = [r for r in rows if r.get("ess") is not None and "batch_size" in r]
    if not rows:
        return None
    it = [r["iter"] for r in rows]
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(it, [r["ess"] for r in rows], color="tab:blue", lw=1.2, label="ESS")
    ax.set_xlabel("iteration")
    ax.set_ylabel("ESS", color="tab:blue")
    ax.set_ylim(bottom=0)
    ax.tick_params(axis="y", labelcolor="tab:blue")
    right = ax.twinx()
    right.step(it, [r["batch_size"] for r in rows], where="post", color="tab:orange", lw=1.2)
    right.set_ylabel("batch size", color="tab:orange")
    right.set_ylim(bottom=0)
    right.tick_params(axis="y", labelcolor="tab:orange")
    ax.set_title(title or "ESS and batch size")
    return _save(fig, path)


def reliability(bins: dict[str, list], path: Path, title: str = "") -> Path:
    """Reliability diagram: per-bin accuracy against the bin's mean confidence, bars on equal-width
    confidence bins, the diagonal of perfect calibration, and the share of examples per bin."""
    fig = _figure(5.0, 5.6)
    ax, share = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    _draw_reliability(ax, share, bins, title or "reliability diagram")
    return _save(fig, path)


def reliability_panel(panels: Sequence[tuple[str, dict[str, list]]], path: Path) -> Path:
    """Reliability diagrams side by side, one per (title, bins), on shared axes (bins as in
    results.json's `reliability`; pool_bins combines several runs')."""
    n = len(panels)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig = _figure(3.4 * cols, 4.2 * rows)
    grid = fig.add_gridspec(2 * rows, cols, height_ratios=[3, 1] * rows)
    for i, (title, bins) in enumerate(panels):
        r, c = divmod(i, cols)
        ax = fig.add_subplot(grid[2 * r, c])
        share = fig.add_subplot(grid[2 * r + 1, c], sharex=ax)
        _draw_reliability(ax, share, bins, title, legend=i == 0)
    return _save(fig, path)


def pool_bins(runs: Sequence[dict[str, list]]) -> dict[str, list]:
    """The reliability bins of several runs on the same bin edges as one: count-weighted means of
    each bin's confidence and accuracy, summed counts."""
    count = np.sum([np.asarray(b["bin_count"], float) for b in runs], axis=0)

    def pooled(key):
        total = np.zeros_like(count)
        for b in runs:
            v = np.array([0.0 if x is None else x for x in b[key]], float)
            total += v * np.asarray(b["bin_count"], float)
        return [float(t / c) if c > 0 else None for t, c in zip(total, count, strict=True)]

    return {
        "bin_confidence": pooled("bin_confidence"),
        "bin_accuracy": pooled("bin_accuracy"),
        "bin_count": [int(c) for c in count],
    }


def _draw_reliability(ax, share, bins: dict[str, list], title: str, legend: bool = True) -> None:
    conf = np.array([np.nan if v is None else v for v in bins["bin_confidence"]], float)
    acc = np.array([np.nan if v is None else v for v in bins["bin_accuracy"]], float)
    count = np.asarray(bins["bin_count"], float)
    num_bins = len(count)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    centres, width = (edges[:-1] + edges[1:]) / 2, 1.0 / num_bins
    full = count > 0
    ax.bar(centres[full], acc[full], width=width, edgecolor="black", lw=0.5, label="accuracy")
    ax.bar(
        centres[full],
        (conf - acc)[full],
        bottom=acc[full],
        width=width,
        fill=False,  # hatched, so the gap reads the same over the bar (underconfident bins)
        hatch="///",
        edgecolor="tab:red",
        lw=0.5,
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    if legend:
        ax.legend(loc="upper left")
    ax.set_title(title)
    share.bar(centres, count / max(count.sum(), 1.0), width=width, color="gray")
    share.set_xlabel("confidence")
    share.set_ylabel("share")


def run_plots(out_dir: Path) -> list[Path]:
    """A finished run's plots from its files: ess_batch.png (SMC) and reliability.png
    (classification); returns the paths written."""
    out_dir = Path(out_dir)
    results = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    name = "/".join(
        str(results[k]) for k in ("method", "schedule", "proposal", "algorithm") if k in results
    )
    title = f"{name}, seed {results.get('seed')}"
    written = []
    metrics = out_dir / "metrics.jsonl"
    if metrics.exists():
        path = ess_batch(read_jsonl(metrics), out_dir / "ess_batch.png", title=title)
        written += [path] if path else []
    if results.get("reliability"):
        written.append(reliability(results["reliability"], out_dir / "reliability.png", title))
    if results.get("ood"):  # entropy_histogram.png (evaluation.ood)
        from bnn_bench import uncertainty_report

        written += uncertainty_report.run_plot(out_dir, title)
    return written


def accuracy_vs_runtime(
    groups: Iterable[tuple[str, Sequence[float], Sequence[float]]],
    path: Path,
    metric: str = "accuracy",
    title: str = "",
) -> Path | None:
    """One colour per group (label, runtimes, values): each seed a faint point, the mean a marker
    with +-1 std error bars (sample std; none for one seed) on both axes."""
    groups = [(label, np.asarray(t, float), np.asarray(v, float)) for label, t, v in groups]
    groups = [g for g in groups if len(g[1])]
    if not groups:
        return None
    fig = _figure(7.0, 4.8)
    ax = fig.add_subplot()
    for i, (label, t, v) in enumerate(groups):
        colour = f"C{i % 10}"
        marker = "os^Dv<>ph*"[(i // 10) % 10]
        ax.scatter(t, v, color=colour, alpha=0.35, s=14, marker=marker)
        spread = len(t) > 1
        ax.errorbar(
            t.mean(),
            v.mean(),
            xerr=t.std(ddof=1) if spread else None,
            yerr=v.std(ddof=1) if spread else None,
            fmt=marker,
            color=colour,
            ms=7,
            capsize=3,
            label=f"{label} (n={len(t)})",
        )
    ax.set_xlim(left=0)
    ax.set_xlabel("runtime (s)")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} against runtime (mean +- std over seeds)")
    ax.legend(fontsize="small", loc="best")
    return _save(fig, path)


def neg_elbo_vs_time(
    curves: Iterable[tuple[str, Sequence[float], Sequence[float]]], path: Path, title: str = ""
) -> Path | None:
    """neg_elbo against wall-clock seconds: one thin curve per job (label, times, neg_elbo), one
    colour per label; log y-axis when every value is positive."""
    curves = [(label, np.asarray(t, float), np.asarray(v, float)) for label, t, v in curves]
    curves = [c for c in curves if len(c[1])]
    if not curves:
        return None
    fig = _figure(7.0, 4.8)
    ax = fig.add_subplot()
    colours: dict[str, str] = {}
    for label, t, v in curves:
        first = label not in colours
        colours.setdefault(label, f"C{len(colours) % 10}")
        ax.plot(t, v, color=colours[label], lw=1, alpha=0.8, label=label if first else None)
    values = np.concatenate([v for _, _, v in curves])
    finite = values[np.isfinite(values)]
    if finite.size and finite.min() > 0:
        ax.set_yscale("log")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("neg_elbo")
    ax.set_title(title or "neg_elbo against time (one curve per seed)")
    ax.legend(fontsize="small")
    return _save(fig, path)
