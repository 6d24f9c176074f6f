"""Data-annealing schedules: the batch size M_k for iterations k = 1..K, and the batch buckets.

The fixed schedules (full, constant, ctr, linear) are functions of k alone, so the whole sequence
is known before the run; buckets keep the number of compiled step functions at about
log2(N / C) + 2 whatever K is.

The adaptive schedules (automated, sda, ctr_adaptive; our formulation, docs/algorithms.md) choose
M_{k+1} from statistics of step k. They are pure functions

    next_batch_size(plan, state, stats) -> (batch_size, new_state, stop)

of a static `SchedulePlan` (hashable: part of the jit cache key), a `ScheduleState` of device
arrays (a pytree: it lives on the device between steps and can be checkpointed) and the last
step's `ScheduleStats`. They are written in jax.numpy, so the same function runs inside the jitted
step and, in tests, on synthetic statistics.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

FIXED_SCHEDULES = ("full", "constant", "ctr", "linear")
ADAPTIVE_SCHEDULES = ("automated", "sda", "ctr_adaptive")
SCHEDULES = FIXED_SCHEDULES + ADAPTIVE_SCHEDULES
SIGNALS = ("entropy", "loglik", "noise")  # ctr_adaptive's switch signal (schedule.signal)


def refine_start(num_iterations: int, refine_at: float) -> int:
    """Last iteration of the minibatch phase: floor(r K); iterations after it use the full data."""
    return int(math.floor(refine_at * num_iterations + 1e-9))


def batch_sizes(
    name: str,
    *,
    num_data: int,
    num_iterations: int,
    batch_size: int = 500,
    refine_at: float = 0.9,
    slope: float | None = None,
) -> np.ndarray:
    """M_k for k = 1..K (int64 array of length K) under schedule `name`."""
    k = np.arange(1, num_iterations + 1)
    n, c = num_data, min(batch_size, num_data)
    rk = refine_start(num_iterations, refine_at)
    if name == "full":
        sizes = np.full(num_iterations, n)
    elif name == "constant":
        sizes = np.full(num_iterations, c)
    elif name == "ctr":
        sizes = np.where(k <= rk, c, n)
    elif name == "linear":
        kappa = (n - c) / max(rk, 1) if slope is None else slope
        ramp = np.minimum(n, np.floor(c + kappa * (k - 1)))
        sizes = np.where(k <= rk, ramp, n)
    else:
        raise ValueError(f"unknown schedule {name!r}; choose one of: {', '.join(FIXED_SCHEDULES)}")
    return sizes.astype(np.int64)


def iterations_for_budget(
    name: str, budget: int, *, per_row: int, max_iterations: int = 10**6, **schedule
) -> int:
    """The smallest K whose fixed schedule `name` spends at least `budget` example-gradients,
    per_row * sum_k M_k (per_row = J * gradients per move); `schedule`: batch_sizes's keywords.

    The cost of K iterations grows with K for every fixed schedule, so K is found by bisection.
    """

    def cost(k: int) -> int:
        return per_row * int(batch_sizes(name, num_iterations=k, **schedule).sum())

    lo, hi = 1, 1
    while cost(hi) < budget:
        if hi >= max_iterations:
            raise ValueError(f"a budget of {budget} needs more than {max_iterations} iterations")
        lo, hi = hi + 1, min(2 * hi, max_iterations)
    while lo < hi:  # cost(hi) >= budget; cost(k) < budget for every k < lo
        mid = (lo + hi) // 2
        if cost(mid) >= budget:
            hi = mid
        else:
            lo = mid + 1
    return hi


def buckets(num_data: int, batch_size: int) -> tuple[int, ...]:
    """Padded batch shapes: C, 2C, 4C, ... below N, then N."""
    sizes, b = [], min(batch_size, num_data)
    while b < num_data:
        sizes.append(b)
        b *= 2
    return (*sizes, num_data)


def bucket_for(size: int, bucket_sizes: tuple[int, ...]) -> int:
    """Smallest bucket that holds `size` rows."""
    for b in bucket_sizes:
        if b >= size:
            return b
    raise ValueError(f"batch size {size} exceeds the largest bucket {bucket_sizes[-1]}")


# ---------------------------------------------------------------------------------------------
# Adaptive schedules
# ---------------------------------------------------------------------------------------------


class SchedulePlan(NamedTuple):
    """Static settings of a schedule, fixed or adaptive (hashable: part of the jit cache key).

    No defaults: every value comes from the config (bnn_bench/config.py holds the defaults)."""

    name: str
    num_data: int  # N
    num_iterations: int  # K: the most iterations a run may take
    batch_size: int  # C: the first batch size
    noise_tol: float = 1.0  # automated (and signal=noise): nats of weight-increment noise
    entropy_tol: float = 0.01  # sda (and signal=entropy): |H_k - H_{k-w}| / D
    window: int = 5  # w
    growth: float = 2.0  # M <- min(N, ceil(growth * M))
    refine_iterations: int | None = None  # ctr_adaptive: full-batch iterations after the
    # switch; None: K - floor(refine_at K), as ctr
    signal: str = "loglik"  # ctr_adaptive's switch signal, one of SIGNALS
    loglik_tol: float = 0.01  # signal=loglik: nats per example gained over the last window
    refine_at: float = 0.9  # r of the fixed schedules (ctr, linear)
    slope: float | None = None  # kappa of linear


def refine_iterations(plan: SchedulePlan) -> int:
    """ctr_adaptive's full-batch iterations after the switch (None: K - floor(r K), as ctr)."""
    if plan.refine_iterations is not None:
        return plan.refine_iterations
    return max(1, plan.num_iterations - refine_start(plan.num_iterations, plan.refine_at))


def fixed_batch_sizes(plan: SchedulePlan) -> np.ndarray:
    """M_k for k = 1..K of a fixed schedule's plan."""
    return batch_sizes(
        plan.name,
        num_data=plan.num_data,
        num_iterations=plan.num_iterations,
        batch_size=plan.batch_size,
        refine_at=plan.refine_at,
        slope=plan.slope,
    )


class ScheduleState(NamedTuple):
    """Device state of an adaptive schedule (all arrays, so a pytree)."""

    iteration: jnp.ndarray  # int32: iterations done
    batch_size: jnp.ndarray  # int32: M for the next iteration
    stopped: jnp.ndarray  # bool: the schedule has finished (no further iterations)
    history: jnp.ndarray  # (2w,) float32 ring of the signal since the batch size last changed
    count: jnp.ndarray  # int32: signal values recorded since the batch size last changed
    switched_at: jnp.ndarray  # int32: ctr_adaptive's last minibatch iteration (0: not yet)


class ScheduleStats(NamedTuple):
    """What a schedule reads from the step it follows (device scalars)."""

    noise: jnp.ndarray  # median over particles of the weight increment's batch standard error
    entropy: jnp.ndarray  # H_k / D: entropy per dimension of the diagonal Gaussian fit
    log_likelihood: jnp.ndarray  # weighted mean log-likelihood per example on B_k at theta'


def first_batch_size(plan: SchedulePlan) -> int:
    """M_1: C (capped at N)."""
    return min(plan.batch_size, plan.num_data)


def init_state(plan: SchedulePlan) -> ScheduleState:
    """The state before iteration 1."""
    return ScheduleState(
        iteration=jnp.asarray(0, jnp.int32),
        batch_size=jnp.asarray(first_batch_size(plan), jnp.int32),
        stopped=jnp.asarray(False),
        history=jnp.zeros(2 * plan.window, jnp.float32),
        count=jnp.asarray(0, jnp.int32),
        switched_at=jnp.asarray(0, jnp.int32),
    )


def reachable_batch_sizes(plan: SchedulePlan) -> tuple[int, ...]:
    """Every batch size the schedule can choose, ascending (for the buckets it needs)."""
    c, n = first_batch_size(plan), plan.num_data
    if plan.name == "ctr_adaptive":
        return tuple(sorted({c, n}))
    sizes = [c]
    while sizes[-1] < n:
        sizes.append(_grow(sizes[-1], plan.growth, n))
    return tuple(sizes)


def _grow(m, growth: float, n: int):
    """min(N, ceil(growth * M)), and at least M + 1 (so that growth always makes progress)."""
    if isinstance(m, int):
        return min(n, max(m + 1, math.ceil(growth * m - 1e-9)))
    grown = jnp.ceil(growth * m.astype(jnp.float32) - 1e-4).astype(jnp.int32)
    return jnp.minimum(n, jnp.maximum(m + 1, grown))


def _record(plan: SchedulePlan, state: ScheduleState, value):
    """Push `value` into the ring; returns (history, count)."""
    size = 2 * plan.window
    history = state.history.at[state.count % size].set(jnp.asarray(value, jnp.float32))
    return history, state.count + 1


def _lagged(plan: SchedulePlan, history, count, lag: int):
    """The value recorded `lag` pushes before the newest one (valid when count > lag)."""
    size = 2 * plan.window
    return history[(count - 1 - lag) % size]


def entropy_settled(plan: SchedulePlan, history, count):
    """|H_k - H_{k-w}| / D < entropy_tol, both measured on the current batch size."""
    w = plan.window
    change = jnp.abs(_lagged(plan, history, count, 0) - _lagged(plan, history, count, w))
    return (count > w) & (change < plan.entropy_tol)


def loglik_plateaued(plan: SchedulePlan, history, count):
    """Mean of the last w values minus the mean of the w before < loglik_tol (nats/example)."""
    w = plan.window
    recent = jnp.mean(jnp.stack([_lagged(plan, history, count, i) for i in range(w)]))
    before = jnp.mean(jnp.stack([_lagged(plan, history, count, w + i) for i in range(w)]))
    return (count >= 2 * w) & (recent - before < plan.loglik_tol)


def next_batch_size(plan: SchedulePlan, state: ScheduleState, stats: ScheduleStats):
    """After iteration state.iteration + 1: (M for the next iteration, new state, stop flag)."""
    k = state.iteration + 1
    m, n = state.batch_size, plan.num_data
    keep = dict(history=state.history, count=state.count, switched_at=state.switched_at)
    if plan.name == "automated":
        # Double M while the likelihood part of the weight increment is noisier than noise_tol.
        grow = jnp.isfinite(stats.noise) & (stats.noise > plan.noise_tol) & (m < n)
        new_m = jnp.where(grow, _grow(m, plan.growth, n), m)
        stop = jnp.asarray(False)
    elif plan.name == "sda":
        history, count = _record(plan, state, stats.entropy)
        settled = entropy_settled(plan, history, count)
        grow = settled & (m < n)
        stop = settled & (m >= n)
        new_m = jnp.where(grow, _grow(m, plan.growth, n), m)
        keep.update(history=history, count=jnp.where(grow, 0, count))
    elif plan.name == "ctr_adaptive":
        refine = min(refine_iterations(plan), plan.num_iterations)
        signal_value = {
            "entropy": stats.entropy,
            "loglik": stats.log_likelihood,
            "noise": stats.noise,
        }[plan.signal]
        history, count = _record(plan, state, signal_value)
        if plan.signal == "entropy":
            fired = entropy_settled(plan, history, count)
        elif plan.signal == "loglik":
            fired = loglik_plateaued(plan, history, count)
        else:
            fired = jnp.isfinite(stats.noise) & (stats.noise > plan.noise_tol)
        deadline = k >= plan.num_iterations - refine  # the refinement must fit in K
        minibatch = m < n
        switch = minibatch & (fired | deadline)
        switched_at = jnp.where(switch, k, state.switched_at)
        new_m = jnp.where(switch, n, m)
        stop = ~minibatch & (k - state.switched_at >= refine)
        keep.update(history=history, count=count, switched_at=switched_at)
    else:
        raise ValueError(f"{plan.name!r} is not an adaptive schedule: {ADAPTIVE_SCHEDULES}")
    stop = stop | (k >= plan.num_iterations)
    new_state = ScheduleState(
        iteration=jnp.asarray(k, jnp.int32),
        batch_size=jnp.asarray(new_m, jnp.int32),
        stopped=jnp.asarray(stop),
        **keep,
    )
    return new_state.batch_size, new_state, new_state.stopped
