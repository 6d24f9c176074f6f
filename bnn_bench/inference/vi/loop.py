"""The VI run loop: T iterations of one algorithm, reporting through a callback.

As in the SMC loop, steps are dispatched asynchronously and the host fetches their small info
records only every `sync_every` iterations (and when the callback needs the state).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import ModuleType

import jax

from bnn_bench.inference.vi.family import VIConfig


def run(
    rng_key: jax.Array,
    algorithm: ModuleType,
    state,
    x: jax.Array,
    y: jax.Array,
    num_iterations: int,
    *,
    log_target: Callable,
    config: VIConfig,
    callback: Callable | None = None,
    sync_every: int = 10,
    state_every: int = 0,
    max_rejected: int = 10,  # run.py's message quotes this number
):
    """Run `num_iterations` steps; returns (state, "finished" | "diverged" | "stopped").

    `callback(record, state)` gets one record per iteration (iter, batch_size, neg_elbo,
    score_loss, rejected, time_s, example_grads); `state` is passed at iterations divisible by
    `state_every` and at the last one, None otherwise. A callback returning True stops the run.
    "diverged": the update was non-finite (and rejected) `max_rejected` times in a row.
    """
    batch = min(config.batch_size, x.shape[0])
    pending = []
    example_grads = 0
    rejected_run = 0
    t0 = time.perf_counter()
    for k in range(1, num_iterations + 1):
        state, info = algorithm.step(
            jax.random.fold_in(rng_key, k), state, x, y, log_target=log_target, config=config
        )
        pending.append((k, info))
        wants_state = k == num_iterations or (state_every > 0 and k % state_every == 0)
        if not (wants_state or k % sync_every == 0):
            continue
        infos = jax.device_get([p[1] for p in pending])
        elapsed = time.perf_counter() - t0
        for (it, _), inf in zip(pending, infos, strict=True):
            example_grads += config.num_samples * batch
            record = {
                "iter": it,
                "batch_size": batch,
                "neg_elbo": float(inf.neg_elbo),
                "score_loss": float(inf.score_loss),
                "rejected": bool(inf.rejected),
                "time_s": elapsed,
                "example_grads": example_grads,
            }
            rejected_run = rejected_run + 1 if record["rejected"] else 0
            last = it == pending[-1][0]
            stop = callback(record, state if (last and wants_state) else None) if callback else None
            if rejected_run >= max_rejected:
                return state, "diverged"
            if stop:
                return state, "stopped"
        pending.clear()
    return state, "finished"
