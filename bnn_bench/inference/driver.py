"""The host loop every method shares: dispatch steps, sync, hand out the state, stop.

A method supplies two small pieces: `dispatch(state) -> (state, info)` (one jitted step, called
asynchronously: nothing waits for the device) and `to_records(infos, elapsed) -> (records, done)`
(turns the small info records of the steps since the last sync into one metrics record per
iteration; `done` says that the method has finished early, e.g. an adaptive schedule stopped).
The loop syncs every `sync_every` dispatches and at every multiple of `state_every` iterations (so
that the callback gets the state there, for checkpoints and evaluations), checks `should_stop`
after every dispatch, and asks `diverged(record)` whether the run has failed. There is no host
round-trip per step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax

Record = dict[str, Any]


def run(
    dispatch: Callable[[Any], tuple[Any, Any]],
    state: Any,
    *,
    num_iterations: int,
    to_records: Callable[[list, float], tuple[list[Record], bool]],
    diverged: Callable[[Record], bool],
    start: int = 0,
    elapsed: float = 0.0,
    sync_every: int = 10,
    state_every: int = 0,
    callback: Callable[[Record, Any], bool | None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[Any, str, int]:
    """Run iterations start+1 .. num_iterations; returns (state, status, iterations done).

    `callback(record, state)` gets every record; `state` is the current state for the last record
    of a sync that ends the run, is interrupted, or lands on a multiple of `state_every`, and None
    otherwise. A callback returning True stops the run. Status: "finished" (all iterations),
    "stopped" (the method finished early, or the callback asked to), "interrupted" (`should_stop()`
    turned true; the callback got the state at the last iteration done) or "diverged". A step
    must not depend on how often the host syncs, so a resumed run (`start`, the state there and
    `elapsed` seconds) continues exactly as the uninterrupted one.
    """
    done = start
    t0 = time.perf_counter() - elapsed
    while done < num_iterations:
        segment = min(sync_every, num_iterations - done)
        if state_every > 0:
            segment = min(segment, state_every - done % state_every)
        pending, stopping = [], False
        for _ in range(segment):
            state, info = dispatch(state)
            pending.append(info)
            if should_stop is not None and should_stop():
                stopping = True
                break
        records, finished_early = to_records(jax.device_get(pending), time.perf_counter() - t0)
        for j, record in enumerate(records):
            done = record["iter"]
            last = j == len(records) - 1
            wants_state = last and (
                finished_early
                or stopping
                or done == num_iterations
                or (state_every > 0 and done % state_every == 0)
            )
            stop = callback(record, state if wants_state else None) if callback else None
            if diverged(record):
                return state, "diverged", done
            if stop:
                return state, "stopped", done
        if finished_early:
            return state, ("finished" if done == num_iterations else "stopped"), done
        if stopping:
            return state, "interrupted", done
    return state, "finished", done
