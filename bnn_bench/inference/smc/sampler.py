"""SMC over network weights with data annealing: pure `init` and `step` functions (blackjax shape).

One step (algorithms.md): draw a fresh batch B_k of M_k rows shared by all particles, move every
particle with leapfrog on l_{B_k}, add the energy change to its log-weight, drop non-finite
particles (log-weight -inf), and resample when ESS < threshold * J.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from blackjax.smc import resampling as bj_resampling

from bnn_bench.inference.mapping import map_particles
from bnn_bench.inference.smc import schedules
from bnn_bench.inference.smc.proposals import (
    Proposal,
    Tuning,
    accept_probability,
    adapt,
    diagonal_inverse_mass,
    init_tuning,
    leapfrog_move,
    move_parameters,
)
from bnn_bench.inference.smc.schedules import SchedulePlan, ScheduleState, ScheduleStats
from bnn_bench.metrics import ess

RESAMPLERS: dict[str, Callable] = {
    "systematic": bj_resampling.systematic,
    "multinomial": bj_resampling.multinomial,
    "stratified": bj_resampling.stratified,
    "residual": bj_resampling.residual,
}
WEIGHTS = ("energy", "annealed")


class SMCState(NamedTuple):
    """Weighted particle cloud."""

    particles: jax.Array  # (J, D)
    log_weights: jax.Array  # (J,) unnormalised; -inf for divergent particles
    log_target: jax.Array  # (J,) l_{B_{k-1}} at the current particles (for weights="annealed")


class SMCInfo(NamedTuple):
    """What one step measured; all device scalars so the loop can fetch them lazily."""

    ess: jax.Array
    resampled: jax.Array
    energy_error_mean: jax.Array
    energy_error_max: jax.Array
    divergent: jax.Array
    log_target_mean: jax.Array  # weighted mean of l_{B_k}(theta') before resampling


class SMCConfig(NamedTuple):
    """Static settings of the sampler (hashable; part of the jit cache key)."""

    proposal: Proposal
    resample_threshold: float = 0.5
    resampler: str = "systematic"
    weights: str = "energy"
    particle_chunk: int | None = None  # particles moved at once (memory bound); None = all
    particle_map: str = "vmap"  # vmap (dense models) | unroll (convolutions on CPU)
    data_chunk: int | None = None  # batch rows per gradient evaluation (memory bound); None = all


def init(rng_key: jax.Array, prior_std: jax.Array, log_prior: Callable, num_particles: int):
    """Particles from the N(0, diag(prior_std^2)) prior with uniform log-weights."""
    particles = jax.random.normal(rng_key, (num_particles, prior_std.size)) * prior_std
    return SMCState(
        particles=particles,
        log_weights=jnp.zeros(num_particles, particles.dtype),
        log_target=jax.vmap(log_prior)(particles),
    )


def select_batch(rng_key: jax.Array, num_data: int, bucket: int, batch_size: jax.Array):
    """Indices of a fresh batch without replacement, padded to `bucket` rows, and its mask."""
    if bucket >= num_data:
        idx = jnp.arange(num_data)
    else:
        idx = jax.random.permutation(rng_key, num_data)[:bucket]
    mask = jnp.arange(idx.shape[0]) < batch_size
    return idx, mask


class MoveStats(NamedTuple):
    """Per-particle quantities of one move that the schedules and the proposal tuning read."""

    finite: jax.Array  # (J,) the particle's move was finite
    accept: jax.Array  # (J,) min(1, exp(-Delta H)), 0 when divergent
    initial: jax.Array  # (J, D) positions before the move
    moved: jax.Array  # (J, D) positions after the move (before resampling)
    momenta: jax.Array  # (J, D) final momenta
    noise: jax.Array  # median standard error of the weight increment's likelihood part
    entropy: jax.Array  # H / D of the weighted moved cloud (diagonal Gaussian fit)
    log_likelihood: jax.Array  # weighted mean per-example log-likelihood on B_k at theta'


def _step(
    rng_key,
    state: SMCState,
    x,
    y,
    batch_size,
    *,
    log_target: Callable,
    config: SMCConfig,
    bucket: int,
    step_size=None,
    num_steps=None,
    inverse_mass=None,
    with_terms: bool = False,
) -> tuple[SMCState, SMCInfo, MoveStats]:
    """The SMC iteration itself (traced inside `step`).

    With `with_terms`, `log_target` returns (l_B, per-example log-likelihoods of the padded batch,
    0 on padded rows); the per-example terms feed the automated schedule's noise estimate.
    """
    key_batch, key_move, key_resample = jax.random.split(rng_key, 3)
    num_particles = state.particles.shape[0]
    idx, mask = select_batch(key_batch, x.shape[0], bucket, batch_size)
    batch = make_batch(x[idx], y[idx], mask, config.data_chunk)  # split once, not per gradient

    def value_and_grad(theta):
        return batch_value_and_grad(log_target, theta, batch, batch_size, has_aux=with_terms)

    def move_one(args):
        key, theta = args
        return leapfrog_move(
            value_and_grad,
            key,
            theta,
            config.proposal,
            step_size=step_size,
            num_steps=num_steps,
            inverse_mass=inverse_mass,
            terms=True if with_terms else None,
        )

    keys = jax.random.split(key_move, num_particles)
    moved = map_particles(
        move_one,
        (keys, state.particles),
        particle_map=config.particle_map,
        particle_chunk=config.particle_chunk,
    )

    increment = moved.log_weight_increment
    if config.weights == "annealed":
        increment = increment + moved.log_target_start - state.log_target
    log_weights = state.log_weights + increment
    finite = jnp.isfinite(log_weights) & jnp.all(jnp.isfinite(moved.position), axis=1)
    divergent = jnp.sum(~finite & jnp.isfinite(state.log_weights))
    log_weights = jnp.where(finite, log_weights, -jnp.inf)
    particles = jnp.where(finite[:, None], moved.position, state.particles)
    log_target_end = jnp.where(finite, moved.log_target_end, 0.0)

    energy_error = jnp.where(finite, jnp.abs(moved.log_weight_increment), 0.0)
    n_finite = jnp.maximum(jnp.sum(finite), 1)
    weights = jax.nn.softmax(log_weights)
    current_ess = ess(log_weights)
    info_common = dict(
        ess=current_ess,
        energy_error_mean=jnp.sum(energy_error) / n_finite,
        energy_error_max=jnp.max(energy_error),
        divergent=divergent,
        log_target_mean=jnp.sum(jnp.where(finite, weights * log_target_end, 0.0)),
    )
    stats = MoveStats(
        finite=finite,
        accept=accept_probability(moved.log_weight_increment, finite),
        initial=state.particles,
        moved=particles,
        momenta=moved.momentum,
        entropy=entropy_per_dim(particles, log_weights),
        **_likelihood_stats(moved, mask, batch_size, x.shape[0], finite, weights, with_terms),
    )

    any_alive = jnp.any(finite)
    do_resample = any_alive & (current_ess < config.resample_threshold * num_particles)

    def resample(_):
        idx = RESAMPLERS[config.resampler](key_resample, weights, num_particles)
        return SMCState(
            particles=particles[idx],
            log_weights=jnp.zeros_like(log_weights),
            log_target=log_target_end[idx],
        )

    def keep(_):
        return SMCState(particles, log_weights, log_target_end)

    new_state = jax.lax.cond(do_resample, resample, keep, None)
    return new_state, SMCInfo(resampled=do_resample, **info_common), stats


class Batch(NamedTuple):
    """A step's batch rows, whole (leading axis: rows) or split into equal chunks of rows."""

    x: jax.Array  # (rows, ...) or (num_chunks, size, ...)
    y: jax.Array
    mask: jax.Array  # False on padded rows
    rows: int  # rows before any chunk padding
    chunked: bool


def make_batch(x, y, mask, chunk: int | None) -> Batch:
    """The batch as it is, or (with `chunk` below its rows) split into ceil(rows / chunk) equal
    chunks, the rows added to fill the last chunk masked out."""
    rows = x.shape[0]
    if chunk is None or rows <= chunk:
        return Batch(x, y, mask, rows, chunked=False)
    num_chunks = -(-rows // chunk)
    size = -(-rows // num_chunks)

    def split(a):
        a = jnp.pad(a, [(0, num_chunks * size - rows)] + [(0, 0)] * (a.ndim - 1))
        return a.reshape(num_chunks, size, *a.shape[1:])

    return Batch(split(x), split(y), split(mask), rows, chunked=True)


def batch_value_and_grad(log_target: Callable, theta, batch: Batch, batch_size, *, has_aux: bool):
    """(l_B, grad l_B) at theta, or ((l_B, per-example terms), grad) with `has_aux`.

    On a chunked batch (make_batch) a `lax.scan` sums the likelihood part's value and gradient
    chunk by chunk and adds the log-prior once: activations of one chunk are alive at a time, so
    the memory of a full-batch move no longer grows with N. Same value as the whole batch up to
    float summation order. `log_target` must then expose `log_prior` and `likelihood_part` (as
    posterior.LogTarget does).
    """
    if not batch.chunked:
        value_and_grad = jax.value_and_grad(log_target, has_aux=has_aux)
        return value_and_grad(theta, batch.x, batch.y, batch.mask, batch_size)
    part = jax.value_and_grad(log_target.likelihood_part, has_aux=has_aux)

    def body(carry, chunk_xym):
        value, grad = carry
        out, g = part(theta, *chunk_xym, batch_size)
        v, terms = out if has_aux else (out, None)
        return (value + v, grad + g), terms

    zero = (jnp.zeros((), theta.dtype), jnp.zeros_like(theta))
    (value, grad), terms = jax.lax.scan(body, zero, (batch.x, batch.y, batch.mask))
    prior, prior_grad = jax.value_and_grad(log_target.log_prior)(theta)
    value, grad = value + prior, grad + prior_grad
    if has_aux:
        return (value, terms.reshape(-1)[: batch.rows]), grad
    return value, grad


def entropy_per_dim(particles: jax.Array, log_weights: jax.Array) -> jax.Array:
    """H / D with H = 1/2 sum_d log(2 pi e v_d), v_d the weighted variance of coordinate d.

    Variances are floored at 1e-30 so that a cloud collapsed onto one point has a finite (very
    low) entropy.
    """
    w = jax.nn.softmax(log_weights)
    w = jnp.where(jnp.isfinite(w), w, 0.0)
    mean = w @ particles
    var = w @ (particles - mean) ** 2
    return 0.5 * jnp.mean(jnp.log(2 * jnp.pi * jnp.e * jnp.maximum(var, 1e-30)))


def _likelihood_stats(moved, mask, batch_size, num_data, finite, weights, with_terms):
    """The automated schedule's noise estimate and the mean per-example log-likelihood.

    For particle j, d_i = log p(y_i | theta'_j) - log p(y_i | theta_j) on the M batch rows; the
    likelihood part of its weight increment, (N / M) sum_i d_i, has a sampling standard error of
    about (N / sqrt(M)) sd_i(d_i) sqrt(1 - M / N). `noise` is its median over finite particles.
    Both are NaN when the log-target does not return per-example terms.
    """
    if not with_terms:
        nan = jnp.asarray(jnp.nan, jnp.float32)
        return dict(noise=nan, log_likelihood=nan)
    m = jnp.asarray(batch_size, jnp.float32)
    fmask = mask.astype(jnp.float32)
    d = (moved.terms_end - moved.terms_start) * fmask
    d_mean = jnp.sum(d, axis=1) / m
    d_var = jnp.sum(fmask * (d - d_mean[:, None]) ** 2, axis=1) / jnp.maximum(m - 1, 1)
    se = (num_data / jnp.sqrt(m)) * jnp.sqrt(d_var) * jnp.sqrt(jnp.maximum(1 - m / num_data, 0))
    noise = jnp.nanmedian(jnp.where(finite & jnp.isfinite(se), se, jnp.nan))
    ll = jnp.sum(moved.terms_end * fmask, axis=1) / m
    log_likelihood = jnp.sum(jnp.where(finite, weights * ll, 0.0))
    return dict(noise=noise, log_likelihood=log_likelihood)


# ---------------------------------------------------------------------------------------------
# The step: schedule state and proposal tuning carried on the device between iterations
# ---------------------------------------------------------------------------------------------


class RunState(NamedTuple):
    """Everything a run carries from one iteration to the next (a pytree)."""

    smc: SMCState
    schedule: ScheduleState
    tuning: Tuning


class StepInfo(NamedTuple):
    """SMCInfo plus what the schedule and the proposal tuning did (device scalars).

    The statistics (noise, entropy, log_likelihood, accept_mean) are NaN when nothing reads them
    (`reads_statistics` is False): the step then does not compute them."""

    smc: SMCInfo
    active: jax.Array  # False: the step did nothing (stopped, or its bucket was too small)
    iteration: jax.Array  # k of this step (when active)
    batch_size: jax.Array  # M_k used
    next_batch_size: jax.Array  # M_{k+1} the schedule chose
    stopped: jax.Array  # the schedule has finished
    step_size: jax.Array  # h used by this move
    num_steps: jax.Array  # leapfrog steps of this move
    noise: jax.Array
    entropy: jax.Array
    log_likelihood: jax.Array
    accept_mean: jax.Array


def init_run(smc_state: SMCState, plan: SchedulePlan, proposal: Proposal) -> RunState:
    return RunState(smc_state, schedules.init_state(plan), init_tuning(proposal))


def reads_statistics(plan: SchedulePlan, proposal: Proposal) -> bool:
    """Whether the schedule or the move tuning reads the step's statistics.

    A fixed schedule with a fixed move reads none, so its step computes neither the per-example
    terms nor the cloud statistics (the cost of the stateless case stays what it was)."""
    return plan.name in schedules.ADAPTIVE_SCHEDULES or proposal.adaptive


def scheduled_batch_size(plan: SchedulePlan, schedule: ScheduleState) -> jax.Array:
    """M_k for the coming iteration: from the schedule state (adaptive) or from k (fixed)."""
    if plan.name in schedules.ADAPTIVE_SCHEDULES:
        return schedule.batch_size
    k = schedule.iteration + 1
    sizes = schedules.fixed_batch_sizes(plan)
    return jnp.asarray(sizes, jnp.int32)[jnp.minimum(k, plan.num_iterations) - 1]


@partial(jax.jit, static_argnames=("log_target", "config", "plan", "bucket"))
def step(
    rng_key: jax.Array,
    run_state: RunState,
    x: jax.Array,
    y: jax.Array,
    *,
    log_target: Callable,
    config: SMCConfig,
    plan: SchedulePlan,
    bucket: int,
) -> tuple[RunState, StepInfo]:
    """One SMC iteration: the batch size and the move's tuning come from device state.

    Fixed schedules are the stateless case: M_k is a function of the iteration count k, the
    schedule state only counts. When `reads_statistics(plan, config.proposal)`, `log_target`
    must return (l_B, per-example terms) (posterior.make_log_target(..., terms=True)).
    The step is a no-op (state unchanged, `active` False) when the schedule has stopped or asks for
    more rows than `bucket`: the host loop then moves to the bucket the schedule needs at its next
    sync, so the result never depends on how often the host syncs. The iteration's key is
    fold_in(rng_key, k) with k counted on the device.
    """
    smc_state, sched, tuning = run_state
    k = sched.iteration + 1
    m = scheduled_batch_size(plan, sched)
    active = (m <= bucket) & ~sched.stopped & (k <= plan.num_iterations)
    m_used = jnp.minimum(m, bucket)
    proposal = config.proposal
    statistics = reads_statistics(plan, proposal)
    h, n, inverse_mass = None, None, None  # the static proposal's h and S
    if statistics:
        h, n = move_parameters(proposal, tuning)
        if proposal.mass == "diag":
            inverse_mass = diagonal_inverse_mass(smc_state.particles, smc_state.log_weights)
    new_smc, info, stats = _step(
        jax.random.fold_in(rng_key, k),
        smc_state,
        x,
        y,
        m_used,
        log_target=log_target,
        config=config,
        bucket=bucket,
        step_size=h,
        num_steps=n,
        inverse_mass=inverse_mass,
        with_terms=statistics,
    )
    if plan.name in schedules.ADAPTIVE_SCHEDULES:
        sched_stats = ScheduleStats(stats.noise, stats.entropy, stats.log_likelihood)
        _, new_sched, _ = schedules.next_batch_size(plan, sched, sched_stats)
    else:
        new_sched = sched._replace(
            iteration=jnp.asarray(k, jnp.int32), stopped=k >= plan.num_iterations
        )
        new_sched = new_sched._replace(batch_size=scheduled_batch_size(plan, new_sched))
    new_tuning = tuning
    if statistics:
        new_tuning = adapt(
            proposal,
            tuning,
            num_steps=n,
            accept=stats.accept,
            finite=stats.finite,
            initial_positions=stats.initial,
            positions=stats.moved,
            momenta=stats.momenta,
            inverse_mass=jnp.ones(smc_state.particles.shape[1])
            if inverse_mass is None
            else inverse_mass,
        )
    new_run = RunState(new_smc, new_sched, new_tuning)
    out = jax.tree.map(lambda a, b: jnp.where(active, a, b), new_run, run_state)
    nan = jnp.asarray(jnp.nan, jnp.float32)
    step_info = StepInfo(
        smc=info,
        active=active,
        iteration=k,
        batch_size=m_used,
        next_batch_size=out.schedule.batch_size,
        stopped=out.schedule.stopped,
        step_size=jnp.asarray(proposal.step_size if h is None else h, jnp.float32),
        num_steps=jnp.asarray(proposal.num_steps if n is None else n, jnp.int32),
        noise=stats.noise if statistics else nan,
        entropy=stats.entropy if statistics else nan,
        log_likelihood=stats.log_likelihood if statistics else nan,
        accept_mean=jnp.mean(stats.accept) if statistics else nan,
    )
    return out, step_info


def weighted_moments(state: SMCState) -> tuple[jax.Array, jax.Array]:
    """Weighted mean and standard deviation of every coordinate of the particle cloud."""
    w = jax.nn.softmax(state.log_weights)[:, None]
    mean = jnp.sum(w * state.particles, axis=0)
    var = jnp.sum(w * (state.particles - mean) ** 2, axis=0)
    return mean, jnp.sqrt(var)
