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

from bnn_bench import plots, sweeps
from bnn_bench.tracking import atomic_write_bytes, check_writable_dir

EXIT_USAGE = 2
EXIT_NOT_FINISHED = 1
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
        problem = sweeps.results_shape_problem(results)
        if problem:
            raise ValueError(f"wrong shape: {problem}")
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        results = {"status": "failed", "error": f"unreadable results.json: {reason}"}
    return Job(str(directory), results)


def collect(sweep_dir: Path) -> list[Job]:
    """Every job of the sweep(s) under `sweep_dir`, in directory order, none dropped.

    The jobs are those with a results.json, those that started (a job directory with
    .hydra/overrides.yaml) and those the sweep's own record (multirun.yaml) lists, found or not.
    A job without a usable results.json gets status "failed" (results.json unreadable or of the
    wrong shape), "no results" (started, then stopped without writing one) or "not started",
    with an `error` saying what the files on disk show.
    """
    sweep_dir = Path(sweep_dir)
    jobs: dict[str, Job] = {}

    def rel(path: Path) -> str:
        return str(path.relative_to(sweep_dir)) or "."

    for path in sorted(sweep_dir.rglob("results.json"), key=_natural_key):
        job = read_job(path, rel(path.parent))
        if "method" not in job.results:  # unreadable: its row from the job's .hydra/config.yaml
            job.results = {**sweeps.job_config(path.parent), **job.results}
        jobs[job.directory] = job
    for directory in sweeps.job_dirs(sweep_dir):
        if rel(directory) not in jobs:
            jobs[rel(directory)] = _no_results(rel(directory), directory)
    for path in sorted(sweep_dir.rglob("multirun.yaml"), key=_natural_key):
        record = sweeps.read_record(path)
        if record.problem:
            jobs[rel(path)] = Job(rel(path), {"status": "unknown", "error": record.problem})
            continue
        started = {}
        for directory in sweeps.job_dirs(record.root):
            overrides = sweeps.job_overrides(directory)
            if overrides is not None:
                started[sweeps.normalise(overrides)] = directory
        for num, overrides in enumerate(record.jobs):
            if record.subdir == sweeps.JOB_NUM_SUBDIR:
                directory = record.root / str(num)
            else:
                directory = started.get(sweeps.normalise(overrides))
            if directory is not None and rel(directory) in jobs:
                continue
            if directory is not None and directory.is_dir():
                jobs[rel(directory)] = _no_results(rel(directory), directory)
                continue
            name = rel(directory) if directory is not None else f"{rel(record.root)}: job {num}"
            jobs[name] = Job(
                name,
                {
                    "status": "not started",
                    "error": f"never started: no job directory (job {num}: "
                    f"{' '.join(overrides)}); the sweep stopped before it ran",
                },
            )
    return sorted(jobs.values(), key=lambda j: _natural_key(Path(j.directory)))


def _no_results(name: str, directory: Path) -> Job:
    results = {**sweeps.job_config(directory), "status": "no results"}
    results["error"] = sweeps.why_no_results(directory)
    return Job(name, results)


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
VI_PARTS = ("expected_log_lik", "kl_prior")  # neg_elbo's two parts (--per-seed rows)
COLLAPSE_MARGIN = 0.02  # a seed within 2 accuracy points of chance (1 / num_classes) collapsed


def collapsed(results: dict[str, Any]) -> bool:
    """Whether a classification job ended at chance: accuracy <= 1/K + COLLAPSE_MARGIN."""
    k, acc = results.get("num_classes"), results.get("accuracy")
    return bool(k) and _number(acc) and acc <= 1.0 / k + COLLAPSE_MARGIN


def summarise(jobs: list[Job]) -> list[Row]:
    """Rows (sorted by experiment, method, schedule/algorithm, proposal) with their statistics."""
    rows: dict[tuple, Row] = {}
    for job in jobs:
        if "method" not in job.results:  # not started or unreadable: only listed, no row
            continue
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
    "expected_log_lik": "{:.0f}",
    "kl_prior": "{:.0f}",
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
    "expected_log_lik": "E log-lik",
    "kl_prior": "KL(q || prior)",
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
        n_collapsed = sum(collapsed(j.results) for j in row.jobs)
        seeds = f"{len(row.jobs)} ({n_collapsed} collapsed)" if n_collapsed else str(len(row.jobs))
        cells += [seeds, str(len(row.not_finished))]
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


def per_seed(rows: list[Row]) -> list[str]:
    """Markdown lines: one row per finished job (seed) of every row, collapsed seeds marked."""
    keys = [k for k in (*METRICS, *VI_PARTS) if any(k in j.results for r in rows for j in r.jobs)]
    lines = ["## Per seed", "", f"collapsed: accuracy within {COLLAPSE_MARGIN:.0%} of chance.", ""]
    lines.append("| row | seed | collapsed | " + " | ".join(HEADERS.get(k, k) for k in keys) + " |")
    lines.append("| " + " | ".join("---" for _ in range(3 + len(keys))) + " |")
    for row in rows:
        label = row.label if row.experiment == "-" else f"{row.experiment}/{row.label}"
        for job in sorted(row.jobs, key=lambda j: str(j.results.get("seed"))):
            r = job.results
            cells = [label, str(r.get("seed", "-")), "yes" if collapsed(r) else ""]
            cells += [
                FORMATS.get(k, "{:.4g}").format(r[k]) if _number(r.get(k)) else "-" for k in keys
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def markdown(rows: list[Row], jobs: list[Job], sweep_dir: Path, seeds: bool = False) -> str:
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
        *(per_seed(rows) if seeds else []),
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


def sweep_plots(rows: list[Row], out_dir: Path, sweep_dir: Path | None = None) -> list[Path]:
    """accuracy_vs_runtime.png (rmse for regression) and, with VI jobs, neg_elbo_vs_time.png,
    written into `out_dir` from the jobs under `sweep_dir` (default: `out_dir`)."""
    sweep_dir = out_dir if sweep_dir is None else sweep_dir
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
    path = plots.accuracy_vs_runtime(groups, out_dir / "accuracy_vs_runtime.png", metric=metric)
    written += [path] if path else []
    curves = []
    for row in rows:
        if "neg_elbo" not in row.stats:  # the VI methods' objective
            continue
        for job in row.jobs + row.not_finished:
            metrics = sweep_dir / job.directory / "metrics.jsonl"
            try:
                rows_read = plots.read_jsonl(metrics)
            except OSError:  # missing or unreadable: no curve for this job
                continue
            records = [
                r for r in rows_read if _number(r.get("neg_elbo")) and _number(r.get("time_s"))
            ]
            named = multi and row.experiment != "-"
            label = f"{row.experiment}: {row.variant}" if named else row.variant
            curves.append((label, [r["time_s"] for r in records], [r["neg_elbo"] for r in records]))
    path = plots.neg_elbo_vs_time(curves, out_dir / "neg_elbo_vs_time.png")
    written += [path] if path else []
    return written


def report(sweep_dir: Path, out_dir: Path | None = None, seeds: bool = False) -> dict[str, Any]:
    """Write table.md, table.tex and the sweep plots into `out_dir` (default: `sweep_dir`);
    `seeds` adds a row per seed. ReportError (one line) for a bad or unwritable directory."""
    sweep_dir = Path(sweep_dir)
    out_dir = sweep_dir if out_dir is None else Path(out_dir)
    if not sweep_dir.is_dir():
        raise ReportError(f"SWEEP_DIR={sweep_dir} is not a directory")
    try:
        jobs = collect(sweep_dir)
    except OSError as exc:
        raise ReportError(f"SWEEP_DIR={sweep_dir} cannot be read: {exc.strerror or exc}") from exc
    if not jobs:
        raise ReportError(
            f"SWEEP_DIR={sweep_dir} holds no results.json and no sweep (at any depth)"
        )
    check_writable(out_dir, "--out" if out_dir != sweep_dir else "SWEEP_DIR")
    rows = summarise(jobs)
    from bnn_bench import uncertainty_report  # evaluation.*: a table.md section and a plot

    try:
        text = markdown(rows, jobs, sweep_dir, seeds) + uncertainty_report.markdown(rows)
        atomic_write_bytes(out_dir / "table.md", text.encode())
        atomic_write_bytes(out_dir / "table.tex", latex(rows, jobs).encode())
        plots_written = sweep_plots(rows, out_dir, sweep_dir)
        files = [out_dir / "table.md", out_dir / "table.tex", *plots_written]
        shift_plot = uncertainty_report.accuracy_vs_shift(rows, out_dir / "accuracy_vs_shift.png")
        files += [shift_plot] if shift_plot else []
    except OSError as exc:
        raise ReportError(f"cannot write into {out_dir}: {exc.strerror or exc}") from exc
    return {"rows": rows, "jobs": jobs, "not_finished": _not_finished(jobs), "files": files}


def check_writable(directory: Path, key: str) -> None:
    """Refuse a directory the tables cannot be written into (a probe that follows no link)."""
    try:
        check_writable_dir(directory)
    except OSError as exc:
        hint = "; write the tables elsewhere with --out DIR" if key == "SWEEP_DIR" else ""
        raise ReportError(
            f"{key}={directory} is not writable ({exc.strerror or exc}){hint}"
        ) from exc


class ReportError(Exception):
    """Bad input to bnn-bench-report: one line, exit code 2."""


def main(argv: list[str] | None = None) -> None:
    """Console entry point `bnn-bench-report`: exit 0 when every job finished, 1 when any did
    not (the report is still written), 2 for bad input."""
    parser = argparse.ArgumentParser(
        prog="bnn-bench-report",
        description="Tables (table.md, table.tex) and plots of every job of the sweep(s) under a "
        "directory, grouped by method/schedule/proposal (SMC) or method/algorithm (VI); exit 1 "
        "when a job did not finish.",
    )
    parser.add_argument("sweep_dir", metavar="SWEEP_DIR", type=Path)
    parser.add_argument(
        "--out", metavar="DIR", type=Path, default=None, help="write here (default: SWEEP_DIR)"
    )
    parser.add_argument(
        "--per-seed",
        action="store_true",
        help="also a row per seed (with neg_elbo's parts; collapsed seeds marked)",
    )
    args = parser.parse_args(argv)
    try:
        out = report(args.sweep_dir, args.out, args.per_seed)
    except ReportError as exc:
        print(f"bnn-bench-report: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    print(markdown(out["rows"], out["jobs"], args.sweep_dir, args.per_seed), end="")
    for path in out["files"]:
        print(f"[bnn-bench-report] wrote {path}", file=sys.stderr)
    if out["not_finished"]:
        n, total = len(out["not_finished"]), len(out["jobs"])
        print(
            f"bnn-bench-report: {n} of {total} job(s) did not finish: see the last table of "
            f"{out['files'][0]}",
            file=sys.stderr,
        )
        sys.exit(EXIT_NOT_FINISHED)


if __name__ == "__main__":
    main()
