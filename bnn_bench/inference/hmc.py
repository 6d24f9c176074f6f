"""A reference posterior: full-batch NUTS (or plain HMC) through blackjax, several chains.

Each chain starts from a MAP fit (optax Adam on the same log-density, from its own prior draw)
or from a prior draw, is tuned by blackjax's window adaptation (Stan's windows: dual-averaging
step size and a diagonal inverse mass matrix, per chain), and then draws `num_samples`
transitions of which every `thin`-th is kept. Sampling runs as jitted `lax.scan` chunks; the
host sees the chains only between chunks (progress, checkpoints, stop). What is kept of a draw
is `observe(theta)` (e.g. the test-set log-probabilities), so that weight vectors need not be
stored; function-space diagnostics (`diagnostics`) use blackjax.diagnostics on those.

Pure JAX: receives a log-density of a flat weight vector, arrays, keys and plain numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

# blackjax is imported where it is used: its import starts the JAX backend, which must wait for
# the platform settings (bnn_bench.backend), and the config schema imports this module.

ALGORITHMS = ("nuts", "hmc")
INITS = ("map", "prior")


class HMCConfig(NamedTuple):
    """Static settings (the config's hmc.* keys; the schema takes its defaults from here)."""

    algorithm: str = "nuts"  # "nuts" | "hmc"
    num_chains: int = 4
    num_warmup: int = 800  # window-adaptation steps per chain
    num_samples: int = 1000  # transitions per chain after warmup
    thin: int = 4  # keep every thin-th transition
    target_accept: float = 0.8
    max_tree_depth: int = 10  # NUTS: at most 2**max_tree_depth - 1 leapfrog steps
    num_integration_steps: int = 32  # plain HMC: leapfrog steps per transition
    init: str = "map"  # "map" | "prior"
    init_steps: int = 1000  # Adam steps of each MAP start
    init_learning_rate: float = 0.01


class Chains(NamedTuple):
    """The chains between chunks: blackjax HMC/NUTS states and each chain's tuned parameters."""

    state: Any  # blackjax HMCState with leading axis C
    step_size: jax.Array  # (C,)
    inverse_mass_matrix: jax.Array  # (C, D) diagonal


class ChunkInfo(NamedTuple):
    """Per-chain sums over a chunk of transitions (the host divides by the counts)."""

    num_divergent: jax.Array  # (C,)
    tree_depth: jax.Array  # (C,) sum of trajectory doublings (HMC: 0)
    num_integration_steps: jax.Array  # (C,) leapfrog steps = full-data gradients
    acceptance_rate: jax.Array  # (C,)


def check_config(config: HMCConfig) -> None:
    """Refuse impossible settings with a ValueError naming the hmc.* key."""
    if config.algorithm not in ALGORITHMS:
        raise ValueError(f"hmc.algorithm must be one of {ALGORITHMS}, got {config.algorithm!r}")
    if config.init not in INITS:
        raise ValueError(f"hmc.init must be one of {INITS}, got {config.init!r}")
    if config.num_chains < 2:
        raise ValueError("hmc.num_chains must be >= 2 (R-hat compares chains)")
    if config.thin < 1 or config.num_samples < 2 * config.thin:
        raise ValueError("hmc.num_samples must be >= 2 * hmc.thin (two kept draws per chain)")
    if config.num_warmup < 1:
        raise ValueError("hmc.num_warmup must be >= 1 (the step size comes from the warmup)")
    if not 0 < config.target_accept < 1:
        raise ValueError("hmc.target_accept must be in (0, 1)")


def full_data_log_density(log_prior: Callable, log_likelihood: Callable, x, y) -> Callable:
    """theta -> log p(theta) + sum_i log p(y_i | x_i, theta): the whole posterior, unscaled."""

    def log_density(theta):
        return log_prior(theta) + jnp.sum(log_likelihood(theta, x, y))

    return log_density


# --- starting points -----------------------------------------------------------------------------


@partial(jax.jit, static_argnames=("log_density", "num_steps"))
def map_fit(log_density: Callable, positions: jax.Array, num_steps: int, learning_rate: float):
    """Adam on -log_density from each row of `positions` (C, D); returns (positions, log-density).

    The chains are vectorised (vmap); one jitted scan over `num_steps` full-batch steps.
    """
    opt = optax.adam(learning_rate)
    grad = jax.vmap(jax.value_and_grad(lambda t: -log_density(t)))

    def step(carry, _):
        theta, opt_state = carry
        loss, g = grad(theta)
        updates, opt_state = jax.vmap(opt.update)(g, opt_state, theta)
        return (jax.vmap(optax.apply_updates)(theta, updates), opt_state), None

    (theta, _), _ = jax.lax.scan(step, (positions, jax.vmap(opt.init)(positions)), None, num_steps)
    return theta, jax.vmap(log_density)(theta)


def initial_positions(
    rng_key: jax.Array, prior_std: jax.Array, log_density: Callable, config: HMCConfig
) -> jax.Array:
    """One prior draw per chain, moved to a MAP estimate with Adam when config.init == "map"."""
    draws = jax.random.normal(rng_key, (config.num_chains, prior_std.shape[0])) * prior_std
    if config.init == "prior" or config.init_steps == 0:
        return draws
    theta, _ = map_fit(log_density, draws, config.init_steps, config.init_learning_rate)
    return theta


# --- warmup and sampling -------------------------------------------------------------------------


def _algorithm(config: HMCConfig):
    import blackjax

    if config.algorithm == "nuts":
        return blackjax.nuts, {"max_num_doublings": config.max_tree_depth}
    return blackjax.hmc, {"num_integration_steps": config.num_integration_steps}


def initial_state(position: jax.Array, log_density: Callable, config: HMCConfig):
    """The blackjax state of one chain at `position` (the structure warmup returns)."""
    return _algorithm(config)[0].init(position, log_density)


def warmup(
    rng_key: jax.Array, log_density: Callable, positions: jax.Array, config: HMCConfig
) -> tuple[Chains, ChunkInfo]:
    """blackjax.window_adaptation on every chain (vmapped): tuned chains and the warmup's sums."""
    import blackjax
    from blackjax.adaptation.base import get_filter_adapt_info_fn

    algorithm, extra = _algorithm(config)
    adaptation = blackjax.window_adaptation(
        algorithm,
        log_density,
        is_mass_matrix_diagonal=True,
        target_acceptance_rate=config.target_accept,
        adaptation_info_fn=get_filter_adapt_info_fn(
            info_keys={
                "is_divergent",
                "num_integration_steps",
                "acceptance_rate",
                "num_trajectory_expansions",
            }
        ),
        **extra,
    )

    def one(key, position):
        (state, parameters), info = adaptation.run(key, position, config.num_warmup)
        return state, parameters["step_size"], parameters["inverse_mass_matrix"], info.info

    keys = jax.random.split(rng_key, config.num_chains)
    state, step_size, imm, info = jax.jit(jax.vmap(one))(keys, positions)
    depth = getattr(info, "num_trajectory_expansions", None)
    sums = ChunkInfo(
        num_divergent=jnp.sum(info.is_divergent, axis=1),
        tree_depth=jnp.zeros(config.num_chains) if depth is None else jnp.sum(depth, axis=1),
        num_integration_steps=jnp.sum(info.num_integration_steps, axis=1),
        acceptance_rate=jnp.sum(info.acceptance_rate, axis=1),
    )
    return Chains(state, step_size, imm), sums


def transition(rng_key: jax.Array, chains: Chains, *, log_density: Callable, config: HMCConfig):
    """One NUTS (or HMC) transition of every chain at its tuned step size and mass matrix;
    returns (chains, ChunkInfo of this one transition). Not jitted: jit the caller."""
    algorithm, extra = _algorithm(config)

    def one(key, state, step_size, imm):
        kernel = algorithm(log_density, step_size, imm, **extra)
        state, info = kernel.step(key, state)
        depth = getattr(info, "num_trajectory_expansions", 0)
        return state, ChunkInfo(
            info.is_divergent.astype(jnp.int32),
            jnp.asarray(depth, jnp.float32),
            jnp.asarray(info.num_integration_steps, jnp.float32),
            jnp.asarray(info.acceptance_rate, jnp.float32),
        )

    keys = jax.random.split(rng_key, config.num_chains)
    state, info = jax.vmap(one)(keys, chains.state, chains.step_size, chains.inverse_mass_matrix)
    return chains._replace(state=state), info


@partial(jax.jit, static_argnames=("log_density", "observe", "config", "num_kept"))
def sample_chunk(
    rng_key: jax.Array,
    chains: Chains,
    *,
    log_density: Callable,
    observe: Callable,
    config: HMCConfig,
    num_kept: int,
):
    """num_kept * config.thin transitions of every chain; returns (chains, kept, ChunkInfo).

    `kept` is observe(theta) of every thin-th state, stacked as (num_kept, C, ...); the info is
    summed over the chunk's transitions.
    """

    def inner(carry, key):
        ch, sums = carry
        ch, info = transition(key, ch, log_density=log_density, config=config)
        return (ch, jax.tree.map(jnp.add, sums, info)), None

    def outer(carry, key):
        carry, _ = jax.lax.scan(inner, carry, jax.random.split(key, config.thin))
        return carry, jax.vmap(observe)(carry[0].state.position)

    num = config.num_chains
    zeros = ChunkInfo(jnp.zeros(num, jnp.int32), jnp.zeros(num), jnp.zeros(num), jnp.zeros(num))
    (chains, sums), kept = jax.lax.scan(outer, (chains, zeros), jax.random.split(rng_key, num_kept))
    return chains, kept, sums


def run_sampling(
    rng_key: jax.Array,
    chains: Chains,
    *,
    log_density: Callable,
    observe: Callable,
    config: HMCConfig,
    chunk_kept: int,
    start_kept: int = 0,
    callback: Callable | None = None,
    should_stop: Callable[[], bool] | None = None,
):
    """Draw the kept samples start_kept+1 .. num_samples // thin in chunks of `chunk_kept`.

    Chunk c's randomness is fold_in(rng_key, first kept index of the chunk), so a run resumed at
    a chunk boundary continues exactly. After every chunk `callback(kept_so_far, chains, kept,
    info)` gets the chunk's draws (num_kept, C, ...) and sums; it returning True stops the run.
    Returns (chains, kept_so_far, "finished" | "stopped").
    """
    total = config.num_samples // config.thin
    done = start_kept
    while done < total:
        num = min(chunk_kept, total - done)
        chains, kept, info = sample_chunk(
            jax.random.fold_in(rng_key, done),
            chains,
            log_density=log_density,
            observe=observe,
            config=config,
            num_kept=num,
        )
        done += num
        stop = callback(done, chains, kept, info) if callback is not None else False
        if stop or (done < total and should_stop is not None and should_stop()):
            return chains, done, "stopped"
    return chains, done, "finished"


# --- diagnostics ---------------------------------------------------------------------------------


def diagnostics(values: np.ndarray) -> dict[str, float]:
    """Function-space convergence of draws `values` (C, S, n): one scalar series per column.

    R-hat (blackjax.diagnostics.potential_scale_reduction, Gelman-Rubin) and the ESS over all
    chains (blackjax.diagnostics.effective_sample_size, and its rank-normalised split-chain bulk
    form `ess_bulk`) of every column; columns whose draws are all equal (a test point predicted
    with probability 1 in float32) carry no information and are skipped. Returns the max and
    median R-hat, min and median ESS, and how many columns were used.
    """
    import blackjax.diagnostics

    values = np.asarray(values, np.float64)
    flat = values.reshape(-1, values.shape[-1])
    varied = np.ptp(flat, axis=0) > 0
    if not np.any(varied):
        raise ValueError("every observed quantity is constant across draws; nothing to diagnose")
    x = jnp.asarray(values[..., varied])
    rhat = np.asarray(blackjax.diagnostics.potential_scale_reduction(x, 0, 1))
    ess = np.asarray(blackjax.diagnostics.effective_sample_size(x, 0, 1))
    bulk = np.asarray(blackjax.diagnostics.ess_bulk(x, 0, 1))
    return {
        "rhat_max": float(np.max(rhat)),
        "rhat_median": float(np.median(rhat)),
        "ess_min": float(np.min(ess)),
        "ess_median": float(np.median(ess)),
        "ess_bulk_min": float(np.min(bulk)),
        "ess_bulk_median": float(np.median(bulk)),
        "num_diagnosed": int(np.sum(varied)),
    }


def summarise(info: ChunkInfo, num_transitions: int) -> dict[str, float]:
    """Divergences, mean tree depth, mean leapfrog steps and acceptance of per-chain sums."""
    total = num_transitions * info.num_divergent.shape[0]
    return {
        "divergences": int(np.sum(info.num_divergent)),
        "tree_depth_mean": float(np.sum(info.tree_depth) / total),
        "integration_steps_mean": float(np.sum(info.num_integration_steps) / total),
        "accept_mean": float(np.sum(info.acceptance_rate) / total),
    }
