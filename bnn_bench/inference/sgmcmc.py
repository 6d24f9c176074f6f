"""Stochastic-gradient MCMC: blackjax's SGLD and SGHMC kernels on the minibatch log-target.

One chain moves with minibatch gradients of l_B(theta) = log p(theta) + N/|B| sum_B log p(y|x,
theta) (the estimator blackjax.sgmcmc.gradients.grad_estimator forms, here with bnn-bench's
masked batch log-target). The step size is constant or cyclical (Zhang et al. 2020: cosine
cycles from step_size down to 0, `num_cycles` of them over the run; draws are kept only in each
cycle's second half, where the step size is small). After `burn_in` steps every `thin`-th
position is kept. SGHMC takes `num_integration_steps` steps of blackjax's friction-`alpha`
dynamics on each minibatch. Steps run as jitted `lax.scan` chunks of `thin` steps each.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from bnn_bench.inference.minibatch import epoch_batch

ALGORITHMS = ("sgld", "sghmc")
# step_size=None means this: SGHMC moves the position by step_size * momentum, so its step size
# is on the scale of the square root of SGLD's (0.01^2 = 1e-4)
DEFAULT_STEP = {"sgld": 1e-4, "sghmc": 0.01}
SCHEDULES = ("constant", "cyclical")


class SGMCMCConfig(NamedTuple):
    """Static settings (the config's sgmcmc.* keys; the schema takes its defaults from here)."""

    algorithm: str = "sgld"  # "sgld" | "sghmc"
    num_iterations: int = 10000  # kernel steps (one minibatch each)
    batch_size: int = 100
    step_size: float | None = None  # the (initial, for cyclical) step size; None: DEFAULT_STEP
    step_schedule: str = "constant"  # "constant" | "cyclical"
    num_cycles: int = 4
    burn_in: int = 2000  # steps before the first kept draw
    thin: int = 40
    num_integration_steps: int = 5  # SGHMC
    alpha: float = 0.1  # SGHMC friction


class SGMCMCState(NamedTuple):
    position: jax.Array  # (D,)
    step: jax.Array  # () steps taken


class SGMCMCInfo(NamedTuple):
    step_size: jax.Array  # the step's step size
    keep: jax.Array  # bool: the position after the step is a draw


def check_config(config: SGMCMCConfig) -> None:
    """Refuse impossible settings with a ValueError naming the sgmcmc.* key."""
    if config.algorithm not in ALGORITHMS:
        raise ValueError(f"sgmcmc.algorithm must be one of {ALGORITHMS}")
    if config.step_schedule not in SCHEDULES:
        raise ValueError(f"sgmcmc.step_schedule must be one of {SCHEDULES}")
    if config.step_size is not None and not config.step_size > 0:
        raise ValueError("sgmcmc.step_size must be > 0 (or null for the algorithm's default)")
    if config.thin < 1 or config.num_iterations % config.thin:
        raise ValueError("sgmcmc.num_iterations must be a multiple of sgmcmc.thin (>= 1)")
    if not 0 <= config.burn_in < config.num_iterations:
        raise ValueError("sgmcmc.burn_in must be in [0, sgmcmc.num_iterations)")
    if config.num_cycles < 1:
        raise ValueError("sgmcmc.num_cycles must be >= 1")
    if config.num_integration_steps < 1:
        raise ValueError("sgmcmc.num_integration_steps must be >= 1")
    if kept_draws(config) < 1:
        raise ValueError("no draw is kept: lower sgmcmc.burn_in or sgmcmc.thin")


def step_size_at(step: jax.Array, config: SGMCMCConfig) -> jax.Array:
    """The step size of step `step` (0-based)."""
    h = base_step_size(config)
    if config.step_schedule == "constant":
        return jnp.asarray(h, jnp.float32)
    period = -(-config.num_iterations // config.num_cycles)
    phase = jnp.mod(step, period) / period
    return h / 2 * (jnp.cos(jnp.pi * phase) + 1)


def base_step_size(config: SGMCMCConfig) -> float:
    """config.step_size, or the algorithm's DEFAULT_STEP when it is None."""
    return DEFAULT_STEP[config.algorithm] if config.step_size is None else config.step_size


def is_kept(step: jax.Array, config: SGMCMCConfig) -> jax.Array:
    """Whether the position after step `step` (0-based) is a draw."""
    done = step + 1
    keep = (done > config.burn_in) & (done % config.thin == 0)
    if config.step_schedule == "cyclical":
        period = -(-config.num_iterations // config.num_cycles)
        keep &= jnp.mod(step, period) >= period // 2
    return keep


def kept_draws(config: SGMCMCConfig) -> int:
    """How many draws a whole run keeps."""
    return int(jnp.sum(is_kept(jnp.arange(config.num_iterations), config)))


def init(position: jax.Array) -> SGMCMCState:
    return SGMCMCState(position, jnp.zeros((), jnp.int32))


def _kernel(config: SGMCMCConfig, grad_estimator: Callable):
    import blackjax  # here, not at the top: its import starts the JAX backend (bnn_bench.backend)

    if config.algorithm == "sgld":
        return blackjax.sgld(grad_estimator)
    return blackjax.sghmc(
        grad_estimator, num_integration_steps=config.num_integration_steps, alpha=config.alpha
    )


def step(
    rng_key: jax.Array,
    state: SGMCMCState,
    x: jax.Array,
    y: jax.Array,
    *,
    log_target: Callable,
    config: SGMCMCConfig,
) -> tuple[SGMCMCState, SGMCMCInfo]:
    """One SGLD/SGHMC step on minibatch epoch_batch(rng_key, state.step); returns (state, info)
    with the step size used and whether the new position is a draw. Step k's minibatch and noise
    come from rng_key and k only, so a run split into chunks (or resumed) takes the same steps.
    Not jitted: jit the caller."""
    n = x.shape[0]
    batch = min(config.batch_size, n)
    mask = jnp.ones(batch, bool)

    def grad_estimator(theta, minibatch):
        xb, yb = minibatch
        return jax.grad(lambda t: log_target(t, xb, yb, mask, batch))(theta)

    idx = epoch_batch(rng_key, state.step, n, batch)
    h = step_size_at(state.step, config)
    key = jax.random.fold_in(jax.random.fold_in(rng_key, 1), state.step)
    position = _kernel(config, grad_estimator).step(key, state.position, (x[idx], y[idx]), h)
    return SGMCMCState(position, state.step + 1), SGMCMCInfo(h, is_kept(state.step, config))


@partial(jax.jit, static_argnames=("log_target", "config", "num_groups"))
def run_chunk(
    rng_key: jax.Array,
    state: SGMCMCState,
    x: jax.Array,
    y: jax.Array,
    *,
    log_target: Callable,
    config: SGMCMCConfig,
    num_groups: int,
):
    """num_groups x thin steps; returns (state, positions (num_groups, D), SGMCMCInfo of each
    group's last step)."""

    def one(st, _):
        return step(rng_key, st, x, y, log_target=log_target, config=config)

    def group(st, _):
        st, infos = jax.lax.scan(one, st, None, config.thin)
        return st, (st.position, jax.tree.map(lambda a: a[-1], infos))

    state, (positions, info) = jax.lax.scan(group, state, None, num_groups)
    return state, positions, info


def grads_per_step(config: SGMCMCConfig) -> int:
    """Minibatch gradients per kernel step (SGHMC: one per integration step)."""
    return config.num_integration_steps if config.algorithm == "sghmc" else 1
