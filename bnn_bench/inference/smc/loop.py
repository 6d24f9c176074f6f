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

from bnn_bench.inference.smc import sampler, schedules
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


def run_scheduled(
    rng_key: jax.Array,
    run_state: sampler.RunState,
    x: jax.Array,
    y: jax.Array,
    *,
    log_target: Callable,
    config: sampler.SMCConfig,
    plan: schedules.SchedulePlan,
    bucket_sizes: tuple[int, ...],
    callback: Callable[[dict, sampler.RunState], bool | None] | None = None,
    sync_every: int = 10,
    state_every: int = 0,
    should_stop: Callable[[], bool] | None = None,
    counts: dict | None = None,
    elapsed: float = 0.0,
) -> tuple[sampler.RunState, str, dict]:
    """Run an adaptive schedule and/or tuned proposal; returns (state, status, counts).

    The schedule state and the proposal tuning live on the device: each step computes its own
    batch size and the next one. The host syncs every `sync_every` dispatched steps, reads the
    batch size the schedule asks for next and dispatches the following steps with the smallest
    bucket that holds it. A step whose bucket is too small, or that comes after the schedule
    stopped, is a no-op on the device (not counted as an iteration), so results do not depend on
    `sync_every`; such steps are counted in `wasted_steps`. For fixed schedules the host knows
    every M_k in advance and never wastes a step.

    status: "finished" (K iterations), "stopped" (the schedule stopped early, or the callback
    asked to), "interrupted" (`should_stop()` turned true; the callback got the state at the last
    iteration done) or "diverged". counts: iterations, example_grads (J * M_k * (n_k + 1) summed
    over the iterations done), wasted_steps. A run resumed from a checkpoint passes the saved
    `run_state` (its iteration, schedule and tuning live on the device), `counts` and `elapsed`.
    """
    num_particles = run_state.smc.particles.shape[0]
    num_iterations = plan.num_iterations
    fixed = None
    if plan.name in schedules.FIXED_SCHEDULES:
        fixed = schedules.batch_sizes(
            plan.name,
            num_data=plan.num_data,
            num_iterations=num_iterations,
            batch_size=plan.batch_size,
            refine_at=plan.refine_at,
            slope=plan.slope,
        )
    counts = dict(counts or {"iterations": 0, "example_grads": 0, "wasted_steps": 0})
    if counts["iterations"] >= num_iterations:
        return run_state, "finished", counts
    wanted = (
        int(run_state.schedule.batch_size) if fixed is None else int(fixed[counts["iterations"]])
    )
    t0 = time.perf_counter() - elapsed
    while counts["iterations"] < num_iterations:
        done = counts["iterations"]
        segment = min(sync_every, num_iterations - done)
        if state_every > 0:
            segment = min(segment, state_every - done % state_every)
        pending = []
        for i in range(segment):
            m = wanted if fixed is None else int(fixed[done + i])
            run_state, info = sampler.scheduled_step(
                rng_key,
                run_state,
                x,
                y,
                log_target=log_target,
                config=config,
                plan=plan,
                bucket=bucket_for(m, bucket_sizes),
            )
            pending.append(info)
        infos = jax.device_get(pending)
        elapsed = time.perf_counter() - t0
        active = [inf for inf in infos if inf.active]
        counts["wasted_steps"] += len(infos) - len(active)
        last = infos[-1]
        stopped = bool(last.stopped)
        stopping = should_stop is not None and should_stop()
        for j, inf in enumerate(active):
            it = int(inf.iteration)
            counts["iterations"] = it
            counts["example_grads"] += (
                num_particles * int(inf.batch_size) * (int(inf.num_steps) + 1)
            )
            s = inf.smc
            record = {
                "iter": it,
                "batch_size": int(inf.batch_size),
                "ess": float(s.ess),
                "resampled": bool(s.resampled),
                "energy_error_mean": float(s.energy_error_mean),
                "energy_error_max": float(s.energy_error_max),
                "divergent": int(s.divergent),
                "time_s": elapsed,
                "example_grads": counts["example_grads"],
                "wasted_steps": counts["wasted_steps"],
                "step_size": float(inf.step_size),
                "num_steps": int(inf.num_steps),
                "accept_mean": float(inf.accept_mean),
                "noise": float(inf.noise),
                "entropy": float(inf.entropy),
                "log_likelihood": float(inf.log_likelihood),
            }
            is_last = j == len(active) - 1
            final = is_last and (stopped or it == num_iterations)
            wants_state = is_last and (
                final or stopping or (state_every > 0 and it % state_every == 0)
            )
            stop = callback(record, run_state if wants_state else None) if callback else None
            if not np.isfinite(s.ess) or s.ess == 0.0:
                return run_state, "diverged", counts
            if stop:
                return run_state, "stopped", counts
        if stopping and not stopped and counts["iterations"] < num_iterations:
            return run_state, "interrupted", counts
        if stopped:
            return (
                run_state,
                ("finished" if counts["iterations"] == num_iterations else "stopped"),
                counts,
            )
        wanted = int(last.next_batch_size)
    return run_state, "finished", counts
