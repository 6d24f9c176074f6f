"""A job's life: the stop signal (SIGTERM), the statuses a run ends with, and failed sweep jobs."""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path

from bnn_bench.errors import RunDiverged, RunInterrupted

# Set by SIGTERM (a preempted cluster job): the run loop hands out its state, the method writes a
# checkpoint, and the job ends as interrupted.
STOP = threading.Event()

# Output directories of the jobs of this process that failed (a multirun goes on after them).
FAILED_JOBS: list[str] = []


@contextlib.contextmanager
def stop_on_signals():
    """While inside, SIGTERM sets STOP instead of killing the process."""
    STOP.clear()
    previous = signal.signal(signal.SIGTERM, lambda *_: STOP.set())
    try:
        yield STOP
    finally:
        signal.signal(signal.SIGTERM, previous)


def raise_if_stopped(status: str, iteration: int, out_dir: Path, divergence: str) -> None:
    """Turn a run loop's "diverged" or "interrupted" status into the job's one-line error.

    `divergence` is the method's message; {iteration} in it is filled in."""
    if status == "diverged":
        raise RunDiverged(divergence.format(iteration=iteration))
    if status == "interrupted":
        raise RunInterrupted(
            f"interrupted by SIGTERM at iteration {iteration}; checkpoint written; "
            f"continue with resume=true hydra.run.dir={out_dir}"
        )


def status_of(exc: BaseException) -> str:
    """results.json's status for a job that ended with `exc`."""
    return {RunDiverged: "diverged", RunInterrupted: "interrupted"}.get(type(exc), "failed")


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
