"""The SMC run: `sampler.step` driven by the shared host loop (inference/driver.py).

What is SMC's own here: which bucket the next step is compiled for, the per-iteration record
(info -> record, with the example-gradient count) and the divergence rule (every particle lost).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from bnn_bench.inference import driver
from bnn_bench.inference.smc import sampler, schedules
from bnn_bench.inference.smc.schedules import bucket_for

STATISTICS = ("step_size", "num_steps", "accept_mean", "noise", "entropy", "log_likelihood")


def run(
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
    """Run the schedule to its end; returns (state, status, counts).

    Fixed schedules: the host knows every M_k in advance and dispatches each step with its bucket.
    Adaptive schedules: the schedule state lives on the device; the host reads the batch size it
    asks for at each sync and dispatches the following steps with the smallest bucket that holds
    it. A step whose bucket is too small, or that comes after the schedule stopped, is a no-op on
    the device (not an iteration), so results do not depend on `sync_every`; such steps are counted
    in `wasted_steps`.

    Records: iter, batch_size, ess, resampled, energy_error_mean, energy_error_max, divergent,
    time_s, example_grads, plus wasted_steps and the statistics (STATISTICS) when the schedule or
    the move tuning reads them. Status as in `driver.run`. counts: iterations, example_grads
    (J * M_k * (n_k + 1) summed over the iterations done), wasted_steps. A run resumed from a
    checkpoint passes the saved `run_state` (its iteration, schedule and tuning live on the
    device), `counts` and `elapsed`.
    """
    num_particles = run_state.smc.particles.shape[0]
    statistics = sampler.reads_statistics(plan, config.proposal)
    fixed = None
    if plan.name in schedules.FIXED_SCHEDULES:
        fixed = schedules.fixed_batch_sizes(plan)
    counts = dict(counts or {"iterations": 0, "example_grads": 0, "wasted_steps": 0})
    dispatched = counts["iterations"]  # fixed schedules: steps dispatched (never wasted)
    wanted = [int(run_state.schedule.batch_size)]  # adaptive: the next M the device asked for

    def dispatch(state):
        nonlocal dispatched
        m = wanted[0] if fixed is None else int(fixed[dispatched])
        dispatched += 1
        return sampler.step(
            rng_key,
            state,
            x,
            y,
            log_target=log_target,
            config=config,
            plan=plan,
            bucket=bucket_for(m, bucket_sizes),
        )

    def to_records(infos, elapsed_s):
        active = [inf for inf in infos if inf.active]
        counts["wasted_steps"] += len(infos) - len(active)
        wanted[0] = int(infos[-1].next_batch_size)
        records = []
        for inf in active:
            counts["iterations"] = int(inf.iteration)
            counts["example_grads"] += (
                num_particles * int(inf.batch_size) * (int(inf.num_steps) + 1)
            )
            s = inf.smc
            record = {
                "iter": int(inf.iteration),
                "batch_size": int(inf.batch_size),
                "ess": float(s.ess),
                "resampled": bool(s.resampled),
                "energy_error_mean": float(s.energy_error_mean),
                "energy_error_max": float(s.energy_error_max),
                "divergent": int(s.divergent),
                "time_s": elapsed_s,
                "example_grads": counts["example_grads"],
            }
            if statistics:
                record["wasted_steps"] = counts["wasted_steps"]
                record.update({name: getattr(inf, name).item() for name in STATISTICS})
            records.append(record)
        return records, bool(infos[-1].stopped)

    def diverged(record):
        return not np.isfinite(record["ess"]) or record["ess"] == 0.0

    run_state, status, _ = driver.run(
        dispatch,
        run_state,
        num_iterations=plan.num_iterations,
        to_records=to_records,
        diverged=diverged,
        start=counts["iterations"],
        elapsed=elapsed,
        sync_every=sync_every,
        state_every=state_every,
        callback=callback,
        should_stop=should_stop,
    )
    return run_state, status, counts
