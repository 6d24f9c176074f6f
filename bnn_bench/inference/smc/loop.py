"""The SMC run loop: steps through a batch-size schedule and reports through a callback.

Steps are dispatched asynchronously; the host fetches their small info records only every
`sync_every` iterations (and when the callback asks for the state), so there is no host
round-trip per step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bnn_bench.inference.smc import sampler
from bnn_bench.inference.smc.schedules import bucket_for


def run(
    rng_key: jax.Array,
    state: sampler.SMCState,
    x: jax.Array,
    y: jax.Array,
    sizes: Sequence[int],
    *,
    log_target: Callable,
    config: sampler.SMCConfig,
    bucket_sizes: tuple[int, ...],
    callback: Callable[[dict, sampler.SMCState], bool | None] | None = None,
    sync_every: int = 10,
    state_at: Callable[[int], bool] | None = None,
    should_stop: Callable[[], bool] | None = None,
    start: int = 0,
    example_grads: int = 0,
    elapsed: float = 0.0,
) -> tuple[sampler.SMCState, str]:
    """Run iterations start+1 .. len(sizes); returns the final state and a status.

    `callback(record, state)` gets one record per iteration (iter, batch_size, ess, resampled,
    energy_error_mean, energy_error_max, divergent, time_s, example_grads); `state` is the
    current particle state at the last iteration, where `state_at(iteration)` is true, and when
    `should_stop()` turns true, and None otherwise. A callback returning True stops the run.
    Status: "finished", "diverged" (every particle), "stopped" (by the callback) or
    "interrupted" (by `should_stop`). Iteration k's randomness is fold_in(rng_key, k), so a run
    resumed with `start`, the state at `start` and the counters `example_grads` and `elapsed`
    (seconds) continues exactly as the uninterrupted run would have.
    """
    num_particles = state.particles.shape[0]
    grads_per_example = config.proposal.num_steps + 1
    num_iterations = len(sizes)
    pending: list[tuple[int, int, sampler.SMCInfo]] = []
    t0 = time.perf_counter() - elapsed
    for k in range(start + 1, num_iterations + 1):
        size = sizes[k - 1]
        key = jax.random.fold_in(rng_key, k)
        state, info = sampler.step(
            key,
            state,
            x,
            y,
            jnp.asarray(size, jnp.int32),
            log_target=log_target,
            config=config,
            bucket=bucket_for(int(size), bucket_sizes),
        )
        pending.append((k, int(size), info))
        stopping = should_stop is not None and should_stop()
        wants_state = k == num_iterations or stopping or (state_at is not None and state_at(k))
        if not (wants_state or k % sync_every == 0):
            continue
        infos = jax.device_get([p[2] for p in pending])
        elapsed = time.perf_counter() - t0
        all_diverged = False
        for (it, m, _), inf in zip(pending, infos, strict=True):
            example_grads += num_particles * m * grads_per_example
            record = {
                "iter": it,
                "batch_size": m,
                "ess": float(inf.ess),
                "resampled": bool(inf.resampled),
                "energy_error_mean": float(inf.energy_error_mean),
                "energy_error_max": float(inf.energy_error_max),
                "divergent": int(inf.divergent),
                "time_s": elapsed,
                "example_grads": example_grads,
            }
            all_diverged = all_diverged or not np.isfinite(inf.ess) or inf.ess == 0.0
            last = it == pending[-1][0]
            stop = callback(record, state if (last and wants_state) else None) if callback else None
            if all_diverged:
                return state, "diverged"
            if stop:
                return state, "stopped"
        pending.clear()
        if stopping:
            return state, "interrupted"
    return state, "finished"
