"""Move kernels for SMC: HMC with S leapfrog steps; Langevin is the S = 1 case; ChEES-HMC.

No accept/reject step: the move returns the energy change so that the sampler's weights absorb
the integration error (forward kernel with its time reversal as L-kernel, see algorithms.md).

Tuning between iterations (all on the device, from quantities the step already computes):
- `adapt_step_size`: log h += adapt_rate * (mean_j min(1, exp(-Delta H_j)) - target_accept).
- `mass="diag"`: inverse mass = the weighted particle variance per coordinate, normalised to mean
  1 and shrunk towards 1 (so that h keeps its scale), recomputed from the cloud at every step.
- `chees`: a jittered number of leapfrog steps n_k = ceil(u_k T / h) (u_k a Halton sequence), with
  T adapted by the ChEES criterion over the particle population (blackjax's ChEES update) and h
  by the rule above.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from blackjax.adaptation import chees_adaptation
from blackjax.mcmc.dynamic_hmc import halton_sequence

PROPOSALS = ("hmc", "langevin", "chees")
MASSES = ("identity", "diag")


class Proposal(NamedTuple):
    """Leapfrog settings: `num_steps` (S, static) and `step_size` (h, the initial value)."""

    num_steps: int
    step_size: float
    name: str = "hmc"
    adapt_step_size: bool = False
    target_accept: float = 0.65
    adapt_rate: float = 1.0
    mass: str = "identity"
    max_steps: int = 10  # chees: most leapfrog steps in one trajectory
    learning_rate: float = 0.05  # chees: Adam's learning rate on log T

    @property
    def adaptive(self) -> bool:
        """Whether the move carries tuning state between iterations."""
        return self.adapt_step_size or self.mass != "identity" or self.name == "chees"


class MoveResult(NamedTuple):
    position: jax.Array  # theta'
    log_weight_increment: jax.Array  # [l(theta') - K(p')] - [l(theta) - K(p)] = -Delta H
    log_target_start: jax.Array  # l_B(theta): comes free with the first gradient
    log_target_end: jax.Array  # l_B(theta')
    momentum: Any = None  # p' (ChEES needs it)
    terms_start: Any = None  # per-example log-likelihoods at theta (when the target has them)
    terms_end: Any = None  # ... and at theta'


class Tuning(NamedTuple):
    """Proposal settings that change between iterations (device arrays; a pytree)."""

    step_size: jax.Array  # h
    num_steps: jax.Array  # leapfrog steps of the last move (int32; S unless chees)
    chees: Any = None  # blackjax ChEESAdaptationState for proposal=chees


def _chees_base(proposal: Proposal):
    return chees_adaptation.base(
        jitter_generator=lambda arg: halton_sequence(arg),
        next_random_arg_fn=lambda arg: arg + 1,
        optim=optax.adam(proposal.learning_rate),
        target_acceptance_rate=proposal.target_accept,
        decay_rate=0.5,
        max_leapfrog_steps=proposal.max_steps,
    )


def init_tuning(proposal: Proposal) -> Tuning:
    h = jnp.asarray(proposal.step_size, jnp.float32)
    chees = None
    if proposal.name == "chees":
        init, _ = _chees_base(proposal)
        chees = init(jnp.asarray(0, jnp.int32), h)
        # Start from the trajectory of S fixed steps (blackjax starts from one step).
        t0 = jnp.asarray(proposal.num_steps * proposal.step_size, jnp.float32)
        chees = chees._replace(
            trajectory_length=t0, log_trajectory_length_moving_average=jnp.log(t0)
        )
    return Tuning(step_size=h, num_steps=jnp.asarray(proposal.num_steps, jnp.int32), chees=chees)


def move_parameters(proposal: Proposal, tuning: Tuning) -> tuple[jax.Array, jax.Array | int]:
    """(h, number of leapfrog steps) for the next move; the step count is static unless chees."""
    if proposal.name != "chees":
        return tuning.step_size, proposal.num_steps
    st = tuning.chees
    jitter = halton_sequence(st.random_generator_arg)
    n = jnp.ceil(jitter * st.trajectory_length / st.step_size).astype(jnp.int32)
    return st.step_size, jnp.clip(n, 1, proposal.max_steps)


def accept_probability(log_weight_increment: jax.Array, finite: jax.Array) -> jax.Array:
    """min(1, exp(-Delta H)) per particle; 0 for divergent ones."""
    a = jnp.exp(jnp.minimum(log_weight_increment, 0.0))
    return jnp.where(finite, a, 0.0)


def adapt(
    proposal: Proposal,
    tuning: Tuning,
    *,
    num_steps: jax.Array | int,
    accept: jax.Array,
    finite: jax.Array,
    initial_positions: jax.Array,
    positions: jax.Array,
    momenta: jax.Array,
    inverse_mass: jax.Array,
) -> Tuning:
    """Tuning for the next iteration from this move's energy errors (and, for chees, paths)."""
    num_steps = jnp.asarray(num_steps, jnp.int32)
    h = tuning.step_size
    if proposal.adapt_step_size or proposal.name == "chees":
        h = h * jnp.exp(proposal.adapt_rate * (jnp.mean(accept) - proposal.target_accept))
    if proposal.name != "chees":
        return Tuning(step_size=h, num_steps=num_steps, chees=None)
    # The trajectory length T from blackjax's ChEES update (Adam on log T, moving average);
    # the step size from the rule above rather than blackjax's dual averaging, whose first
    # iterates probe 10 h: harmless with accept/reject, but without it such a step degenerates
    # every particle's weight.
    _, update = _chees_base(proposal)
    safe = lambda a: jnp.where(finite[:, None], a, 0.0)
    chees = update(
        tuning.chees,
        safe(positions),
        safe(momenta),
        safe(initial_positions),
        jnp.maximum(accept, 1e-20),
        ~finite,
        inverse_mass,
    )
    length = jnp.clip(chees.trajectory_length, h, proposal.max_steps * h)
    chees = chees._replace(step_size=h, trajectory_length=length)
    return Tuning(step_size=h, num_steps=num_steps, chees=chees)


def diagonal_inverse_mass(particles: jax.Array, log_weights: jax.Array) -> jax.Array:
    """Weighted particle variance per coordinate, normalised to mean 1 and shrunk towards 1.

    v_d / mean(v) is mixed with 1 as (J v_d / mean(v) + 5) / (J + 5) (Stan's regularisation of
    a variance estimated from few draws): with J particles far below D, single coordinates are
    poorly estimated, and a cloud collapsed by resampling gives the identity.
    """
    num = particles.shape[0]
    w = jax.nn.softmax(log_weights)
    w = jnp.where(jnp.isfinite(w), w, 0.0)
    mean = w @ particles
    var = w @ (particles - mean) ** 2
    scale = jnp.mean(var)
    rel = jnp.where(scale > 0, var / jnp.where(scale > 0, scale, 1.0), 1.0)
    return (num * rel + 5.0) / (num + 5.0)


def leapfrog_move(
    value_and_grad: Callable[[jax.Array], tuple[jax.Array, jax.Array]],
    rng_key: jax.Array,
    position: jax.Array,
    proposal: Proposal,
    *,
    step_size: jax.Array | float | None = None,
    num_steps: jax.Array | int | None = None,
    inverse_mass: jax.Array | None = None,
    terms: Callable[[jax.Array], jax.Array] | None = None,
) -> MoveResult:
    """One HMC trajectory from a fresh momentum; num_steps + 1 gradient evaluations.

    `value_and_grad(theta)` returns (l, grad l), or ((l, per-example terms), grad l) when `terms`
    is set (then `terms` is unused: the flag says the aux is there). The mass is the identity, or
    diag(1 / inverse_mass). A traced `num_steps` (chees) runs a loop with a dynamic trip count; a
    static one is unrolled (XLA's CPU convolutions are slower inside a loop body).
    """
    h = proposal.step_size if step_size is None else step_size
    n = proposal.num_steps if num_steps is None else num_steps
    with_terms = terms is not None
    momentum = jax.random.normal(rng_key, position.shape, position.dtype)
    if inverse_mass is not None:
        momentum = momentum / jnp.sqrt(inverse_mass)
        kinetic = lambda p: 0.5 * jnp.vdot(p, inverse_mass * p)
        velocity = lambda p: inverse_mass * p
    else:
        kinetic = lambda p: 0.5 * jnp.vdot(p, p)
        velocity = lambda p: p

    def vg(theta):
        if with_terms:
            (logp, aux), g = value_and_grad(theta)
            return logp, aux, g
        logp, g = value_and_grad(theta)
        return logp, None, g

    l0, aux0, g0 = vg(position)

    def leapfrog(carry):
        theta, p, g, _, _ = carry
        p = p + 0.5 * h * g
        theta = theta + h * velocity(p)
        logp, aux, g = vg(theta)
        p = p + 0.5 * h * g
        return theta, p, g, logp, aux

    carry = (position, momentum, g0, l0, aux0)
    if isinstance(n, int):
        # Unrolled in the trace: S is small, and XLA's CPU convolutions are slower inside a loop
        # body. Not lax.scan(unroll=True): with S = 1 (langevin) that leaves the convolutions in
        # a loop body too (docs/performance.md has the measurement).
        for _ in range(n):
            carry = leapfrog(carry)
    else:
        carry = jax.lax.fori_loop(0, n, lambda _, c: leapfrog(c), carry)
    theta, p, _, l1, aux1 = carry
    increment = (l1 - kinetic(p)) - (l0 - kinetic(momentum))
    return MoveResult(theta, increment, l0, l1, p, aux0, aux1)
