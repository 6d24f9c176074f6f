"""Batch-and-match baseline (vi.algorithm=bam; Cai et al. 2024), diagonal version.

BaM minimises a covariance-weighted score divergence plus (1/lambda_t) KL(q_t || q) in closed
form. With the batch statistics of S samples z_s ~ q_t and their scores g_s (zbar, gbar and the
variances C of z and Gamma of g, all 1/S), the diagonal update per coordinate is
    U = lambda Gamma + lambda / (1 + lambda) gbar^2,
    V = v_t + lambda C + lambda / (1 + lambda) (m_t - zbar)^2,
    v = 2 V / (1 + sqrt(1 + 4 U V)),
    mu = m_t / (1 + lambda) + lambda / (1 + lambda) (v gbar + zbar).
The learning-rate schedule is the reference implementation's (Cai et al.'s code):
lambda_t = lambda_0 / (1 + t), lambda_0 = `bam_lambda0`, t = 0, 1, ...
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from bnn_bench.inference.vi import family as fam
from bnn_bench.inference.vi.family import Gaussian, VIConfig, VIInfo


class BaMState(NamedTuple):
    q: Gaussian
    t: jax.Array


def init(q: Gaussian, config: VIConfig) -> BaMState:
    return BaMState(q, jnp.zeros((), jnp.int32))


def diag_update(q: Gaussian, m: fam.Moments, num_samples: int, lam) -> Gaussian:
    """BaM's closed-form batch update, diagonal version."""
    s = num_samples
    dzbar, gbar = m.sum_dx / s, m.sum_g / s
    c = jnp.maximum(m.sum_dxdx / s - dzbar**2, 0.0)
    gamma = jnp.maximum(m.sum_gg / s - gbar**2, 0.0)
    v_t = jnp.exp(2.0 * q.log_scale)
    u = lam * gamma + lam / (1.0 + lam) * gbar**2
    v_big = v_t + lam * c + lam / (1.0 + lam) * dzbar**2
    v = 2.0 * v_big / (1.0 + jnp.sqrt(1.0 + 4.0 * u * v_big))
    mean = q.mean + lam / (1.0 + lam) * (v * gbar + dzbar)
    return Gaussian(mean, 0.5 * jnp.log(v), q.factor)


def learning_rate(config: VIConfig, t: jax.Array) -> jax.Array:
    """BaM's lambda_t = lambda_0 / (1 + t)."""
    return config.bam_lambda0 / (1.0 + t)


@partial(jax.jit, static_argnames=("log_target", "config"))
def step(
    rng_key: jax.Array,
    state: BaMState,
    x: jax.Array,
    y: jax.Array,
    *,
    log_target: Callable,
    config: VIConfig,
) -> tuple[BaMState, VIInfo]:
    """One BaM iteration on S streamed samples and their minibatch scores."""
    m = fam.moments_stream(rng_key, state.q, x, y, log_target=log_target, config=config)
    lam = learning_rate(config, state.t)
    new_q, rejected = fam.keep_finite(diag_update(state.q, m, config.num_samples, lam), state.q)
    return BaMState(new_q, state.t + 1), fam.info_from(m, config.num_samples, rejected)
