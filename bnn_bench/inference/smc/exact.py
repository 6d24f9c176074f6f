"""The exact SMC sampler (algorithms.md, "The exact sampler"; Del Moral, Doucet & Jasra 2006).

A sequence of targets from the prior to the posterior. Each target is
    log gamma(theta) = log p(theta) + sum_{i < m_from} l_i + lam * sum_{m_from <= i < m_to} l_i
over the rows of the training set in a fixed order (a seeded permutation, applied by the caller):
rows [0, m_from) are in the target fully, rows [m_from, m_to) tempered by lam in (0, 1]. No N/|B|
scaling: every target is the (partly tempered) posterior of a prefix of the data.

One iteration (`step`):
1. Choose the next target. When the current one is complete (lam = 1), the next subset size
   comes from the path: `tempered` adds all N rows at once (likelihood tempering), `nested` takes
   the next entry of a fixed schedule, or (schedule "automated") the largest subset, up to
   `growth` times the current one, whose reweight keeps the conditional ESS (Zhou, Johansen &
   Aston 2016) >= threshold * J. Where adding the new rows in one go would drop it below that,
   lam is set by bisection (blackjax's dichotomy) so that it is the threshold; later iterations
   carry on tempering the same rows until lam = 1 exactly ("bridge steps").
2. Reweight: log w += (lam_new - lam_old) * sum_{added rows} l_i(theta); the running log-evidence
   log Z_hat += logsumexp(log W + increment) with W the normalised previous weights.
3. Resample (blackjax.smc.resampling) when ESS < threshold * J, and always after a step whose
   increment was cut to the threshold (else the next bisection would start at the threshold).
4. Move: `num_mcmc_steps` Metropolis-adjusted HMC steps on the new target (moves.mh_moves);
   a round whose mean acceptance is below `min_accept` is followed by another at half the step
   size (up to `max_retries`), so a step size far too large for the new target cannot leave the
   resampled duplicates in place. `distinct` counts the particles that differ after the moves:
   the weight ESS cannot see duplicates, so this is the diagnostic of a cloud that did not mix.
5. The step size for the next iteration from this iteration's mean acceptance; the next
   iteration also scales it by how much the cloud's spread shrank since this move.

The data come in padded to a static `bucket` of rows (a prefix of the permuted training set): a
run compiles one step per bucket it uses. A step that would need more rows than its bucket is a
no-op (`info.active` False); the driver `run` never dispatches one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from blackjax.smc import ess as bj_ess
from blackjax.smc import solver as bj_solver
from jax.scipy.special import logsumexp

from bnn_bench.inference import driver
from bnn_bench.inference.smc import moves, proposals, schedules
from bnn_bench.inference.smc.proposals import diagonal_inverse_mass
from bnn_bench.inference.smc.sampler import RESAMPLERS, entropy_per_dim

PATHS = ("nested", "tempered")


class PathPlan(NamedTuple):
    """Static description of the sequence of targets (hashable: part of the jit cache key).

    `sizes`: M_1..M_K for a fixed schedule under `nested` (non-decreasing); empty for
    `automated`, the signal schedules and `tempered`. `schedule`: sda or ctr_adaptive under
    `nested`: after every iteration that completes its target, schedules.next_batch_size
    chooses the next subset from the moved cloud's entropy or per-row log-likelihood, as it
    does on the minibatch path (bridges do not consume it). `max_iterations` caps the
    iterations (bridge steps included).
    """

    path: str  # nested | tempered
    num_data: int  # N
    max_iterations: int
    sizes: tuple[int, ...] = ()
    automated: bool = False
    growth: float = 2.0  # automated: the largest subset growth per iteration
    first_size: int = 0  # automated: M_1 (C)
    schedule: schedules.SchedulePlan | None = None  # sda | ctr_adaptive (nested)


class ExactConfig(NamedTuple):
    """Static settings of the exact sampler."""

    move: moves.MoveSettings
    resample_threshold: float
    resampler: str
    particle_map: str = "vmap"
    particle_chunk: int | None = None
    data_chunk: int | None = None  # rows per gradient and forward pass (memory bound); None: all


class ExactState(NamedTuple):
    """The weighted cloud and where it is on the path (all device arrays; a pytree)."""

    particles: jax.Array  # (J, D)
    log_weights: jax.Array  # (J,) unnormalised
    log_evidence: jax.Array  # log Z_hat of the current target
    m_from: jax.Array  # int32: rows fully in the target
    m_to: jax.Array  # int32: rows in the target (those from m_from on tempered by lam)
    lam: jax.Array  # float32: tempering of rows [m_from, m_to); 1 = the target is complete
    entry: jax.Array  # int32: fixed-schedule entries consumed
    iteration: jax.Array  # int32: iterations done (bridge steps included)
    step_size: jax.Array  # float32: h of the next move, at the cloud's spread `spread`
    spread: jax.Array  # float32: sqrt(mean weighted variance) of the cloud the last move saw
    done: jax.Array  # bool: the path has ended (or max_iterations reached)
    schedule: schedules.ScheduleState | None  # the signal schedule's state (None: no signal)
    chees: Any = None  # proposal=chees: blackjax's ChEES state (trajectory length T)


class ExactInfo(NamedTuple):
    """What one iteration did (device scalars)."""

    active: jax.Array
    iteration: jax.Array
    ess: jax.Array  # after reweighting, before resampling
    resampled: jax.Array
    accept: jax.Array  # mean MH acceptance of the last round of moves
    divergent: jax.Array
    step_size: jax.Array  # h of the last round of moves
    leapfrog_steps: jax.Array  # int32: leapfrog steps per MH step (S; chees: jittered)
    move_rounds: jax.Array  # int32: rounds of moves (1 + retries at a smaller h)
    distinct: jax.Array  # int32: particles that differ from every other after the moves
    lam: jax.Array  # tempering of the added rows after this iteration
    m_from: jax.Array
    m_to: jax.Array
    bridged: jax.Array  # lam was cut by the ESS bisection
    log_evidence: jax.Array
    forward_rows: jax.Array  # rows of the reweighting forward pass, per particle
    move_rows: jax.Array  # rows of every move gradient, per particle
    progress: jax.Array  # fraction of the path done: schedule entries, or rows (lam-weighted)


def init(
    rng_key: jax.Array,
    prior_std: jax.Array,
    num_particles: int,
    step_size: float,
    plan: PathPlan | None = None,
    move: moves.MoveSettings | None = None,
) -> ExactState:
    """Prior draws N(0, diag(prior_std^2)) with equal weights; no data in the target yet.
    `plan` is needed for a signal schedule (its state's shape comes from the schedule), `move`
    for proposal=chees (T starts at S h, as on the minibatch path)."""
    particles = jax.random.normal(rng_key, (num_particles, prior_std.size)) * prior_std
    zero = jnp.asarray(0, jnp.int32)
    return ExactState(
        particles=particles,
        log_weights=jnp.zeros(num_particles, particles.dtype),
        log_evidence=jnp.asarray(0.0, jnp.float32),
        m_from=zero,
        m_to=zero,
        lam=jnp.asarray(1.0, jnp.float32),
        entry=zero,
        iteration=zero,
        step_size=jnp.asarray(step_size, jnp.float32),
        spread=cloud_spread(particles, jnp.zeros(num_particles, particles.dtype)),
        done=jnp.asarray(False),
        schedule=None
        if plan is None or plan.schedule is None
        else schedules.init_state(plan.schedule),
        chees=proposals.init_tuning(_chees_proposal(move, step_size)).chees
        if move is not None and move.chees
        else None,
    )


def _chees_proposal(move: moves.MoveSettings, step_size) -> proposals.Proposal:
    """The minibatch path's Proposal of the same ChEES settings (its blackjax ChEES update)."""
    return proposals.Proposal(
        num_steps=move.num_steps,
        step_size=step_size,
        name="chees",
        target_accept=move.target_accept,
        max_steps=move.max_steps,
        learning_rate=move.learning_rate,
    )


def chees_num_steps(chees, h, move: moves.MoveSettings) -> jax.Array:
    """This iteration's leapfrog steps: ceil(u T / h), u from a Halton sequence, in [1, max]."""
    from blackjax.mcmc.dynamic_hmc import halton_sequence

    n = jnp.ceil(halton_sequence(chees.random_generator_arg) * chees.trajectory_length / h)
    return jnp.clip(n.astype(jnp.int32), 1, move.max_steps)


def chees_update(chees, last: moves.LastTransition, inverse_mass, h, move: moves.MoveSettings):
    """T from blackjax's ChEES update on every particle's last MH step; h stays the sampler's
    (the acceptance rule), and T is kept within [h, max_steps h]. A divergent or non-finite
    transition enters with its start as end point and zero momentum (as on the minibatch path)."""
    _, update = proposals._chees_base(_chees_proposal(move, h))
    end_ok = jnp.all(jnp.isfinite(last.proposal), axis=1) & jnp.all(
        jnp.isfinite(last.momentum), axis=1
    )
    ok = end_ok & ~last.divergent
    new = update(
        chees,
        jnp.where(ok[:, None], last.proposal, last.start),
        jnp.where(ok[:, None], last.momentum, 0.0),
        last.start,
        jnp.maximum(last.accept, 1e-20),
        ~ok,
        inverse_mass,
    )
    length = jnp.clip(new.trajectory_length, h, move.max_steps * h)
    return new._replace(step_size=jnp.asarray(h, jnp.float32), trajectory_length=length)


def cloud_spread(particles: jax.Array, log_weights: jax.Array) -> jax.Array:
    """sqrt of the mean over coordinates of the weighted particle variance."""
    w = jax.nn.softmax(log_weights)
    mean = w @ particles
    return jnp.sqrt(jnp.mean(w @ (particles - mean) ** 2)).astype(jnp.float32)


def grow(m, growth: float, n: int):
    """min(N, ceil(growth * m)), at least m + 1 (works on ints and int32 arrays)."""
    if isinstance(m, int | np.integer):
        return min(n, max(int(m) + 1, math.ceil(growth * int(m) - 1e-9)))
    grown = jnp.ceil(growth * m.astype(jnp.float32) - 1e-4).astype(jnp.int32)
    return jnp.minimum(n, jnp.maximum(m + 1, grown))


def row_weights(num_rows: int, m_from, m_to, lam):
    """Per-row weight of the target: 1 below m_from, lam on [m_from, m_to), 0 from m_to on."""
    rows = jnp.arange(num_rows)
    return jnp.where(rows < m_from, 1.0, jnp.where(rows < m_to, lam, 0.0))


def weighted_log_likelihood(log_likelihood: Callable, theta, x, y, weights):
    """sum_i weights_i * log p(y_i | x_i, theta); rows of weight 0 add exactly nothing."""
    ll = log_likelihood(theta, x, y)
    return jnp.sum(jnp.where(weights > 0, weights * ll, 0.0))


def _split_rows(a: jax.Array, chunk: int) -> jax.Array:
    """(rows, ...) -> (ceil(rows / chunk), size, ...) equal chunks, zero rows filling the last."""
    rows = a.shape[0]
    num = -(-rows // chunk)
    size = -(-rows // num)
    a = jnp.pad(a, [(0, num * size - rows)] + [(0, 0)] * (a.ndim - 1))
    return a.reshape(num, size, *a.shape[1:])


def log_density(log_prior: Callable, log_likelihood: Callable, x, y, weights, chunk=None):
    """theta -> log p(theta) + sum_i weights_i l_i(theta), the target the moves sample.

    With `chunk` below the rows, the likelihood part's value and gradient are summed chunk by
    chunk in a `lax.scan` (a custom VJP hands the gradient to blackjax's value_and_grad), so the
    activations of one chunk are alive at a time: the memory of a move no longer grows with the
    subset. The same value as the whole rows up to float summation order (padding rows have
    weight 0 and add nothing)."""
    if chunk is None or x.shape[0] <= chunk:
        return lambda theta: (
            log_prior(theta) + weighted_log_likelihood(log_likelihood, theta, x, y, weights)
        )
    xc, yc, wc = _split_rows(x, chunk), _split_rows(y, chunk), _split_rows(weights, chunk)

    def part(theta, xs, ys, ws):
        return weighted_log_likelihood(log_likelihood, theta, xs, ys, ws)

    def value_and_grad(theta):
        def body(carry, c):
            v, g = jax.value_and_grad(part)(theta, *c)
            return (carry[0] + v, carry[1] + g), None

        zero = (jnp.zeros((), theta.dtype), jnp.zeros_like(theta))
        return jax.lax.scan(body, zero, (xc, yc, wc))[0]

    @jax.custom_vjp
    def likelihood(theta):
        def body(total, c):
            return total + part(theta, *c), None

        return jax.lax.scan(body, jnp.zeros((), theta.dtype), (xc, yc, wc))[0]

    likelihood.defvjp(value_and_grad, lambda grad, ct: (ct * grad,))
    return lambda theta: log_prior(theta) + likelihood(theta)


def row_log_likelihoods(log_likelihood: Callable, particles, x, y, chunk=None):
    """(J, rows) per-row log-likelihoods of every particle, in chunks of rows with `chunk`."""
    per_particle = jax.vmap(lambda th, xs, ys: log_likelihood(th, xs, ys), in_axes=(0, None, None))
    if chunk is None or x.shape[0] <= chunk:
        return per_particle(particles, x, y)
    rows = x.shape[0]
    out = jax.lax.map(
        lambda c: per_particle(particles, *c), (_split_rows(x, chunk), _split_rows(y, chunk))
    )
    return jnp.moveaxis(out, 0, 1).reshape(particles.shape[0], -1)[:, :rows]


def log_conditional_ess(log_weights, increments):
    """log CESS of reweighting the cloud by `increments` (Zhou, Johansen & Aston 2016):
    CESS = J (sum_j W_j w_j)^2 / sum_j W_j w_j^2 with W the normalised current weights and
    w_j = exp(increment_j); it equals blackjax's ESS of the increments when the weights are equal.
    Along the last axis of `increments` (broadcast against log_weights on axis 0)."""
    lw = jax.nn.log_softmax(log_weights)
    lw = jnp.reshape(lw, lw.shape + (1,) * (jnp.ndim(increments) - 1))
    a = jnp.where(jnp.isnan(lw + increments), -jnp.inf, lw + increments)
    b = jnp.where(jnp.isnan(lw + 2 * increments), -jnp.inf, lw + 2 * increments)
    num = log_weights.shape[0]
    return jnp.log(num) + 2 * logsumexp(a, axis=0) - logsumexp(b, axis=0)


def solve_increment(log_weights, added, max_delta, target_ess):
    """The tempering increment delta in (0, max_delta] whose reweight by delta * added has a
    conditional ESS of target_ess particles, or max_delta if that keeps it >= target_ess.

    blackjax.smc.solver.dichotomy on the conditional ESS (which is blackjax's ess_solver's ESS
    when the current weights are equal: right after resampling). Returns (delta, cut): `cut` when
    the bisection set delta below max_delta.
    """
    added = jnp.where(jnp.isfinite(added), added, -jnp.inf)
    target = jnp.log(target_ess)

    def fun(delta):
        return log_conditional_ess(log_weights, delta * added) - target

    delta = bj_solver.dichotomy(fun, 0.0, max_delta)
    # NaN: no delta > 0 keeps the target (only by rounding); take a small step.
    delta = jnp.where(jnp.isnan(delta), 1e-3 * max_delta, delta)
    delta = jnp.clip(delta, 1e-6 * max_delta, max_delta)
    cut = delta < max_delta
    return delta, cut


def _candidates(ll_rows, log_weights, m_base, cap, target_ess):
    """automated: the largest m' in (m_base, cap] whose reweight keeps the conditional ESS
    >= target_ess.

    ll_rows (J, rows) per-row log-likelihoods; returns (m', found). The increments of all
    candidates come from one cumulative sum over the rows.
    """
    rows = jnp.arange(ll_rows.shape[1])
    added = jnp.cumsum(jnp.where(rows >= m_base, ll_rows, 0.0), axis=1)  # (J, rows): m' = r + 1
    log_ess = log_conditional_ess(log_weights, added)
    size = rows + 1
    ok = (size > m_base) & (size <= cap) & (log_ess >= jnp.log(target_ess))
    best = jnp.max(jnp.where(ok, size, 0))
    return jnp.where(best > 0, best, cap), best > 0


@partial(jax.jit, static_argnames=("log_prior", "log_likelihood", "plan", "config", "bucket"))
def step(
    rng_key: jax.Array,
    state: ExactState,
    x: jax.Array,
    y: jax.Array,
    *,
    log_prior: Callable,
    log_likelihood: Callable,
    plan: PathPlan,
    config: ExactConfig,
    bucket: int,
) -> tuple[ExactState, ExactInfo]:
    """One iteration on the first `bucket` rows of the permuted training set (x, y: all N rows).

    The iteration's key is fold_in(rng_key, k) with k = state.iteration + 1, so a run's result
    does not depend on how the host groups its dispatches.
    """
    num_particles = state.particles.shape[0]
    n = plan.num_data
    signal = plan.schedule is not None
    threshold = config.resample_threshold * num_particles
    xb, yb = x[:bucket], y[:bucket]
    k = state.iteration + 1
    key_move, key_resample = jax.random.split(jax.random.fold_in(rng_key, k))

    # 1. the next target
    complete = state.lam >= 1.0
    m_base = jnp.where(complete, state.m_to, state.m_from)
    lam_old = jnp.where(complete, 0.0, state.lam)
    if plan.path == "tempered":
        m_next = jnp.asarray(n, jnp.int32)
        cap = m_next
    elif plan.automated:
        first = jnp.asarray(min(plan.first_size, n), jnp.int32)
        cap = jnp.where(m_base == 0, first, grow(m_base, plan.growth, n))
        m_next = cap
    elif signal:
        if state.schedule is None or (
            state.schedule.history.shape != schedules.init_state(plan.schedule).history.shape
        ):
            raise ValueError("a signal schedule's state comes from exact.init(..., plan=plan)")
        m_next = state.schedule.batch_size
        cap = m_next
    else:
        sizes = jnp.asarray(plan.sizes, jnp.int32)
        m_next = sizes[jnp.minimum(state.entry, len(plan.sizes) - 1)]
        cap = m_next
    m_to = jnp.where(complete, jnp.maximum(m_next, m_base), state.m_to)
    needed = jnp.where(complete, cap, m_to)
    active = (needed <= bucket) & ~state.done
    adding = active & (m_to > m_base)

    # 2. reweight by the added rows' log-likelihood (one forward pass, only when rows are added)
    def forward(_):
        return row_log_likelihoods(log_likelihood, state.particles, xb, yb, config.data_chunk)

    ll_rows = jax.lax.cond(
        adding, forward, lambda _: jnp.zeros((num_particles, bucket), jnp.float32), None
    )
    if plan.automated:
        chosen, found = _candidates(ll_rows, state.log_weights, m_base, cap, threshold)
        m_to = jnp.where(complete & (m_base < n), chosen, m_to)
        limited = complete & found & (chosen < cap)  # the ESS, not the growth, set m'
    else:
        limited = jnp.asarray(False)
    rows = jnp.arange(bucket)
    in_added = (rows >= m_base) & (rows < m_to)
    added = jnp.sum(jnp.where(in_added, ll_rows, 0.0), axis=1)
    delta, cut = solve_increment(state.log_weights, added, 1.0 - lam_old, threshold)
    delta = jnp.where(adding, delta, 0.0)
    cut = adding & cut
    lam_new = jnp.where(cut, lam_old + delta, 1.0)  # exactly 1 when the bridge is done
    increment = jnp.where(adding, delta * added, 0.0)
    increment = jnp.where(jnp.isnan(increment), -jnp.inf, increment)
    prev = jax.nn.log_softmax(state.log_weights)
    log_evidence = state.log_evidence + jnp.where(adding, logsumexp(prev + increment), 0.0)
    log_weights = state.log_weights + increment
    ess = jnp.exp(bj_ess.log_ess(log_weights))

    # 3. resample
    do_resample = (ess < threshold) | cut | limited
    weights = jax.nn.softmax(log_weights)
    idx = RESAMPLERS[config.resampler](key_resample, weights, num_particles)
    particles = jnp.where(do_resample, state.particles[idx], state.particles)
    log_weights = jnp.where(do_resample, jnp.zeros_like(log_weights), log_weights)

    # 4. move on the new target
    wts = row_weights(bucket, m_base, m_to, lam_new)
    logdensity = log_density(log_prior, log_likelihood, xb, yb, wts, config.data_chunk)

    # With adaptation, h follows the cloud's contraction since the last move (the targets can
    # sharpen several-fold in one iteration) and is nudged by the last acceptance (step 5).
    spread = cloud_spread(particles, log_weights)
    h = state.step_size
    if config.move.adapt_step_size:
        ratio = spread / state.spread
        h = jnp.where(jnp.isfinite(ratio) & (ratio > 0), h * ratio, h)
    leapfrog = chees_num_steps(state.chees, h, config.move) if config.move.chees else None
    moved, move_info, h, rounds, inverse_mass = _move(
        key_move, particles, log_weights, logdensity, h, config, leapfrog
    )
    mean_accept = jnp.mean(move_info.accept)
    next_h = moves.next_step_size(h, mean_accept, config.move)
    chees = state.chees
    if config.move.chees:
        chees = chees_update(state.chees, move_info.last, inverse_mass, next_h, config.move)

    # 5. the next step size; where the path stands; a signal schedule reads the moved cloud of
    # every completed target (the per-row log-likelihood from the moves' final log-density)
    fixed = plan.path == "nested" and not plan.automated
    entry = state.entry + jnp.where(complete, 1, 0) if fixed else state.entry
    schedule_state = state.schedule
    if signal:
        target_done = lam_new >= 1.0
        rows_in = jnp.maximum(m_to, 1).astype(jnp.float32)
        per_row = (move_info.logdensity - jax.vmap(log_prior)(moved)) / rows_in
        finite = jnp.isfinite(per_row)
        w = jnp.where(finite, jax.nn.softmax(log_weights), 0.0)
        stats = schedules.ScheduleStats(
            noise=jnp.asarray(jnp.nan, jnp.float32),
            entropy=entropy_per_dim(moved, log_weights),
            log_likelihood=jnp.sum(w * jnp.where(finite, per_row, 0.0)) / jnp.sum(w),
        )
        _, advanced, stop = schedules.next_batch_size(plan.schedule, state.schedule, stats)
        schedule_state = jax.tree.map(
            lambda a, b: jnp.where(target_done, a, b), advanced, state.schedule
        )
    if plan.path == "tempered" or plan.automated:
        finished = (m_to >= n) & (lam_new >= 1.0)
    elif signal:
        finished = target_done & stop
    else:
        finished = (entry >= len(plan.sizes)) & (lam_new >= 1.0)
    new_state = ExactState(
        particles=moved,
        log_weights=log_weights,
        log_evidence=log_evidence,
        m_from=m_base,
        m_to=m_to,
        lam=lam_new,
        entry=entry,
        iteration=k,
        step_size=next_h,
        spread=jnp.where(spread > 0, spread, state.spread),
        done=finished | (k >= plan.max_iterations),
        schedule=schedule_state,
        chees=chees,
    )
    new_state = jax.tree.map(lambda a, b: jnp.where(active, a, b), new_state, state)
    info = ExactInfo(
        active=active,
        iteration=k,
        ess=ess,
        resampled=do_resample,
        accept=mean_accept,
        divergent=jnp.sum(move_info.divergent),
        step_size=h,
        leapfrog_steps=jnp.asarray(config.move.num_steps if leapfrog is None else leapfrog),
        move_rounds=rounds,
        distinct=distinct_particles(moved),
        lam=lam_new,
        m_from=m_base,
        m_to=m_to,
        bridged=cut,
        log_evidence=log_evidence,
        forward_rows=jnp.where(adding, jnp.where(plan.automated, cap, m_to), 0),
        move_rows=m_to,
        progress=new_state.entry / len(plan.sizes)
        if fixed and not signal
        else (new_state.m_from + new_state.lam * (new_state.m_to - new_state.m_from)) / n,
    )
    return new_state, info


class SweepInfo(NamedTuple):
    accept: jax.Array  # mean MH acceptance of the sweep's last round of moves
    divergent: jax.Array
    step_size: jax.Array  # h of the last round
    leapfrog_steps: jax.Array  # leapfrog steps per MH step (S; chees: jittered)
    move_rounds: jax.Array  # rounds of moves (1 + retries at a smaller h)
    distinct: jax.Array  # particles that differ from every other after the sweep


@partial(jax.jit, static_argnames=("log_prior", "log_likelihood", "config"))
def final_sweep(
    rng_key: jax.Array,
    state: ExactState,
    x: jax.Array,
    y: jax.Array,
    sweep: jax.Array,
    *,
    log_prior: Callable,
    log_likelihood: Callable,
    config: ExactConfig,
) -> tuple[ExactState, SweepInfo]:
    """One more round of the moves (`num_mcmc_steps` MH steps per particle) on the cloud's
    current target, after the path has ended (`smc.final_sweeps`).

    The moves leave the target invariant and the weights alone, so the cloud after every sweep
    is another weighted sample of the same target, and the predictive may average over the
    clouds of all sweeps (methods/smc_exact.py does): more draws for the cost of moves alone,
    where more particles would also pay for every reweighting and bridge. x, y: the rows of the
    target (all N at the end of the path). Sweep s's key is fold_in(rng_key, s); the step size
    keeps adapting from each sweep's acceptance, as between iterations.
    """
    wts = row_weights(x.shape[0], state.m_from, state.m_to, state.lam)
    logdensity = log_density(log_prior, log_likelihood, x, y, wts, config.data_chunk)

    h = state.step_size
    key = jax.random.fold_in(rng_key, sweep)
    leapfrog = chees_num_steps(state.chees, h, config.move) if config.move.chees else None
    moved, info, h, rounds, inverse_mass = _move(
        key, state.particles, state.log_weights, logdensity, h, config, leapfrog
    )
    mean_accept = jnp.mean(info.accept)
    next_h = moves.next_step_size(h, mean_accept, config.move)
    chees = state.chees
    if config.move.chees:
        chees = chees_update(state.chees, info.last, inverse_mass, next_h, config.move)
    new = state._replace(particles=moved, step_size=next_h, chees=chees)
    steps = jnp.asarray(config.move.num_steps if leapfrog is None else leapfrog)
    sweep_info = SweepInfo(
        mean_accept, jnp.sum(info.divergent), h, steps, rounds, distinct_particles(moved)
    )
    return new, sweep_info


def _move(key, particles, log_weights, logdensity, h, config: ExactConfig, num_steps=None):
    """The MH moves of every particle (the cloud's diagonal mass with proposal.mass=diag); a
    particle whose move is not finite stays where it was.

    While a round's mean acceptance is below `move.min_accept`, another round follows from where
    the last one ended at half its step size, at most `move.max_retries` times: every round is a
    gamma-invariant kernel, so the cloud stays a weighted sample of the target; the retries only
    keep a step size far too large for a new target from leaving duplicates unmoved. Returns
    (moved, info of the last round with divergences summed over rounds, its h, rounds, the
    inverse mass). `num_steps`: the leapfrog steps when they vary (chees).
    """
    inverse_mass = jnp.ones(particles.shape[1], particles.dtype)
    if config.move.mass == "diag":
        inverse_mass = diagonal_inverse_mass(particles, log_weights)

    def one_round(key, start, h):
        moved, info = moves.mh_moves(
            key,
            start,
            logdensity,
            h,
            config.move,
            inverse_mass=inverse_mass,
            particle_map=config.particle_map,
            particle_chunk=config.particle_chunk,
            num_steps=num_steps,
            last_transition=config.move.chees,
        )
        finite = jnp.all(jnp.isfinite(moved), axis=1)
        info = info._replace(logdensity=jnp.where(finite, info.logdensity, jnp.nan))
        return jnp.where(finite[:, None], moved, start), info

    moved, info = one_round(key, particles, h)
    rounds = jnp.asarray(1, jnp.int32)
    if config.move.max_retries == 0:
        return moved, info, h, rounds, inverse_mass

    def again(carry):
        _, info, _, rounds = carry
        low = jnp.mean(info.accept) < config.move.min_accept
        return low & (rounds <= config.move.max_retries)

    def retry(carry):
        start, info, h, rounds = carry
        h = h * 0.5
        moved, new = one_round(jax.random.fold_in(key, rounds), start, h)
        new = new._replace(divergent=new.divergent + info.divergent)
        return moved, new, h, rounds + 1

    carry = (moved, info, jnp.asarray(h, jnp.float32), rounds)
    return (*jax.lax.while_loop(again, retry, carry), inverse_mass)


def distinct_particles(particles: jax.Array) -> jax.Array:
    """How many rows of `particles` differ from every other (exact duplicates are counted once):
    rows sorted by a projection that exact copies share, then neighbours compared in full."""
    d = particles.shape[1]
    direction = jnp.cos(jnp.arange(d, dtype=particles.dtype) * 0.7548776662466927 + 0.5)
    order = jnp.argsort(particles @ direction)
    p = particles[order]
    differs = jnp.any(p[1:] != p[:-1], axis=1)
    return (1 + jnp.sum(differs)).astype(jnp.int32)


def final_target(state: ExactState, num_data: int) -> str:
    """Which posterior the cloud targets, in words (results.json's `final_target`)."""
    m_from, m_to, lam = int(state.m_from), int(state.m_to), float(state.lam)
    if lam >= 1.0:
        if m_to >= num_data:
            return "posterior"
        return f"posterior of the first {m_to} of {num_data} rows"
    return f"posterior of {m_from} rows with rows {m_from}-{m_to} tempered by {lam:.4g}"


def path_finished(state: ExactState, plan: PathPlan) -> bool:
    """Whether the cloud reached the path's last target (rather than the iteration cap)."""
    if float(state.lam) < 1.0:
        return False
    if plan.path == "tempered" or plan.automated:
        return int(state.m_to) >= plan.num_data
    if plan.schedule is not None:
        return bool(state.schedule.stopped)
    return int(state.entry) >= len(plan.sizes)


def buckets(num_data: int, first: int) -> tuple[int, ...]:
    """Row buckets: C, 2C, 4C, ... below N, then N (same as the minibatch path's)."""
    sizes, b = [], max(1, min(first, num_data))
    while b < num_data:
        sizes.append(b)
        b *= 2
    return (*sizes, num_data)


def _bucket_for(rows: int, bucket_sizes: tuple[int, ...]) -> int:
    for b in bucket_sizes:
        if b >= rows:
            return b
    return bucket_sizes[-1]


def rows_needed(plan: PathPlan, state_host: dict, steps: int) -> int:
    """The most rows any of the next `steps` iterations can need, from the last synced state."""
    n = plan.num_data
    if plan.path == "tempered":
        return n
    complete = state_host["lam"] >= 1.0
    m_base = int(state_host["m_to"] if complete else state_host["m_from"])
    if plan.automated:
        if not complete:
            return int(state_host["m_to"])
        return min(plan.first_size, n) if m_base == 0 else grow(m_base, plan.growth, n)
    if plan.schedule is not None:
        return int(state_host["m_to"] if not complete else state_host["next_size"])
    entry = state_host["entry"]
    ahead = plan.sizes[entry : entry + steps] or plan.sizes[-1:]
    return max(int(state_host["m_to"]), *ahead)


def run(
    rng_key: jax.Array,
    state: ExactState,
    x: jax.Array,
    y: jax.Array,
    *,
    log_prior: Callable,
    log_likelihood: Callable,
    plan: PathPlan,
    config: ExactConfig,
    bucket_sizes: tuple[int, ...],
    num_particles: int,
    callback: Callable[[dict, ExactState | None], bool | None] | None = None,
    sync_every: int = 10,
    state_every: int = 0,
    should_stop: Callable[[], bool] | None = None,
    counts: dict | None = None,
    elapsed: float = 0.0,
) -> tuple[ExactState, str, dict]:
    """Run the path to its end on the shared host loop (inference/driver.py); returns
    (state, status, counts).

    x, y: the whole training set in the path's (permuted) order, on the device. The host syncs
    every `sync_every` dispatched steps (every step under automated and the signal schedules:
    the next bucket depends on the last choice) and dispatches each segment with the smallest
    bucket that holds every row a step of it can need, so no step is a no-op. counts: iterations,
    example_grads (J * (rows of every gradient + rows of every reweighting forward pass)),
    n_resample, n_bridge. callback(record, state) gets one record per iteration, and the state
    at multiples of `state_every`, at the end and when stopping; returning True stops.
    Status: finished | stopped | interrupted | diverged.
    """
    counts = dict(counts or {"iterations": 0, "example_grads": 0, "n_resample": 0, "n_bridge": 0})
    if bool(state.done):
        return state, "finished", counts
    segment = 1 if plan.automated or plan.schedule is not None else max(1, sync_every)
    # What the host knows of the path since the last sync, and the bucket of the segment.
    host = {"at": _host_view(state), "bucket": None, "state": state}

    def dispatch(st):
        if host["bucket"] is None:
            host["bucket"] = _bucket_for(rows_needed(plan, host["at"], segment), bucket_sizes)
        st, info = step(
            rng_key,
            st,
            x,
            y,
            log_prior=log_prior,
            log_likelihood=log_likelihood,
            plan=plan,
            config=config,
            bucket=host["bucket"],
        )
        host["state"] = st
        return st, info

    def to_records(infos, elapsed_s):
        host["at"], done = jax.device_get((_host_view(host["state"]), host["state"].done))
        host["bucket"] = None  # the next segment's bucket comes from this sync
        records = []
        for inf in (inf for inf in infos if inf.active):
            counts["iterations"] = int(inf.iteration)
            grads = moves.gradient_evaluations(config.move, int(inf.leapfrog_steps))
            rows = int(inf.move_rows) * grads * int(inf.move_rounds) + int(inf.forward_rows)
            counts["example_grads"] += num_particles * rows
            counts["n_resample"] += int(inf.resampled)
            counts["n_bridge"] += int(inf.bridged)
            records.append(
                {
                    "iter": int(inf.iteration),
                    "batch_size": int(inf.m_to),
                    "lambda": float(inf.lam),
                    "ess": float(inf.ess),
                    "resampled": bool(inf.resampled),
                    "accept_mean": float(inf.accept),
                    "divergent": int(inf.divergent),
                    "step_size": float(inf.step_size),
                    "leapfrog_steps": int(inf.leapfrog_steps),
                    "move_rounds": int(inf.move_rounds),
                    "distinct_particles": int(inf.distinct),
                    "log_evidence": float(inf.log_evidence),
                    "bridged": bool(inf.bridged),
                    "progress": float(inf.progress),
                    "time_s": elapsed_s,
                    "example_grads": counts["example_grads"],
                }
            )
        return records, bool(done)

    def diverged(record):
        return not np.isfinite(record["ess"]) or record["ess"] == 0.0

    state, status, _ = driver.run(
        dispatch,
        state,
        num_iterations=plan.max_iterations,
        to_records=to_records,
        diverged=diverged,
        start=counts["iterations"],
        elapsed=elapsed,
        sync_every=segment,
        state_every=state_every,
        callback=callback,
        should_stop=should_stop,
    )
    if status == "stopped" and bool(state.done):  # the path ended before the iteration cap
        status = "finished"
    return state, status, counts


def _host_view(state: ExactState) -> dict:
    """The scalars of the state that the host needs to choose the next bucket."""
    return {
        "m_from": state.m_from,
        "m_to": state.m_to,
        "lam": state.lam,
        "entry": state.entry,
        "next_size": None if state.schedule is None else state.schedule.batch_size,
    }
