"""Move kernels for SMC: HMC with S leapfrog steps; Langevin is the S = 1 case.

No accept/reject step: the move returns the energy change so that the sampler's weights absorb
the integration error (forward kernel with its time reversal as L-kernel, see algorithms.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

PROPOSALS = ("hmc", "langevin")


class Proposal(NamedTuple):
    """Leapfrog settings: `num_steps` (S, static) and `step_size` (h)."""

    num_steps: int
    step_size: float


class MoveResult(NamedTuple):
    position: jax.Array  # theta'
    log_weight_increment: jax.Array  # [l(theta') - |p'|^2/2] - [l(theta) - |p|^2/2]
    log_target_start: jax.Array  # l_B(theta): comes free with the first gradient
    log_target_end: jax.Array  # l_B(theta')


def leapfrog_move(
    value_and_grad: Callable[[jax.Array], tuple[jax.Array, jax.Array]],
    rng_key: jax.Array,
    position: jax.Array,
    proposal: Proposal,
) -> MoveResult:
    """One HMC trajectory with identity mass from a fresh momentum; S + 1 gradient evaluations."""
    h = proposal.step_size
    momentum = jax.random.normal(rng_key, position.shape, position.dtype)
    l0, g0 = value_and_grad(position)

    def leapfrog(carry, _):
        theta, p, g, _ = carry
        p = p + 0.5 * h * g
        theta = theta + h * p
        logp, g = value_and_grad(theta)
        p = p + 0.5 * h * g
        return (theta, p, g, logp), None

    # Unrolled: S is small, and XLA's CPU convolutions run ~3x slower inside a loop body.
    (theta, p, _, l1), _ = jax.lax.scan(
        leapfrog, (position, momentum, g0, l0), None, length=proposal.num_steps, unroll=True
    )
    increment = (l1 - 0.5 * jnp.vdot(p, p)) - (l0 - 0.5 * jnp.vdot(momentum, momentum))
    return MoveResult(theta, increment, l0, l1)
