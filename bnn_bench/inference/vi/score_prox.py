"""Score matching with a proximal penalty (vi.algorithm=score_prox; our formulation).

Outer iteration t: draw S samples theta_s ~ q_t (q_t held fixed) and their minibatch scores
g_s = grad l_B(theta_s), then set q_{t+1} = argmin_phi L_t(phi) over the trust region around q_t,

    L_t(phi) = (1/S) sum_s || grad log q_phi(theta_s) - g_s ||^2_{Sigma_t} + rho_t KL(q_t || q_phi),

rho_t = prox_weight + prox_growth * t (prox_schedule=linear), prox_weight + prox_growth sqrt(t)
(sqrt), or prox_weight + prox_growth k_t (adaptive: k_t counts the steps that reversed the
previous step's direction, Kesten's rule; `family.prox_rho`). The Sigma_t-weighted norm
(Sigma_t: q_t's covariance, fixed during the step) makes both terms dimensionless, so rho has
the same meaning at every scale; for the diagonal family it is
the unweighted loss with a per-coordinate weight rho_t / sigma_t,d^2 on the KL. The network is
never differentiated with respect to phi: no reparameterised sampling.

Trust region (a bounded step): every coordinate's mean moves by at most `max_mean_step` of its
current marginal sd, and its marginal variance changes by at most a factor `max_var_ratio` per
iteration. Without it the first closed-form steps on a network, whose first scores are large,
overshoot by tens of prior sds, and a growing rho then freezes the damage in.

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
we measured to diverge on Bayesian linear regression.) Both block objectives are convex and
separable in one scalar per coordinate, so clipping each block's minimiser to the trust region
is that block's exact constrained minimiser.

Low-rank family: the same block pass. The precision block (the within-sample part of L_t plus
the KL with the mean at m_t) by L-BFGS (optax) from q_t, in coordinates whitened by q_t's
marginal sds, until its gradient norm falls below `inner_tol` times its value at q_t (at most
`inner_steps` iterations); then the mean block in closed form (`mean_update`, which reduces to
the diagonal formula above for r = 0). Solving the unsplit L_t jointly instead lets a far-away
mean shrink the variance (large scores are fit by a large precision), and the trust region then
slows the mean's travel to a crawl: on a Bayesian linear regression started 60 posterior sds
away it had moved 3 sds in 300 iterations. The solution is then projected onto the trust region
(the mean clipped; each coordinate's row of the covariance rescaled, keeping its correlations).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu

from bnn_bench.inference.vi import family as fam
from bnn_bench.inference.vi.family import Gaussian, VIConfig, VIInfo


class ScoreProxState(NamedTuple):
    q: Gaussian
    t: jax.Array  # outer iterations done
    reversals: jax.Array  # iterations whose whitened mean step reversed the previous one
    last_step: jax.Array  # the previous whitened mean step (m_{t+1} - m_t) / sd_t, (D,)
    snapshot: fam.Snapshot  # the control variate's anchor (snapshot_every > 0; else zeros)


def init(q: Gaussian, config: VIConfig) -> ScoreProxState:
    zero = jnp.zeros((), q.mean.dtype)
    return ScoreProxState(
        q, jnp.zeros((), jnp.int32), zero, jnp.zeros_like(q.mean), fam.empty_snapshot(q)
    )


def diag_update(
    q: Gaussian,
    m: fam.Moments,
    num_samples: int,
    rho,
    max_mean_step: float = jnp.inf,
    max_var_ratio: float = jnp.inf,
) -> Gaussian:
    """The closed-form block update of L_t for the diagonal family, in the trust region:
    precision (clipped to a factor max_var_ratio of q_t's), then mean (its move clipped to
    max_mean_step of q_t's sd)."""
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
    lam = jnp.clip(lam, 1.0 / (max_var_ratio * v_t), max_var_ratio / v_t)
    # mean: weighted average of the score-matching solution xbar + gbar / lam and m_t
    delta = (2.0 * lam * dxbar + 2.0 * gbar) / (2.0 * lam + beta)
    bound = max_mean_step * jnp.sqrt(v_t)
    delta = jnp.clip(delta, -bound, bound)
    return Gaussian(m_t + delta, -0.5 * jnp.log(lam), q.factor)


DIAG_FLOOR = 1e-2  # low rank: the diagonal part keeps >= this fraction of each marginal variance


def trust_region(new: Gaussian, q_t: Gaussian, max_mean_step: float, max_var_ratio: float):
    """Project `new` onto the trust region around q_t: each mean coordinate within
    max_mean_step marginal sds of q_t's, each marginal variance within a factor max_var_ratio
    of q_t's (by rescaling that coordinate's row of the covariance: D -> c^2 D, F -> c F).

    The diagonal part is also kept at >= DIAG_FLOOR of each marginal variance: where the factor
    explains nearly all of a coordinate's variance, diag(Sigma^{-1}) is a difference of nearly
    equal numbers in float32 and the next solve turns non-finite (measured on a Bayesian linear
    regression with rank 1, ~220 iterations in)."""
    sd_t = jnp.sqrt(fam.variance(q_t))
    bound = max_mean_step * sd_t
    mean = q_t.mean + jnp.clip(new.mean - q_t.mean, -bound, bound)
    var_t, var = sd_t**2, fam.variance(new)
    target = jnp.clip(var, var_t / max_var_ratio, var_t * max_var_ratio)
    c = jnp.sqrt(target / var)
    log_scale = jnp.maximum(new.log_scale + jnp.log(c), 0.5 * jnp.log(DIAG_FLOOR * target))
    return Gaussian(mean, log_scale, c[:, None] * new.factor)


def weighted_sq_norm(q: Gaussian, v: jax.Array) -> jax.Array:
    """||v||^2_{Sigma_q} = v^T Sigma_q v for v of shape (D,)."""
    return jnp.sum(jnp.exp(2.0 * q.log_scale) * v**2) + jnp.sum((q.factor.T @ v) ** 2)


def prox_loss(phi: Gaussian, q_t: Gaussian, thetas, grads, rho) -> jax.Array:
    """L_t(phi) on stored samples and scores (S, D)."""
    residual = jax.vmap(lambda th, g: fam.score(phi, th) - g)(thetas, grads)
    sm = jnp.mean(jax.vmap(lambda r: weighted_sq_norm(q_t, r))(residual))
    return sm + rho * fam.kl(q_t, phi)


def precision_loss(phi: Gaussian, q_t: Gaussian, thetas, grads, rho) -> jax.Array:
    """The precision block of L_t: its within-sample part (samples and scores centred at their
    means) plus rho KL(q_t || phi) with phi's mean held at m_t."""
    phi = phi._replace(mean=q_t.mean)
    dth, dg = thetas - thetas.mean(0), grads - grads.mean(0)
    residual = jax.vmap(lambda th, g: -fam.precision_matvec(phi, th) - g)(dth, dg)
    sm = jnp.mean(jax.vmap(lambda r: weighted_sq_norm(q_t, r))(residual))
    return sm + rho * fam.kl(q_t, phi)


def mean_update(phi: Gaussian, q_t: Gaussian, thetas, grads, rho) -> jax.Array:
    """The mean block of L_t in closed form: with phi's covariance Sigma fixed, the minimiser of
        || Sigma_t^{1/2} (Sigma^{-1} (xbar - mu) + gbar) ||^2
            + (rho / 2) (mu - m_t)^T Sigma^{-1} (mu - m_t)
    is mu = m_t + Sigma y with (2 Sigma_t + rho Sigma) y = 2 Sigma_t (Sigma^{-1} dxbar + gbar),
    dxbar = xbar - m_t; 2 Sigma_t + rho Sigma is diagonal plus rank 2r, solved by Woodbury."""
    dxbar, gbar = thetas.mean(0) - q_t.mean, grads.mean(0)
    v = fam.precision_matvec(phi, dxbar) + gbar
    b = 2.0 * (jnp.exp(2.0 * q_t.log_scale) * v + q_t.factor @ (q_t.factor.T @ v))
    diag = 2.0 * jnp.exp(2.0 * q_t.log_scale) + rho * jnp.exp(2.0 * phi.log_scale)
    u = jnp.concatenate([jnp.sqrt(2.0) * q_t.factor, jnp.sqrt(rho) * phi.factor], axis=1)
    a = Gaussian(jnp.zeros_like(q_t.mean), 0.5 * jnp.log(diag), u)
    y = fam.precision_matvec(a, b)
    return q_t.mean + jnp.exp(2.0 * phi.log_scale) * y + phi.factor @ (phi.factor.T @ y)


def whiten(q_t: Gaussian):
    """(to, start): the map from whitened coordinates z = (w, G) to a covariance around m_t,
    log_scale = log_scale_t + w, factor = sd_t G (sd_t: q_t's marginal sds), and q_t's z."""
    sd_t = jnp.sqrt(fam.variance(q_t))

    def to(z) -> Gaussian:
        w, g = z
        return Gaussian(q_t.mean, q_t.log_scale + w, sd_t[:, None] * g)

    return to, (jnp.zeros_like(q_t.log_scale), q_t.factor / sd_t[:, None])


def inner_solve(q_t: Gaussian, thetas, grads, rho, *, max_steps: int, tol: float):
    """The low-rank block update of L_t: the precision block by L-BFGS from q_t until its
    gradient norm is below tol times its value at q_t (at most max_steps iterations), then the
    mean block in closed form. Returns (phi, L-BFGS iterations, relative gradient norm)."""
    to, z0 = whiten(q_t)

    def loss(z):
        return precision_loss(to(z), q_t, thetas, grads, rho)

    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)
    g0 = otu.tree_norm(jax.grad(loss)(z0))

    def body(carry):
        z, state = carry
        value, grad = value_and_grad(z, state=state)
        updates, state = opt.update(grad, state, z, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(z, updates), state

    def cond(carry):
        _, state = carry
        count = otu.tree_get(state, "count")
        err = otu.tree_norm(otu.tree_get(state, "grad"))
        return (count == 0) | ((count < max_steps) & (err > tol * g0))

    z, state = jax.lax.while_loop(cond, body, (z0, opt.init(z0)))
    err = otu.tree_norm(jax.grad(loss)(z)) / jnp.maximum(g0, jnp.finfo(g0.dtype).tiny)
    phi = to(z)
    phi = phi._replace(mean=mean_update(phi, q_t, thetas, grads, rho))
    return phi, otu.tree_get(state, "count"), err


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
    rho = fam.prox_rho(config, state.t, state.reversals)
    snap = state.snapshot
    if config.snapshot_every:
        snap = fam.take_snapshot(log_target, q, x, y, config, snap, state.t)
    cv = snap if config.snapshot_every else None
    if config.family == "diag":
        m = fam.moments_stream(rng_key, q, x, y, log_target=log_target, config=config, snapshot=cv)
        new_q = diag_update(
            q, m, config.num_samples, rho, config.max_mean_step, config.max_var_ratio
        )
    else:
        key_batch, key_samples = jax.random.split(rng_key)
        vg = fam.minibatch_value_and_grad(log_target, key_batch, x, y, config, cv)
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
        new_q, _, _ = inner_solve(
            q, thetas, grads, rho, max_steps=config.inner_steps, tol=config.inner_tol
        )
        new_q = trust_region(new_q, q, config.max_mean_step, config.max_var_ratio)
    new_q, rejected = fam.keep_finite(new_q, q)
    step_w = (new_q.mean - q.mean) / jnp.sqrt(fam.variance(q))
    reversed_ = jnp.vdot(step_w, state.last_step) < 0
    new_state = ScoreProxState(new_q, state.t + 1, state.reversals + reversed_, step_w, snap)
    return new_state, fam.info_from(m, config.num_samples, rejected)
