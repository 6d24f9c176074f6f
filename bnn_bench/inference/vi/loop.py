"""The VI run loop: T iterations of one algorithm, reporting through a callback.

As in the SMC loop, steps are dispatched asynchronously and the host fetches their small info
records only every `sync_every` iterations (and when the callback needs the state).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import ModuleType

import jax

from bnn_bench.inference.vi.family import VIConfig, example_grads_per_step


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
    state_at: Callable[[int], bool] | None = None,
    should_stop: Callable[[], bool] | None = None,
    max_rejected: int = 10,  # run.py's message quotes this number
    start: int = 0,
    example_grads: int = 0,
    elapsed: float = 0.0,
    rejected_run: int = 0,
):
    """Run steps start+1 .. num_iterations; returns (state, "finished" | "diverged" | "stopped"
    | "interrupted").

    `callback(record, state)` gets one record per iteration (iter, batch_size, neg_elbo,
    expected_log_lik, kl_prior, score_loss, rejected, rejected_run, time_s, example_grads);
    `state` is passed at the last iteration, where `state_at(iteration)` is true and when
    `should_stop()` turns true, None otherwise. A callback returning True stops the run.
    "diverged": the update was non-finite (and rejected) `max_rejected` times in a row. Step k's
    randomness is fold_in(rng_key, k): a run resumed with `start`, the state there and the
    counters continues exactly.
    """
    batch = min(config.batch_size, x.shape[0])
    pending = []
    t0 = time.perf_counter() - elapsed
    for k in range(start + 1, num_iterations + 1):
        state, info = algorithm.step(
            jax.random.fold_in(rng_key, k), state, x, y, log_target=log_target, config=config
        )
        pending.append((k, info))
        stopping = should_stop is not None and should_stop()
        wants_state = k == num_iterations or stopping or (state_at is not None and state_at(k))
        if not (wants_state or k % sync_every == 0):
            continue
        infos = jax.device_get([p[1] for p in pending])
        elapsed = time.perf_counter() - t0
        for (it, _), inf in zip(pending, infos, strict=True):
            example_grads += example_grads_per_step(config, x.shape[0], it)
            record = {
                "iter": it,
                "batch_size": batch,
                "neg_elbo": float(inf.neg_elbo),
                "expected_log_lik": float(inf.expected_log_lik),
                "kl_prior": float(inf.kl_prior),
                "score_loss": float(inf.score_loss),
                "rejected": bool(inf.rejected),
                "time_s": elapsed,
                "example_grads": example_grads,
            }
            rejected_run = rejected_run + 1 if record["rejected"] else 0
            record["rejected_run"] = rejected_run
            last = it == pending[-1][0]
            stop = callback(record, state if (last and wants_state) else None) if callback else None
            if rejected_run >= max_rejected:
                return state, "diverged"
            if stop:
                return state, "stopped"
        pending.clear()
        if stopping:
            return state, "interrupted"
    return state, "finished"
