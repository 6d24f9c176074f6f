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
from bnn_bench.inference.smc.proposals import Proposal, leapfrog_move
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
    chunk_size: int | None = None  # particles moved at once (memory bound); None = all
    particle_map: str = "vmap"  # vmap (dense models) | unroll (convolutions on CPU)


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


@partial(jax.jit, static_argnames=("log_target", "config", "bucket"))
def step(
    rng_key: jax.Array,
    state: SMCState,
    x: jax.Array,
    y: jax.Array,
    batch_size: jax.Array,
    *,
    log_target: Callable,
    config: SMCConfig,
    bucket: int,
) -> tuple[SMCState, SMCInfo]:
    """One SMC iteration on a fresh batch of `batch_size` (traced) rows padded to `bucket`."""
    key_batch, key_move, key_resample = jax.random.split(rng_key, 3)
    num_particles = state.particles.shape[0]
    idx, mask = select_batch(key_batch, x.shape[0], bucket, batch_size)
    xb, yb = x[idx], y[idx]

    def value_and_grad(theta):
        return jax.value_and_grad(log_target)(theta, xb, yb, mask, batch_size)

    def move_one(args):
        key, theta = args
        return leapfrog_move(value_and_grad, key, theta, config.proposal)

    keys = jax.random.split(key_move, num_particles)
    moved = map_particles(
        move_one,
        (keys, state.particles),
        particle_map=config.particle_map,
        chunk_size=config.chunk_size,
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
    return new_state, SMCInfo(resampled=do_resample, **info_common)


def weighted_moments(state: SMCState) -> tuple[jax.Array, jax.Array]:
    """Weighted mean and standard deviation of every coordinate of the particle cloud."""
    w = jax.nn.softmax(state.log_weights)[:, None]
    mean = jnp.sum(w * state.particles, axis=0)
    var = jnp.sum(w * (state.particles - mean) ** 2, axis=0)
    return mean, jnp.sqrt(var)
