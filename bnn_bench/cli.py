"""The console entry `bnn-bench`: preflight, Hydra, exit codes and the one-line summary.

Exit codes: 0 finished; 2 bad input (one line naming the key or file, before any work); 1 a job
failed or diverged (a multirun goes on and lists its failed jobs at the end); 143 interrupted by
SIGTERM (a checkpoint was written).
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from bnn_bench.errors import BnnBenchError, RunDiverged, RunInterrupted
from bnn_bench.lifecycle import FAILED_JOBS, one_line
from bnn_bench.preflight import CONFIG_DIR, preflight

EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 143  # 128 + SIGTERM, as a shell reports a job killed by it


def say(message: str) -> None:
    print(f"bnn-bench: error: {message}", file=sys.stderr)


def print_summary(results: dict[str, Any], out_dir: Path) -> None:
    keys = ("accuracy", "rmse", "nll", "ece", "brier", "runtime_s", "example_grads", "ess_final")
    keys += ("neg_elbo", "peak_rss_mb")
    shown = ", ".join(
        f"{k}={results[k]:.4g}" if isinstance(results[k], float) else f"{k}={results[k]}"
        for k in keys
        if k in results
    )
    print(f"[bnn-bench] {results['method']} done: {shown}", file=sys.stderr)
    print(f"[bnn-bench] results: {out_dir / 'results.json'}", file=sys.stderr)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def hydra_entry(cfg: DictConfig) -> None:
    """One job of Hydra's (multi)run: run it and turn its outcome into an exit code."""
    from hydra.core.hydra_config import HydraConfig

    from bnn_bench.run import run_job

    multirun = HydraConfig.get().mode.name == "MULTIRUN"
    out_dir = HydraConfig.get().runtime.output_dir
    try:
        results = run_job(cfg)
        print_summary(results, Path(out_dir))
    except BnnBenchError as exc:
        say(str(exc))
        if not multirun:
            sys.exit(EXIT_USAGE)
        FAILED_JOBS.append(out_dir)
    except RunInterrupted as exc:
        say(str(exc))
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:
        if os.environ.get("BNN_BENCH_TRACEBACK"):
            traceback.print_exc()
        say(str(exc) if isinstance(exc, RunDiverged) else one_line(exc))
        if not multirun:
            sys.exit(EXIT_FAILED)
        FAILED_JOBS.append(out_dir)


def main(argv: list[str] | None = None) -> None:
    """Console entry point `bnn-bench`."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        preflight(argv)
    except BnnBenchError as exc:
        say(str(exc))
        sys.exit(EXIT_USAGE)
    sys.argv = [sys.argv[0], *argv]
    hydra_entry()
    if FAILED_JOBS:
        say(f"{len(FAILED_JOBS)} job(s) failed: {', '.join(FAILED_JOBS)}")
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy's: Hydra launchers that pickle the
    # job function (joblib, submitit) need it to live in bnn_bench.cli.
    from bnn_bench.cli import main as _main

    _main()
