"""A deep ensemble of MAP fits under the bnn-bench prior (num_members=1 is a plain MAP fit).

Every member maximises the same minibatch log-target l_B(theta) = log p(theta) + N/|B| sum_B
log p(y|x, theta) (the prior's log density is the weight decay) with optax Adam and a
learning-rate schedule, from its own prior draw and its own minibatch order. Members are
vectorised (vmap over the leading axis, like SMC particles); the predictive weights them
equally. Steps run as jitted `lax.scan` chunks; the host sees the members between chunks.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from bnn_bench.inference.minibatch import epoch_batch

SCHEDULES = ("constant", "cosine")


class EnsembleConfig(NamedTuple):
    """Static settings (the config's ensemble.* keys; the schema takes its defaults from here)."""

    num_members: int = 5
    num_epochs: int = 100
    batch_size: int = 100
    learning_rate: float = 0.01
    lr_schedule: str = "cosine"  # "constant" | "cosine" (decays to 0 over the run)


class EnsembleState(NamedTuple):
    params: jax.Array  # (M, D)
    opt_state: Any  # Adam state with leading axis M
    step: jax.Array  # () steps taken


class EnsembleInfo(NamedTuple):
    loss: jax.Array  # (M,) -l_B / N of the step's minibatch (before the update)


def check_config(config: EnsembleConfig) -> None:
    """Refuse impossible settings with a ValueError naming the ensemble.* key."""
    if config.num_members < 1:
        raise ValueError("ensemble.num_members must be >= 1")
    if config.num_epochs < 1:
        raise ValueError("ensemble.num_epochs must be >= 1")
    if config.batch_size < 1:
        raise ValueError("ensemble.batch_size must be >= 1")
    if not config.learning_rate > 0:
        raise ValueError("ensemble.learning_rate must be > 0")
    if config.lr_schedule not in SCHEDULES:
        raise ValueError(f"ensemble.lr_schedule must be one of {SCHEDULES}")


def num_steps(config: EnsembleConfig, num_data: int) -> int:
    """Optimiser steps of the whole run: epochs x minibatches per epoch."""
    return config.num_epochs * max(num_data // min(config.batch_size, num_data), 1)


def optimizer(config: EnsembleConfig, total_steps: int) -> optax.GradientTransformation:
    if config.lr_schedule == "cosine":
        return optax.adam(optax.cosine_decay_schedule(config.learning_rate, total_steps))
    return optax.adam(config.learning_rate)


def init(
    rng_key: jax.Array, prior_std: jax.Array, config: EnsembleConfig, total_steps: int
) -> EnsembleState:
    """One prior draw per member, and Adam's state."""
    params = jax.random.normal(rng_key, (config.num_members, prior_std.shape[0])) * prior_std
    return init_from(params, config, total_steps)


def init_from(params: jax.Array, config: EnsembleConfig, total_steps: int) -> EnsembleState:
    """Members starting at the rows of `params` (M, D)."""
    opt = optimizer(config, total_steps)
    return EnsembleState(params, jax.vmap(opt.init)(params), jnp.zeros((), jnp.int32))


@partial(jax.jit, static_argnames=("log_target", "config", "total_steps", "num"))
def run_chunk(
    rng_key: jax.Array,
    state: EnsembleState,
    x: jax.Array,
    y: jax.Array,
    *,
    log_target: Callable,
    config: EnsembleConfig,
    total_steps: int,
    num: int,
):
    """`num` Adam steps of every member; returns (state, EnsembleInfo stacked (num, M)).

    Member m's minibatch order is epoch_batch(fold_in(rng_key, m), step, ...): a function of
    the step index only, so a run split into chunks (or resumed) takes the same steps.
    """
    n = x.shape[0]
    batch = min(config.batch_size, n)
    opt = optimizer(config, total_steps)
    mask = jnp.ones(batch, bool)
    member_keys = jax.vmap(lambda m: jax.random.fold_in(rng_key, m))(jnp.arange(config.num_members))

    def loss(theta, idx):
        return -log_target(theta, x[idx], y[idx], mask, batch) / n

    def member_step(key, theta, opt_state, step):
        idx = epoch_batch(key, step, n, batch)
        value, grad = jax.value_and_grad(loss)(theta, idx)
        updates, opt_state = opt.update(grad, opt_state, theta)
        return optax.apply_updates(theta, updates), opt_state, value

    def body(st, _):
        params, opt_state, value = jax.vmap(member_step, in_axes=(0, 0, 0, None))(
            member_keys, st.params, st.opt_state, st.step
        )
        return EnsembleState(params, opt_state, st.step + 1), EnsembleInfo(value)

    return jax.lax.scan(body, state, None, num)
