"""A job's life: SIGTERM and SIGINT (Ctrl-C) stop it cleanly, the statuses a run ends with, and
the failed jobs of a multirun.

While a job runs, either signal sets STOP: the run loop sees it at its next check, writes a
checkpoint and ends; the job writes results.json with status=interrupted, prints one line and
exits with 128 + the signal's number (143 for SIGTERM, 130 for SIGINT). Once the loop is over
(the final evaluation and posterior), there is no loop to look at STOP, so a signal raises
RunInterrupted at once instead of being ignored. After the method has returned its results
(only results.json and the plots remain to write) a signal is let through to a finished job.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from pathlib import Path

import numpy as np

from bnn_bench.errors import RunDiverged, RunInterrupted

# Set by SIGTERM or SIGINT: the run loop hands out its state, the method writes a checkpoint, and
# the job ends as interrupted.
STOP = threading.Event()
SIGNALS = (signal.SIGTERM, signal.SIGINT)

# Output directories of the jobs of this process that failed (a multirun goes on after them).
FAILED_JOBS: list[str] = []


class _Job:
    signum: int | None = None
    phase: str = "idle"  # "run" (the loop polls STOP), "final" (raise at once), "done"
    out_dir: Path | None = None
    iteration: int = 0
    raised: bool = False  # the handler raised during the final evaluation


_job = _Job()


def signal_name(signum: int | None) -> str:
    return signal.Signals(signum).name if signum else "a signal"


def exit_code(signum: int | None) -> int:
    """The exit status a shell reports for a job stopped by `signum` (128 + its number)."""
    return 128 + (signum or signal.SIGTERM)


def _checkpoint_iteration(out_dir: Path | None) -> int | None:
    path = Path(out_dir or ".") / "checkpoint.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            return int(json.loads(z["__meta__"].tobytes().decode())["iteration"])
    except Exception:  # noqa: BLE001 - no checkpoint, or none readable
        return None


def interrupted(where: str) -> RunInterrupted:
    """The job's RunInterrupted: which signal, where, and what a resume will start from."""
    name = signal_name(_job.signum)
    k = _checkpoint_iteration(_job.out_dir)
    if k is not None:
        then = (
            f"checkpoint at iteration {k} kept; continue with resume=true "
            f"hydra.run.dir={_job.out_dir}"
        )
    else:
        then = "no checkpoint was written; run it again to start afresh"
    exc = RunInterrupted(f"interrupted by {name} {where}; {then}")
    exc.signum = _job.signum or signal.SIGTERM
    return exc


def _handler(signum, frame) -> None:
    if _job.signum is None:
        _job.signum = signum
    STOP.set()
    if _job.phase == "final":
        _job.phase = "done"  # raise once; the job's clean-up then runs undisturbed
        _job.raised = True
        raise interrupted(f"during the final evaluation (after iteration {_job.iteration})")


@contextlib.contextmanager
def stop_on_signals(out_dir: Path | None = None):
    """While inside, SIGTERM and SIGINT stop the job cleanly instead of killing the process."""
    STOP.clear()
    _job.signum, _job.phase, _job.out_dir, _job.iteration = None, "run", out_dir, 0
    _job.raised = False
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    try:
        yield STOP
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _job.phase = "idle"


def loop_ended(iteration: int, out_dir: Path | None = None) -> None:
    """The run loop has ended normally: a signal that came too late for it stops the job now,
    and one arriving during the final evaluation raises at once."""
    _job.iteration = iteration
    if out_dir is not None:
        _job.out_dir = out_dir
    if STOP.is_set():
        raise interrupted(f"after iteration {iteration}, before the final evaluation")
    if _job.phase == "run":
        _job.phase = "final"


def results_ready() -> None:
    """The method has its results: let a later signal through to the finished job. A signal
    whose exception library code swallowed during the final evaluation (JAX's compilation cache
    catches every exception while it reads an entry) stops the job here instead."""
    if _job.raised:
        _job.raised = False
        raise interrupted(f"during the final evaluation (after iteration {_job.iteration})")
    _job.phase = "done"


def stop_message(iteration: int, out_dir: Path) -> RunInterrupted:
    """The RunInterrupted for a run loop that stopped on STOP (its checkpoint written)."""
    _job.iteration, _job.out_dir = iteration, out_dir
    return interrupted(f"at iteration {iteration}")


def raise_if_stopped(status: str, iteration: int, out_dir: Path, divergence: str) -> None:
    """Turn a run loop's "diverged" or "interrupted" status into the job's one-line error, and
    mark the loop's end (a signal from then on interrupts the final evaluation at once).

    `divergence` is the method's message; {iteration} in it is filled in."""
    if status == "diverged":
        raise RunDiverged(divergence.format(iteration=iteration))
    if status == "interrupted":
        raise stop_message(iteration, out_dir)
    loop_ended(iteration, out_dir)


def status_of(exc: BaseException) -> str:
    """results.json's status for a job that ended with `exc`."""
    return {RunDiverged: "diverged", RunInterrupted: "interrupted"}.get(type(exc), "failed")


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
