"""Gaussian score matching baseline (vi.algorithm=gsm; Modi et al. 2023), diagonal version.

For each sample z ~ q_t with score g, GSM moves to the Gaussian closest to q_t in KL(q_t || q)
whose score at z equals g. For a diagonal Gaussian this projection is separable and closed form
per coordinate (our derivation of the diagonal case): with delta = m_t - z and
E = v_t + delta^2,
    v = 2 E / (1 + sqrt(1 + 4 g^2 E)),      mu = z + v g,
and the batch update averages the per-sample (mu, v) over the S samples. There is no step size
and no damping: a noise-free score is assumed (minibatch noise enters the update directly).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from bnn_bench.inference.vi import family as fam
from bnn_bench.inference.vi.family import Gaussian, VIConfig, VIInfo


class GSMState(NamedTuple):
    q: Gaussian


def init(q: Gaussian, config: VIConfig) -> GSMState:
    return GSMState(q)


def projection(q: Gaussian, theta: jax.Array, grad: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The KL projection of q onto {Gaussians whose score at theta is grad}: (mean, variance)."""
    e = jnp.exp(2.0 * q.log_scale) + (q.mean - theta) ** 2
    v = 2.0 * e / (1.0 + jnp.sqrt(1.0 + 4.0 * grad**2 * e))
    return theta + v * grad, v


@partial(jax.jit, static_argnames=("log_target", "config"))
def step(
    rng_key: jax.Array,
    state: GSMState,
    x: jax.Array,
    y: jax.Array,
    *,
    log_target: Callable,
    config: VIConfig,
) -> tuple[GSMState, VIInfo]:
    """One GSM iteration: average the per-sample projections of S streamed samples."""
    q = state.q
    key_batch, key_samples = jax.random.split(rng_key)
    vg = fam.minibatch_value_and_grad(log_target, key_batch, x, y, config)

    def accumulate(acc, theta, eps, value, grad):
        m, sum_mu, sum_v = acc
        mu, v = projection(q, theta, grad)
        return fam.add_moments(q, m, theta, value, grad), sum_mu + mu, sum_v + v

    zero = jnp.zeros_like(q.mean)
    m, sum_mu, sum_v = fam.stream(
        key_samples,
        q,
        config.num_samples,
        vg,
        accumulate,
        (fam.zero_moments(q), zero, zero),
        sample_map=config.sample_map,
    )
    s = config.num_samples
    new_q = Gaussian(sum_mu / s, 0.5 * jnp.log(sum_v / s), q.factor)
    new_q, rejected = fam.keep_finite(new_q, q)
    return GSMState(new_q), fam.info_from(m, s, rejected)
