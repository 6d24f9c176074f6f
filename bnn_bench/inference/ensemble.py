"""A deep ensemble of MAP fits under the bnn-bench prior (num_members=1 is a plain MAP fit).

Every member maximises the same minibatch log-target l_B(theta) = log p(theta) + N/|B| sum_B
log p(y|x, theta) (the prior's log density is the weight decay) with optax Adam and a
learning-rate schedule, from its own prior draw and its own minibatch order. Members are
vectorised (vmap over the leading axis, like SMC particles); the predictive weights them
equally. Steps run as jitted `lax.scan` chunks; the host sees the members between chunks.

particle_map="unroll" (convolutional models on CPU, `build.particle_map`): the members and the
steps are unrolled in the trace instead, at most UNROLL_STEPS steps per jitted call, because
XLA's CPU convolutions are several times slower vmapped over per-member kernels or inside a loop
body (docs/performance.md has the measurement). Both give the same steps.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from bnn_bench.inference.mapping import map_particles
from bnn_bench.inference.minibatch import epoch_batch

SCHEDULES = ("constant", "cosine")
UNROLL_STEPS = 5  # particle_map=unroll: steps per jitted call (compile time grows with it)


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


@partial(jax.jit, static_argnames=("log_target", "config", "total_steps", "num", "particle_map"))
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
    particle_map: str = "vmap",
):
    """`num` Adam steps of every member; returns (state, EnsembleInfo stacked (num, M)).
    "vmap": members vectorised, steps in a lax.scan; "unroll": both unrolled in the trace.

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

    def member_step(args):
        key, theta, opt_state, step = args
        idx = epoch_batch(key, step, n, batch)
        value, grad = jax.value_and_grad(loss)(theta, idx)
        updates, opt_state = opt.update(grad, opt_state, theta)
        return optax.apply_updates(theta, updates), opt_state, value

    def body(st, _):
        steps = jnp.broadcast_to(st.step, (config.num_members,))
        args = (member_keys, st.params, st.opt_state, steps)
        params, opt_state, value = map_particles(member_step, args, particle_map=particle_map)
        return EnsembleState(params, opt_state, st.step + 1), EnsembleInfo(value)

    if particle_map == "unroll":
        infos = []
        for _ in range(num):
            state, info = body(state, None)
            infos.append(info)
        return state, jax.tree.map(lambda *a: jnp.stack(a), *infos)
    return jax.lax.scan(body, state, None, num)


def run_steps(rng_key, state, x, y, *, num: int, particle_map: str = "vmap", **static):
    """`num` steps (run_chunk's arguments): one jitted call, or under "unroll" calls of at most
    UNROLL_STEPS steps (two compiled sizes at most), dispatched without waiting for the device."""
    if particle_map != "unroll":
        return run_chunk(rng_key, state, x, y, num=num, **static)
    infos = []
    for start in range(0, num, UNROLL_STEPS):
        k = min(UNROLL_STEPS, num - start)
        state, info = run_chunk(rng_key, state, x, y, num=k, particle_map="unroll", **static)
        infos.append(info)
    return state, jax.tree.map(lambda *a: jnp.concatenate(a), *infos)
