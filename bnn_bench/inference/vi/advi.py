"""ADVI baseline (vi.algorithm=advi): reparameterised ELBO gradients with optax Adam.

theta_s = T_phi(eps_s) = m + exp(log_scale) * eps_s[:D] + F eps_s[D:]. The gradient uses the
sticking-the-landing estimator (Roeder et al. 2017): the ELBO's path derivative only,
    grad_phi ELBO ~ (1/S) sum_s (g_s - grad log q_phi(theta_s)) dT_phi(eps_s)/dphi,
which has zero variance at q = p for a Gaussian target. Because T is linear in phi its Jacobian
is applied in closed form, so the network is only differentiated with respect to theta, one
sample at a time (`family.stream`); blackjax.vi.meanfield_vi computes the same estimator but
differentiates through a vmap over all samples at once (S networks' activations in memory).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from bnn_bench.inference.vi import family as fam
from bnn_bench.inference.vi.family import Gaussian, VIConfig, VIInfo


class ADVIState(NamedTuple):
    q: Gaussian
    opt_state: optax.OptState


def _optimizer(config: VIConfig):
    return optax.adam(config.learning_rate)


def init(q: Gaussian, config: VIConfig) -> ADVIState:
    return ADVIState(q, _optimizer(config).init(q))


def stl_accumulate(q: Gaussian):
    """Accumulator adding one sample's moments and its STL gradient of the negative ELBO."""
    dim = q.mean.size

    def accumulate(acc, theta, eps, value, grad):
        m, g_phi = acc
        r = grad - fam.score(q, theta)  # d ELBO / d theta along the path, q's params held fixed
        g_phi = Gaussian(
            g_phi.mean - r,
            g_phi.log_scale - r * jnp.exp(q.log_scale) * eps[:dim],
            g_phi.factor - jnp.outer(r, eps[dim:]),
        )
        return fam.add_moments(q, m, theta, value, grad), g_phi

    return accumulate


@partial(jax.jit, static_argnames=("log_target", "config"))
def step(
    rng_key: jax.Array,
    state: ADVIState,
    x: jax.Array,
    y: jax.Array,
    *,
    log_target: Callable,
    config: VIConfig,
) -> tuple[ADVIState, VIInfo]:
    """One Adam step on the STL estimate of the negative ELBO from S streamed samples."""
    q = state.q
    key_batch, key_samples = jax.random.split(rng_key)
    vg = fam.minibatch_value_and_grad(log_target, key_batch, x, y, config)
    zero = jax.tree.map(jnp.zeros_like, q)
    m, g_sum = fam.stream(
        key_samples,
        q,
        config.num_samples,
        vg,
        stl_accumulate(q),
        (fam.zero_moments(q), zero),
        sample_map=config.sample_map,
    )
    grads = jax.tree.map(lambda g: g / config.num_samples, g_sum)
    updates, opt_state = _optimizer(config).update(grads, state.opt_state, q)
    new_q, rejected = fam.keep_finite(optax.apply_updates(q, updates), q)
    opt_state = jax.tree.map(
        lambda new, old: jnp.where(rejected, old, new), opt_state, state.opt_state
    )
    return ADVIState(new_q, opt_state), fam.info_from(m, config.num_samples, rejected)
