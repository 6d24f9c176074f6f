"""Score matching with a proximal penalty (vi.algorithm=score_prox; our formulation).

Outer iteration t: draw S samples theta_s ~ q_t (q_t held fixed) and their minibatch scores
g_s = grad l_B(theta_s), then set q_{t+1} = argmin_phi L_t(phi) with

    L_t(phi) = (1/S) sum_s || grad log q_phi(theta_s) - g_s ||^2_{Sigma_t} + rho_t KL(q_t || q_phi),

rho_t = prox_weight + prox_growth * t. The Sigma_t-weighted norm (Sigma_t: q_t's covariance, fixed
during the step) makes both terms dimensionless, so rho has the same meaning at every scale; for
the diagonal family it is the unweighted loss with a per-coordinate weight rho_t / sigma_t,d^2 on
the KL. The network is never differentiated with respect to phi: no reparameterised sampling.

Diagonal family: closed form, per coordinate. The sample score-matching loss splits into a
within-sample part and a mean part,
    (1/S) sum_s (lam (x_s - mu) + g_s)^2
        = (1/S) sum_s (lam (x_s - xbar) + (g_s - gbar))^2 + (lam (xbar - mu) + gbar)^2,
and we update in one block pass: the precision lam from the within-sample part plus the KL's
precision terms (mu held at m_t), which is the positive root of
    2 Var(x) lam^2 + (2 Cov(x, g) + beta v_t / 2) lam - beta / 2 = 0,       beta = rho_t / v_t,
then the mean from the mean part plus the KL's mean term,
    mu = [2 lam (xbar + gbar / lam) + beta m_t] / (2 lam + beta),
a weighted average of the score-matching solution and the previous mean. (Alternating on the
unsplit loss instead lets a far-away mean leak into the precision through (xbar - mu) gbar, which
we measured to diverge on Bayesian linear regression.)
Low-rank family: `inner_steps` Adam steps (optax) on L_t from q_t.
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


class ScoreProxState(NamedTuple):
    q: Gaussian
    t: jax.Array  # outer iterations done
    opt_state: optax.OptState  # Adam state of the low-rank inner steps (empty for diag)


def _optimizer(config: VIConfig):
    return optax.adam(config.learning_rate)


def init(q: Gaussian, config: VIConfig) -> ScoreProxState:
    opt_state = _optimizer(config).init(q) if config.family == "lowrank" else ()
    return ScoreProxState(q, jnp.zeros((), jnp.int32), opt_state)


def diag_update(q: Gaussian, m: fam.Moments, num_samples: int, rho) -> Gaussian:
    """The closed-form block update of L_t for the diagonal family: precision, then mean."""
    s = num_samples
    m_t = q.mean
    v_t = jnp.exp(2.0 * q.log_scale)
    dxbar, gbar = m.sum_dx / s, m.sum_g / s
    var_x = jnp.maximum(m.sum_dxdx / s - dxbar**2, jnp.finfo(m_t.dtype).tiny)
    cov_xg = m.sum_dxg / s - dxbar * gbar
    beta = rho / v_t
    # precision: 2 Var lam^2 + (2 Cov + beta v_t / 2) lam - beta / 2 = 0, positive root,
    # written without cancellation on either sign of the linear coefficient
    b = 2.0 * cov_xg + 0.5 * beta * v_t
    disc = jnp.sqrt(b**2 + 4.0 * var_x * beta)
    lam = jnp.where(b > 0, beta / (b + disc), (disc - b) / (4.0 * var_x))
    # mean: weighted average of the score-matching solution xbar + gbar / lam and m_t
    delta = (2.0 * lam * dxbar + 2.0 * gbar) / (2.0 * lam + beta)
    return Gaussian(m_t + delta, -0.5 * jnp.log(lam), q.factor)


def weighted_sq_norm(q: Gaussian, v: jax.Array) -> jax.Array:
    """||v||^2_{Sigma_q} = v^T Sigma_q v for v of shape (D,)."""
    return jnp.sum(jnp.exp(2.0 * q.log_scale) * v**2) + jnp.sum((q.factor.T @ v) ** 2)


def prox_loss(phi: Gaussian, q_t: Gaussian, thetas, grads, rho) -> jax.Array:
    """L_t(phi) on stored samples and scores (S, D)."""
    residual = jax.vmap(lambda th, g: fam.score(phi, th) - g)(thetas, grads)
    sm = jnp.mean(jax.vmap(lambda r: weighted_sq_norm(q_t, r))(residual))
    return sm + rho * fam.kl(q_t, phi)


@partial(jax.jit, static_argnames=("log_target", "config"))
def step(
    rng_key: jax.Array,
    state: ScoreProxState,
    x: jax.Array,
    y: jax.Array,
    *,
    log_target: Callable,
    config: VIConfig,
) -> tuple[ScoreProxState, VIInfo]:
    """One outer iteration: S streamed minibatch scores, then the proximal score-matching update."""
    q = state.q
    rho = fam.prox_rho(config, state.t)
    opt_state = state.opt_state
    if config.family == "diag":
        m = fam.moments_stream(rng_key, q, x, y, log_target=log_target, config=config)
        new_q = diag_update(q, m, config.num_samples, rho)
    else:
        key_batch, key_samples = jax.random.split(rng_key)
        vg = fam.minibatch_value_and_grad(log_target, key_batch, x, y, config.batch_size)
        s_num, dim = config.num_samples, q.mean.size
        store = (jnp.zeros((s_num, dim), q.mean.dtype), jnp.zeros((s_num, dim), q.mean.dtype))

        def accumulate(acc, theta, eps, value, grad):
            m_acc, (ths, gs), i = acc
            m_acc = fam.add_moments(q, m_acc, theta, value, grad)
            return m_acc, (ths.at[i].set(theta), gs.at[i].set(grad)), i + 1

        m, (thetas, grads), _ = fam.stream(
            key_samples,
            q,
            s_num,
            vg,
            accumulate,
            (fam.zero_moments(q), store, jnp.zeros((), jnp.int32)),
            sample_map=config.sample_map,
        )
        opt = _optimizer(config)
        loss_grad = jax.grad(prox_loss)

        def inner(_, carry):
            phi, os = carry
            updates, os = opt.update(loss_grad(phi, q, thetas, grads, rho), os, phi)
            return optax.apply_updates(phi, updates), os

        new_q, opt_state = jax.lax.fori_loop(0, config.inner_steps, inner, (q, opt_state))
    new_q, rejected = fam.keep_finite(new_q, q)
    return ScoreProxState(new_q, state.t + 1, opt_state), fam.info_from(
        m, config.num_samples, rejected
    )
