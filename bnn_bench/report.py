"""`bnn-bench-report SWEEP_DIR`: the table (markdown and LaTeX) and plots of a sweep.

Reads every results.json under SWEEP_DIR (any depth, so several sweeps under one directory make one
table), groups the jobs by experiment and method/schedule/proposal (SMC) or method/algorithm
(VI), and writes into SWEEP_DIR:
- table.md, table.tex: accuracy (or rmse), NLL, ECE, agreement and TV (or W2: runs given
  reference=PATH), runtime, example_grads, the speed-up vs
  full and (VI) neg_elbo as mean +- std over seeds (sample std, ddof=1; the mean alone for one
  seed), the number of finished seeds and of jobs that did not finish per row, and every job
  that did not finish
  (status failed / diverged / interrupted, or an unreadable results.json) with its directory and
  error. Only finished jobs enter the means.
- accuracy_vs_runtime.png, and neg_elbo_vs_time.png when the sweep has VI jobs.

Speed-up vs full: for an SMC row, runtime_s of the `full` schedule's job with the same
experiment, proposal and seed divided by this row's runtime_s for that seed, then mean +- std over
the seeds both have ("-" when there is no full run to compare with, and for VI).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bnn_bench import plots

EXIT_USAGE = 2
PROPOSAL_ORDER = ("hmc", "langevin")


@dataclass
class Job:
    """One job directory's results.json (relative `directory`) and what it says."""

    directory: str
    results: dict[str, Any]

    @property
    def status(self) -> str:
        return str(self.results.get("status", "unknown"))

    @property
    def finished(self) -> bool:
        return self.status == "finished"


@dataclass
class Row:
    """One group of jobs: the key's fields, its finished jobs and the ones that did not finish."""

    experiment: str
    method: str
    variant: str  # schedule (SMC) or algorithm (VI)
    proposal: str
    jobs: list[Job] = field(default_factory=list)
    not_finished: list[Job] = field(default_factory=list)
    stats: dict[str, tuple[float, float, int]] = field(default_factory=dict)  # mean, std, n
    speedup: tuple[float, float, int] | None = None

    @property
    def label(self) -> str:
        return "/".join(p for p in (self.method, self.variant, self.proposal) if p)


def base_proposal(label: str) -> str:
    """The proposal of a row label without its tuning suffixes: hmc for hmc+adapt+diag."""
    return label.split("+")[0]


def group_key(results: dict[str, Any]) -> tuple[str, str, str, str]:
    """(experiment, method, variant, proposal) of one job; the method's entry in the registry
    names its row (smc: schedule and proposal; vi: the algorithm)."""
    from bnn_bench.methods import METHODS

    method = str(results.get("method") or "?")
    experiment = str(results.get("experiment") or "-")
    if method not in METHODS:
        return experiment, method, "", ""
    return experiment, method, *METHODS[method].row(results)


def read_job(path: Path, directory: str | Path) -> Job:
    """The job of one results.json; an unreadable or missing one becomes a failed job whose error
    says why (never dropped)."""
    try:
        results = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(results, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        results = {"status": "failed", "error": f"unreadable results.json: {exc}"}
    return Job(str(directory), results)


def collect(sweep_dir: Path) -> list[Job]:
    """Every results.json under `sweep_dir`, in directory order (see read_job)."""
    return [
        read_job(path, str(path.parent.relative_to(sweep_dir)) or ".")
        for path in sorted(Path(sweep_dir).rglob("results.json"), key=_natural_key)
    ]


def _natural_key(path: Path) -> list:
    """Sort job directories 0, 1, 2, ..., 10 rather than 0, 1, 10, 2."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.parts]


def _order(value: str, order: tuple[str, ...]) -> tuple[int, str]:
    return (order.index(value), "") if value in order else (len(order), value)


def _mean_std(values: list[float]) -> tuple[float, float, int]:
    arr = np.asarray(values, float)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else math.nan
    return float(arr.mean()), std, len(arr)


# neg_elbo: VI; agreement, total_variation, w2: runs given reference=PATH
METRICS = (
    "accuracy",
    "rmse",
    "nll",
    "ece",
    "agreement",
    "total_variation",
    "w2",
    "runtime_s",
    "example_grads",
    "neg_elbo",
)


def summarise(jobs: list[Job]) -> list[Row]:
    """Rows (sorted by experiment, method, schedule/algorithm, proposal) with their statistics."""
    rows: dict[tuple, Row] = {}
    for job in jobs:
        key = group_key(job.results)
        row = rows.setdefault(key, Row(*key))
        (row.jobs if job.finished else row.not_finished).append(job)
    for row in rows.values():
        for metric in METRICS:
            values = [j.results[metric] for j in row.jobs if _number(j.results.get(metric))]
            if values:
                row.stats[metric] = _mean_std(values)
    from bnn_bench.methods import METHODS

    for row in rows.values():
        if row.method not in METHODS:
            continue
        candidates = METHODS[row.method].baselines(row.variant, row.proposal)
        found = [rows.get((row.experiment, row.method, *c)) for c in candidates]
        full = next((r for r in found if r is not None), None)
        if full is None:
            continue
        full_time, row_time = _runtime_by_seed(full.jobs), _runtime_by_seed(row.jobs)
        ratios = [full_time[s] / row_time[s] for s in sorted(full_time.keys() & row_time.keys())]
        if ratios:
            row.speedup = _mean_std(ratios)

    def sort_key(row: Row):
        order = METHODS[row.method].variant_order if row.method in METHODS else ()
        return (
            row.experiment,
            row.method,
            _order(row.variant, order),
            _order(base_proposal(row.proposal), PROPOSAL_ORDER),
            row.proposal,  # hmc, then hmc+adapt, hmc+diag
        )

    return sorted(rows.values(), key=sort_key)


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _runtime_by_seed(jobs: list[Job]) -> dict[Any, float]:
    """Mean runtime_s per seed (a seed run twice, e.g. two sweeps in one directory, averages)."""
    times: dict[Any, list[float]] = defaultdict(list)
    for job in jobs:
        if _number(job.results.get("runtime_s")) and job.results["runtime_s"] > 0:
            times[job.results.get("seed")].append(job.results["runtime_s"])
    return {seed: float(np.mean(t)) for seed, t in times.items()}


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------

FORMATS = {
    "accuracy": "{:.4f}",
    "rmse": "{:.4f}",
    "nll": "{:.4f}",
    "ece": "{:.4f}",
    "runtime_s": "{:.1f}",
    "example_grads": "{:.3g}",
    "neg_elbo": "{:.0f}",
    "agreement": "{:.4f}",
    "total_variation": "{:.4f}",
    "w2": "{:.4f}",
    "speedup": "{:.2f}",
}
HEADERS = {
    "accuracy": "accuracy",
    "rmse": "RMSE",
    "nll": "NLL",
    "ece": "ECE",
    "runtime_s": "runtime (s)",
    "example_grads": "example grads",
    "neg_elbo": "neg ELBO",
    "agreement": "agreement",
    "total_variation": "TV",
    "w2": "W2",
    "speedup": "speed-up vs full",
}


def _cell(stat: tuple[float, float, int] | None, metric: str, pm: str) -> str:
    if stat is None:
        return "-"
    fmt = FORMATS[metric]
    mean, std, _ = stat
    return fmt.format(mean) if math.isnan(std) else f"{fmt.format(mean)}{pm}{fmt.format(std)}"


def _columns(rows: list[Row]) -> list[str]:
    metrics = [m for m in METRICS if any(m in r.stats for r in rows) or m == "runtime_s"]
    return [*metrics, "speedup"]


def _table_cells(rows: list[Row], pm: str) -> tuple[list[str], list[list[str]]]:
    columns = _columns(rows)
    header = ["experiment", "method", "schedule / algorithm", "proposal", "seeds", "not finished"]
    header += [HEADERS[c] for c in columns]
    body = []
    for row in rows:
        cells = [row.experiment, row.method, row.variant or "-", row.proposal or "-"]
        cells += [str(len(row.jobs)), str(len(row.not_finished))]
        for c in columns:
            stat = row.speedup if c == "speedup" else row.stats.get(c)
            cells.append(_cell(stat, c, pm))
        body.append(cells)
    return header, body


def _not_finished(jobs: list[Job]) -> list[Job]:
    return [j for j in jobs if not j.finished]


def _job_label(job: Job) -> str:
    experiment, method, variant, proposal = group_key(job.results)
    return "/".join(p for p in (method, variant, proposal) if p)


def markdown(rows: list[Row], jobs: list[Job], sweep_dir: Path) -> str:
    header, body = _table_cells(rows, " ± ")
    lines = [
        f"# Results of {sweep_dir}",
        "",
        f"{sum(len(r.jobs) for r in rows)} finished jobs in {len(rows)} rows; mean ± std over "
        "seeds (sample std; the mean alone for one seed). Speed-up vs full: runtime of the full "
        "schedule's job with the same proposal and seed / this job's runtime.",
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
        *("| " + " | ".join(cells) + " |" for cells in body),
        "",
    ]
    failed = _not_finished(jobs)
    lines += [f"## Jobs that did not finish ({len(failed)})", ""]
    if failed:
        lines += ["| directory | status | job | seed | error |", "| --- | --- | --- | --- | --- |"]
        for job in failed:
            error = str(job.results.get("error", "")).replace("|", "\\|").replace("\n", " ")
            cells = [
                job.directory,
                job.status,
                _job_label(job),
                job.results.get("seed", "-"),
                error,
            ]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    else:
        lines.append("None: every job finished.")
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def latex(rows: list[Row], jobs: list[Job]) -> str:
    header, body = _table_cells(rows, "\x00")  # a stand-in for $\pm$, kept out of escaping
    pm = r" $\pm$ "

    def line(cells: list[str]) -> str:
        return " & ".join(latex_escape(c).replace("\x00", pm) for c in cells) + r" \\"

    out = [
        "% bnn-bench-report: mean $\\pm$ std over seeds; needs \\usepackage{booktabs}",
        r"\begin{tabular}{" + "l" * 4 + "r" * (len(header) - 4) + "}",
        r"\toprule",
        line(header),
        r"\midrule",
        *(line(cells) for cells in body),
        r"\bottomrule",
        r"\end{tabular}",
    ]
    failed = _not_finished(jobs)
    if failed:
        out += [
            "",
            f"% Jobs that did not finish ({len(failed)})",
            r"\begin{tabular}{lllrl}",
            r"\toprule",
            line(["directory", "status", "job", "seed", "error"]),
            r"\midrule",
            *(
                line(
                    [
                        j.directory,
                        j.status,
                        _job_label(j),
                        str(j.results.get("seed", "-")),
                        str(j.results.get("error", "")),
                    ]
                )
                for j in failed
            ),
            r"\bottomrule",
            r"\end{tabular}",
        ]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# Sweep plots
# ---------------------------------------------------------------------------------------------


def sweep_plots(rows: list[Row], sweep_dir: Path) -> list[Path]:
    """accuracy_vs_runtime.png (rmse for regression) and, with VI jobs, neg_elbo_vs_time.png."""
    written = []
    metric = "accuracy" if any("accuracy" in r.stats for r in rows) else "rmse"
    multi = len({r.experiment for r in rows}) > 1
    groups = []
    for row in rows:
        pairs = [
            (j.results["runtime_s"], j.results[metric])
            for j in row.jobs
            if _number(j.results.get("runtime_s")) and _number(j.results.get(metric))
        ]
        label = f"{row.experiment}: {row.label}" if multi and row.experiment != "-" else row.label
        groups.append((label, [p[0] for p in pairs], [p[1] for p in pairs]))
    path = plots.accuracy_vs_runtime(groups, sweep_dir / "accuracy_vs_runtime.png", metric=metric)
    written += [path] if path else []
    curves = []
    for row in rows:
        if "neg_elbo" not in row.stats:  # the VI methods' objective
            continue
        for job in row.jobs + row.not_finished:
            metrics = sweep_dir / job.directory / "metrics.jsonl"
            if not metrics.exists():
                continue
            records = [
                r for r in plots.read_jsonl(metrics) if _number(r.get("neg_elbo")) and "time_s" in r
            ]
            named = multi and row.experiment != "-"
            label = f"{row.experiment}: {row.variant}" if named else row.variant
            curves.append((label, [r["time_s"] for r in records], [r["neg_elbo"] for r in records]))
    path = plots.neg_elbo_vs_time(curves, sweep_dir / "neg_elbo_vs_time.png")
    written += [path] if path else []
    return written


def report(sweep_dir: Path) -> dict[str, Any]:
    """Write table.md, table.tex and the sweep plots into `sweep_dir`; return what was written."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ReportError(f"SWEEP_DIR={sweep_dir} is not a directory")
    jobs = collect(sweep_dir)
    if not jobs:
        raise ReportError(f"SWEEP_DIR={sweep_dir} holds no results.json (at any depth)")
    rows = summarise(jobs)
    (sweep_dir / "table.md").write_text(markdown(rows, jobs, sweep_dir), encoding="utf-8")
    (sweep_dir / "table.tex").write_text(latex(rows, jobs), encoding="utf-8")
    files = [sweep_dir / "table.md", sweep_dir / "table.tex", *sweep_plots(rows, sweep_dir)]
    return {"rows": rows, "jobs": jobs, "not_finished": _not_finished(jobs), "files": files}


class ReportError(Exception):
    """Bad input to bnn-bench-report: one line, exit code 2."""


def main(argv: list[str] | None = None) -> None:
    """Console entry point `bnn-bench-report`."""
    parser = argparse.ArgumentParser(
        prog="bnn-bench-report",
        description="Tables (table.md, table.tex) and plots of every results.json under a sweep "
        "directory, grouped by method/schedule/proposal (SMC) or method/algorithm (VI).",
    )
    parser.add_argument("sweep_dir", metavar="SWEEP_DIR", type=Path)
    args = parser.parse_args(argv)
    try:
        out = report(args.sweep_dir)
    except ReportError as exc:
        print(f"bnn-bench-report: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    print(markdown(out["rows"], out["jobs"], args.sweep_dir), end="")
    for path in out["files"]:
        print(f"[bnn-bench-report] wrote {path}", file=sys.stderr)
    if out["not_finished"]:
        n = len(out["not_finished"])
        print(f"[bnn-bench-report] {n} job(s) did not finish: see table.md", file=sys.stderr)


if __name__ == "__main__":
    main()
