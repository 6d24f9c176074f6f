"""Metropolis-adjusted moves for the exact SMC sampler (algorithms.md, "The exact sampler").

Every particle takes `num_mcmc_steps` steps of blackjax's HMC kernel (S leapfrog steps of size h,
accept with min(1, exp(-Delta H))) on the current target gamma_k; with S = 1 this is MALA (one
leapfrog step from a fresh momentum, Metropolis-adjusted). The kernel leaves gamma_k invariant,
so moves never touch the particles' weights.

Between iterations the step size follows the cloud's mean acceptance,
log h += adapt_rate * (mean acceptance - target_accept); it uses only the previous iteration's
moves, so every iteration's kernel is fixed before the iteration starts. A round that accepts
almost nothing (a step size far too large for the new target: the first targets of a network
whose prior scales are small) leaves the resampled duplicates where they are; exact.py then
moves again at half the step size (`max_retries`). Each round is gamma-invariant on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from bnn_bench.inference.mapping import map_particles

DIVERGENCE_THRESHOLD = 1000.0  # blackjax's hmc.build_kernel default (energy error)


class MoveSettings(NamedTuple):
    """Static settings of the Metropolis-adjusted move (hashable; part of the jit cache key)."""

    num_steps: int  # S leapfrog steps per MH step (1: MALA)
    num_mcmc_steps: int  # MH steps per particle per SMC iteration
    adapt_step_size: bool
    target_accept: float
    adapt_rate: float
    mass: str  # identity | diag
    # A round of moves whose mean acceptance is below `min_accept` is followed by another from
    # where it ended at half the step size, up to `max_retries` times (exact.py, `_move`).
    min_accept: float = 0.2
    max_retries: int = 0
    # proposal=chees: a jittered number of leapfrog steps ceil(u_k T / h), T adapted between
    # iterations by the ChEES criterion over the cloud (exact.py; proposals.py: minibatch path)
    chees: bool = False
    max_steps: int = 10
    learning_rate: float = 0.05


class MoveInfo(NamedTuple):
    accept: jax.Array  # (J,) mean acceptance probability over the particle's MH steps
    divergent: jax.Array  # (J,) number of divergent trajectories
    logdensity: jax.Array  # (J,) log gamma_k at the particle's final position
    last: Any = None  # LastTransition of every particle (with `last_transition=True`)


class LastTransition(NamedTuple):
    """The particle's last MH step, what the ChEES criterion reads (all (J, ...) arrays)."""

    start: jax.Array  # position at the start of the step
    proposal: jax.Array  # the leapfrog end point
    momentum: jax.Array  # the momentum at the end point
    accept: jax.Array  # its acceptance probability
    divergent: jax.Array


def mh_moves(
    rng_key: jax.Array,
    positions: jax.Array,
    logdensity_fn: Callable[[jax.Array], jax.Array],
    step_size: jax.Array,
    settings: MoveSettings,
    *,
    inverse_mass: jax.Array | None = None,
    particle_map: str = "vmap",
    particle_chunk: int | None = None,
    num_steps: jax.Array | None = None,
    last_transition: bool = False,
) -> tuple[jax.Array, MoveInfo]:
    """Move every row of `positions` with `num_mcmc_steps` gamma-invariant HMC steps.

    Costs num_mcmc_steps * S + 1 gradient evaluations per particle (the first at the start: the
    target has just changed; each later step reuses the accepted state's gradient). `num_steps`
    (traced: chees) replaces S; `last_transition` also returns each particle's last step.
    """
    # imported here: blackjax's import starts the JAX backend, and config.py reads this
    # module's defaults before hardware.platform is applied
    from blackjax.mcmc import hmc

    # particle_map="unroll" (convolutional models on CPU, where XLA's convolutions are several
    # times slower inside a loop body or blackjax's kernel): `hmc_step`, blackjax's kernel with
    # the S leapfrog steps unrolled, and the MH steps unrolled in the trace too
    unroll = particle_map == "unroll" and num_steps is None
    kernel = None if unroll else hmc.build_kernel()
    steps = settings.num_steps if num_steps is None else num_steps
    if inverse_mass is None:
        inverse_mass = jnp.ones(positions.shape[1], positions.dtype)

    def one(args):
        key, theta = args
        state = hmc.init(theta, logdensity_fn)
        zero = jnp.zeros((), theta.dtype)
        last = LastTransition(theta, theta, jnp.zeros_like(theta), zero, jnp.asarray(False))

        def body(carry, k):
            st, _ = carry
            if unroll:
                new, p_accept, divergent, proposal = hmc_step(
                    k, st, logdensity_fn, step_size, inverse_mass, settings.num_steps
                )
            else:
                new, info = kernel(k, st, logdensity_fn, step_size, inverse_mass, steps)
                p_accept, divergent = info.acceptance_rate, info.is_divergent
                proposal = info.proposal
            accept = jnp.nan_to_num(jnp.where(divergent, 0.0, p_accept))
            last = LastTransition(
                st.position, proposal.position, proposal.momentum, accept, divergent
            )
            return (new, last if last_transition else carry[1]), (accept, divergent)

        keys = jax.random.split(key, settings.num_mcmc_steps)
        if unroll:
            carry, per_step = (state, last), []
            for k in keys:
                carry, out = body(carry, k)
                per_step.append(out)
            (state, last) = carry
            accept, divergent = (jnp.stack(a) for a in zip(*per_step, strict=True))
        else:
            (state, last), (accept, divergent) = jax.lax.scan(body, (state, last), keys)
        out = (state.position, jnp.mean(accept), jnp.sum(divergent), state.logdensity)
        return (*out, last) if last_transition else out

    keys = jax.random.split(rng_key, positions.shape[0])
    out = map_particles(
        one, (keys, positions), particle_map=particle_map, particle_chunk=particle_chunk
    )
    moved, accept, divergent, logdensity = out[:4]
    info = MoveInfo(accept, divergent, logdensity, out[4] if last_transition else None)
    return moved, info


def hmc_step(rng_key, state, logdensity_fn, step_size, inverse_mass, num_steps: int):
    """One step of blackjax's HMC kernel (hmc.build_kernel()(rng_key, state, logdensity_fn,
    step_size, inverse_mass, num_steps)) with its S leapfrog steps unrolled in the trace: the
    same keys, momentum, velocity Verlet integrator, energy difference and accept draw, so the
    same result (tests/test_exact_smc.py compares them), with no loop or conditional around
    the network, where XLA's CPU convolutions are several times slower (docs/performance.md).
    Returns (new HMCState, acceptance probability, divergent, proposal IntegratorState)."""
    from blackjax.mcmc import hmc, integrators, metrics
    from blackjax.mcmc.proposal import safe_energy_diff

    metric = metrics.default_metric(inverse_mass)
    one = integrators.velocity_verlet(logdensity_fn, metric.kinetic_energy)
    key_momentum, key_accept = jax.random.split(rng_key, 2)
    momentum = metric.sample_momentum(key_momentum, state.position)
    start = integrators.IntegratorState(
        state.position, momentum, state.logdensity, state.logdensity_grad
    )
    end = start
    for _ in range(num_steps):
        end = one(end, step_size)
    end = end._replace(momentum=jax.tree.map(lambda m: -1.0 * m, end.momentum))  # flipped
    energy = lambda st: -st.logdensity + metric.kinetic_energy(st.momentum)  # noqa: E731
    delta = safe_energy_diff(energy(start), energy(end))
    divergent = -delta > DIVERGENCE_THRESHOLD
    p_accept = jnp.clip(jnp.exp(delta), max=1)
    accept = jax.random.bernoulli(key_accept, p_accept)
    proposed = hmc.HMCState(end.position, end.logdensity, end.logdensity_grad)
    new = jax.tree.map(lambda a, b: jnp.where(accept, a, b), proposed, state)
    return new, p_accept, divergent, end


def gradient_evaluations(settings: MoveSettings, num_steps: int | None = None) -> int:
    """Gradient evaluations per particle per round of moves (see mh_moves); `num_steps`: the
    round's leapfrog steps where they vary (chees)."""
    steps = settings.num_steps if num_steps is None else num_steps
    return settings.num_mcmc_steps * steps + 1


def next_step_size(step_size: jax.Array, mean_accept: jax.Array, settings: MoveSettings):
    """h for the next iteration from this iteration's mean acceptance (unchanged if not adapted)."""
    if not settings.adapt_step_size:
        return step_size
    new = step_size * jnp.exp(settings.adapt_rate * (mean_accept - settings.target_accept))
    return jnp.where(jnp.isfinite(new) & (new > 0), new, step_size)
