"""The Gaussian variational family and the streamed per-sample score computation.

q = N(mean, Sigma) with Sigma = diag(exp(2 log_scale)) + factor factor^T. The diagonal family is
the rank-0 case (factor of shape (D, 0)); the low-rank family has factor (D, r). Everything is
O(D r^2) through the Woodbury identity and the matrix determinant lemma; no D x D matrix is
ever formed (except by `covariance`, which tests use on small D).

`stream` draws S samples of q one at a time, computes the minibatch score of each (one backward
pass through the network) and folds it into an accumulator, so that only one sample's network
activations are alive at any time: memory is O(D) per sample in flight, whatever S is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

FAMILIES = ("diag", "lowrank")
SAMPLE_MAPS = ("scan", "unroll")
PROX_SCHEDULES = ("linear", "sqrt", "adaptive")


class VIConfig(NamedTuple):
    """Static settings shared by the VI algorithms (hashable: part of the jit cache key).

    These defaults are the CLI's too: the config schema (bnn_bench/config.py) takes them from
    here."""

    num_samples: int = 4  # S, samples of q per iteration
    batch_size: int = 100  # M, rows per minibatch score (>= N: the full data)
    prox_weight: float = 1.0  # rho_0: proximal (KL) weight at t = 0
    prox_growth: float = 0.3  # rho_1: rho_t = rho_0 + rho_1 t (linear; see `prox_rho`)
    prox_schedule: str = "linear"  # linear | sqrt | adaptive (see `prox_rho`)
    max_mean_step: float = 1.0  # trust region: mean move per iteration, in current sds
    max_var_ratio: float = 1.1  # trust region: variance change factor per iteration
    inner_steps: int = 100  # L-BFGS iterations at most (score_prox lowrank)
    inner_tol: float = 1e-3  # stop when |grad L_t| <= inner_tol |grad L_t at q_t|
    learning_rate: float = 0.01  # Adam step (advi)
    bam_lambda0: float = 100.0  # BaM's learning rate lambda_t = bam_lambda0 / (1 + t)
    batch_per_sample: bool = False  # an independent minibatch for each of the S samples
    snapshot_every: int = 10  # control-variate score at a snapshot of q's mean, every K (0: off)
    family: str = "diag"
    rank: int = 0
    sample_map: str = "scan"  # scan | unroll (see `stream`)


class Gaussian(NamedTuple):
    """N(mean, diag(exp(2 log_scale)) + factor factor^T)."""

    mean: jax.Array  # (D,)
    log_scale: jax.Array  # (D,)
    factor: jax.Array  # (D, r); r = 0 for the diagonal family


def init_gaussian(mean: jax.Array, std: jax.Array, rank: int = 0) -> Gaussian:
    """A Gaussian at `mean` with marginal std `std`; a low-rank factor starts at zero."""
    std = jnp.broadcast_to(std, mean.shape).astype(mean.dtype)
    return Gaussian(mean, jnp.log(std), jnp.zeros((mean.size, rank), mean.dtype))


def _capacitance(q: Gaussian):
    """d^-1 (D,) and the Cholesky factor of I_r + F^T d^-1 F (r, r)."""
    inv_d = jnp.exp(-2.0 * q.log_scale)
    r = q.factor.shape[1]
    cap = jnp.eye(r, dtype=q.mean.dtype) + (q.factor.T * inv_d) @ q.factor
    return inv_d, jnp.linalg.cholesky(cap)


def precision_matvec(q: Gaussian, v: jax.Array) -> jax.Array:
    """Sigma^{-1} v (Woodbury); v may be (D,) or (D, k)."""
    inv_d, chol = _capacitance(q)
    dv = inv_d * v if v.ndim == 1 else inv_d[:, None] * v
    if q.factor.shape[1] == 0:
        return dv
    w = jax.scipy.linalg.cho_solve((chol, True), q.factor.T @ dv)
    corr = q.factor @ w
    return dv - (inv_d * corr if v.ndim == 1 else inv_d[:, None] * corr)


def precision_diag(q: Gaussian) -> jax.Array:
    """diag(Sigma^{-1}) in O(D r^2)."""
    inv_d, chol = _capacitance(q)
    if q.factor.shape[1] == 0:
        return inv_d
    g = jax.scipy.linalg.solve_triangular(chol, (q.factor * inv_d[:, None]).T, lower=True)
    return inv_d - jnp.sum(g**2, axis=0)


def variance(q: Gaussian) -> jax.Array:
    """Marginal variances diag(Sigma)."""
    return jnp.exp(2.0 * q.log_scale) + jnp.sum(q.factor**2, axis=1)


def log_det(q: Gaussian) -> jax.Array:
    """log det Sigma (matrix determinant lemma)."""
    _, chol = _capacitance(q)
    return 2.0 * jnp.sum(q.log_scale) + 2.0 * jnp.sum(jnp.log(jnp.diag(chol)))


def covariance(q: Gaussian) -> jax.Array:
    """The dense D x D covariance (small D only: tests and diagnostics)."""
    return jnp.diag(jnp.exp(2.0 * q.log_scale)) + q.factor @ q.factor.T


def noise_dim(q: Gaussian) -> int:
    """Length of the standard-normal vector one sample uses: D + r."""
    return q.mean.size + q.factor.shape[1]


def transform(q: Gaussian, eps: jax.Array) -> jax.Array:
    """theta = mean + exp(log_scale) * eps[:D] + factor @ eps[D:] (the reparameterisation)."""
    d = q.mean.size
    return q.mean + jnp.exp(q.log_scale) * eps[:d] + q.factor @ eps[d:]


def score(q: Gaussian, theta: jax.Array) -> jax.Array:
    """grad_theta log q(theta) = -Sigma^{-1} (theta - mean)."""
    return -precision_matvec(q, theta - q.mean)


def log_density(q: Gaussian, theta: jax.Array) -> jax.Array:
    """log q(theta)."""
    diff = theta - q.mean
    quad = jnp.dot(diff, precision_matvec(q, diff))
    return -0.5 * (quad + log_det(q) + q.mean.size * jnp.log(2.0 * jnp.pi))


def kl(q0: Gaussian, q1: Gaussian) -> jax.Array:
    """KL(q0 || q1) = 1/2 [tr(S1^-1 S0) + (m1-m0)^T S1^-1 (m1-m0) - D + log|S1| - log|S0|]."""
    trace = jnp.sum(precision_diag(q1) * jnp.exp(2.0 * q0.log_scale))
    if q0.factor.shape[1]:
        trace = trace + jnp.sum(q0.factor * precision_matvec(q1, q0.factor))
    diff = q1.mean - q0.mean
    quad = jnp.dot(diff, precision_matvec(q1, diff))
    return 0.5 * (trace + quad - q0.mean.size + log_det(q1) - log_det(q0))


def is_finite(q: Gaussian) -> jax.Array:
    """True when every parameter of q is finite."""
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(a)) for a in q]))


def keep_finite(new: Gaussian, old: Gaussian) -> tuple[Gaussian, jax.Array]:
    """`new` when all of it is finite, else `old`; and whether the update was rejected."""
    ok = is_finite(new)
    return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old), ~ok


# ---------------------------------------------------------------------------------------------
# Minibatch scores, streamed over samples
# ---------------------------------------------------------------------------------------------


def select_batch(rng_key: jax.Array, num_data: int, batch_size: int):
    """Indices of a batch of `batch_size` rows without replacement (all rows when >= N)."""
    if batch_size >= num_data:
        return jnp.arange(num_data)
    return jax.random.permutation(rng_key, num_data)[:batch_size]


class Snapshot(NamedTuple):
    """The control variate's anchor: a point theta~ (q's mean when taken) and the full-data
    score there, grad l(theta~)."""

    theta: jax.Array
    grad: jax.Array


def full_data_grad(log_target: Callable, theta: jax.Array, x: jax.Array, y: jax.Array, chunk: int):
    """grad l(theta) on all N rows, summed over chunks of `chunk` rows (the last one masked)."""
    n = x.shape[0]
    if not hasattr(log_target, "likelihood_part"):  # a synthetic target: one call on all rows
        return jax.grad(log_target)(theta, x, y, jnp.ones(n, bool), jnp.asarray(n, jnp.int32))
    chunk = min(chunk, n)
    k = -(-n // chunk)
    pad = k * chunk - n
    xs = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]).reshape(
        k, chunk, *x.shape[1:]
    )
    ys = jnp.concatenate([y, jnp.zeros((pad, *y.shape[1:]), y.dtype)]).reshape(
        k, chunk, *y.shape[1:]
    )
    masks = (jnp.arange(k * chunk) < n).reshape(k, chunk)
    size = jnp.asarray(n, jnp.int32)  # N / |B| = 1: each chunk adds its plain sum

    def one(acc, batch):
        xb, yb, mb = batch
        return acc + jax.grad(log_target.likelihood_part)(theta, xb, yb, mb, size), None

    lik, _ = jax.lax.scan(one, jnp.zeros_like(theta), (xs, ys, masks))
    return lik + jax.grad(log_target.log_prior)(theta)


def take_snapshot(log_target, q: Gaussian, x, y, config: VIConfig, snap: Snapshot, t) -> Snapshot:
    """A fresh snapshot at q's mean every `config.snapshot_every` iterations (t = 0, K, 2K,
    ...), else `snap` unchanged."""
    return jax.lax.cond(
        t % config.snapshot_every == 0,
        lambda: Snapshot(q.mean, full_data_grad(log_target, q.mean, x, y, config.batch_size)),
        lambda: snap,
    )


def empty_snapshot(q: Gaussian) -> Snapshot:
    return Snapshot(jnp.zeros_like(q.mean), jnp.zeros_like(q.mean))


def example_grads_per_step(config: VIConfig, num_data: int, t: int) -> int:
    """Rows whose gradient step t (1, 2, ...) computes: S M, plus with the control variate M
    (shared batch) or S M (batch_per_sample) at the snapshot, plus N when the snapshot is
    refreshed."""
    batch = min(config.batch_size, num_data)
    grads = config.num_samples * batch
    if config.snapshot_every:
        grads += batch * (config.num_samples if config.batch_per_sample else 1)
        grads += num_data if (t - 1) % config.snapshot_every == 0 else 0
    return grads


def minibatch_value_and_grad(
    log_target: Callable,
    rng_key: jax.Array,
    x: jax.Array,
    y: jax.Array,
    config: VIConfig,
    snapshot: Snapshot | None = None,
) -> Callable:
    """(theta, s) -> ((l_B(theta), log prior(theta)), score) for sample s.

    l_B = log prior + (N / |B|) sum_{i in B} log p(y_i | x_i, theta): unbiased for the full-data
    log-target and its score, for every theta, over the draw of B. B is one fresh batch of
    `config.batch_size` rows shared by all samples of the iteration, or with
    `config.batch_per_sample` an independent batch for each sample s (batch noise then averages
    over the S samples, at the same number of example gradients). The score is grad l_B(theta),
    or with a `snapshot` the control-variate score
        grad l_B(theta) - grad l_B(theta~) + grad l(theta~),
    still unbiased, whose batch noise shrinks as theta approaches theta~ (SVRG's estimator). The
    log prior is `log_target.log_prior` where the target has one
    (bnn_bench.posterior.LogTarget), else 0: it splits the ELBO into its expected log-likelihood
    and KL(q || prior).
    """
    num_data = x.shape[0]
    log_prior = getattr(log_target, "log_prior", None)

    def batch(s):
        key = jax.random.fold_in(rng_key, s) if config.batch_per_sample else rng_key
        idx = select_batch(key, num_data, config.batch_size)
        return x[idx], y[idx]

    size = jnp.asarray(min(config.batch_size, num_data), jnp.int32)
    mask = jnp.ones(min(config.batch_size, num_data), dtype=bool)

    def anchor_grad(xb, yb):
        return jax.grad(log_target)(snapshot.theta, xb, yb, mask, size)

    if not config.batch_per_sample:
        shared = batch(0)
        if snapshot is not None:
            shared_anchor = anchor_grad(*shared)

    def value_and_grad(theta, s):
        xb, yb = batch(s) if config.batch_per_sample else shared
        value, grad = jax.value_and_grad(log_target)(theta, xb, yb, mask, size)
        if snapshot is not None:
            anchor = anchor_grad(xb, yb) if config.batch_per_sample else shared_anchor
            grad = grad - anchor + snapshot.grad
        prior = log_prior(theta) if log_prior is not None else jnp.zeros_like(value)
        return (value, prior), grad

    return value_and_grad


def stream(
    rng_key: jax.Array,
    q: Gaussian,
    num_samples: int,
    value_and_grad: Callable,
    accumulate: Callable,
    init_acc,
    *,
    sample_map: str = "scan",
):
    """Fold S samples theta_s ~ q and their scores into an accumulator, one sample at a time.

    `accumulate(acc, theta, eps, value, grad) -> acc`, where theta = transform(q, eps) and
    (value, grad) = value_and_grad(theta, s) for sample s. "scan" runs a lax.scan over samples;
    "unroll" traces each sample once and chains them with an optimization barrier (XLA's CPU
    convolutions are several times slower inside a loop body), so in both cases one sample is in
    flight at a time.
    """
    eps_dim = noise_dim(q)

    def one(acc, s):
        eps = jax.random.normal(jax.random.fold_in(rng_key, s), (eps_dim,), q.mean.dtype)
        theta = transform(q, eps)
        if sample_map == "unroll":
            theta, acc = jax.lax.optimization_barrier((theta, acc))
        value, grad = value_and_grad(theta, s)
        return accumulate(acc, theta, eps, value, grad)

    if sample_map == "scan":
        acc, _ = jax.lax.scan(lambda a, s: (one(a, s), None), init_acc, jnp.arange(num_samples))
        return acc
    if sample_map != "unroll":
        raise ValueError(f"sample_map must be one of {SAMPLE_MAPS}, got {sample_map!r}")
    acc = init_acc
    for s in range(num_samples):
        acc = one(acc, s)
    return acc


class Moments(NamedTuple):
    """Per-coordinate sums over samples, centred at q_t's mean (dx = theta_s - m_t, g = score).

    Centring keeps the variance estimates accurate in float32 when std << |mean|.
    """

    sum_dx: jax.Array
    sum_dxdx: jax.Array
    sum_g: jax.Array
    sum_dxg: jax.Array
    sum_gg: jax.Array
    sum_log_target: jax.Array  # sum_s l_B(theta_s)
    sum_log_prior: jax.Array  # sum_s log prior(theta_s)
    sum_log_q: jax.Array  # sum_s log q_t(theta_s)
    sum_score_loss: jax.Array  # sum_s ||grad log q_t(theta_s) - g_s||^2


def zero_moments(q: Gaussian) -> Moments:
    z = jnp.zeros_like(q.mean)
    s = jnp.zeros((), q.mean.dtype)
    return Moments(z, z, z, z, z, s, s, s, s)


def add_moments(q: Gaussian, m: Moments, theta, value, grad) -> Moments:
    """Add one sample (theta, (l_B(theta), log prior(theta)), grad l_B(theta)) to the sums,
    scored under q."""
    value, prior = value
    dx = theta - q.mean
    sq = score(q, theta)
    return Moments(
        m.sum_dx + dx,
        m.sum_dxdx + dx**2,
        m.sum_g + grad,
        m.sum_dxg + dx * grad,
        m.sum_gg + grad**2,
        m.sum_log_target + value,
        m.sum_log_prior + prior,
        m.sum_log_q + log_density(q, theta),
        m.sum_score_loss + jnp.sum((sq - grad) ** 2),
    )


def moments_stream(
    rng_key,
    q: Gaussian,
    x,
    y,
    *,
    log_target: Callable,
    config: VIConfig,
    snapshot: Snapshot | None = None,
) -> Moments:
    """Moments of S samples of q with their minibatch scores on fresh batches."""
    key_batch, key_samples = jax.random.split(rng_key)
    vg = minibatch_value_and_grad(log_target, key_batch, x, y, config, snapshot)
    return stream(
        key_samples,
        q,
        config.num_samples,
        vg,
        lambda acc, theta, eps, value, grad: add_moments(q, acc, theta, value, grad),
        zero_moments(q),
        sample_map=config.sample_map,
    )


def prox_rho(config: VIConfig, t: jax.Array, reversals: jax.Array | None = None) -> jax.Array:
    """The growing proximal weight, t = 0, 1, ...: rho_t = rho_0 + rho_1 t (prox_schedule=linear),
    rho_0 + rho_1 sqrt(t) (sqrt), or rho_0 + rho_1 k_t (adaptive), where k_t counts the
    iterations so far whose mean step reversed the previous one (Kesten's rule: rho grows only
    while the steps are dominated by score noise, not while q is still travelling)."""
    if config.prox_schedule == "linear":
        return config.prox_weight + config.prox_growth * t
    if config.prox_schedule == "sqrt":
        return config.prox_weight + config.prox_growth * jnp.sqrt(t.astype(jnp.float32))
    if config.prox_schedule == "adaptive":
        return config.prox_weight + config.prox_growth * reversals
    raise ValueError(f"prox_schedule must be one of {PROX_SCHEDULES}, got {config.prox_schedule!r}")


def initial_gaussian(rng_key, prior_std: jax.Array, init_std: float, rank: int = 0) -> Gaussian:
    """q_0: mean drawn from the prior, marginal std about init_std * prior std.

    A low-rank factor starts small and random (F = 0 is a saddle point: every loss depends on F
    through F F^T, whose derivative vanishes there).
    """
    key_mean, key_factor = jax.random.split(rng_key)
    mean = jax.random.normal(key_mean, prior_std.shape, prior_std.dtype) * prior_std
    q = init_gaussian(mean, init_std * prior_std, rank)
    if rank:
        f = jax.random.normal(key_factor, (mean.size, rank), mean.dtype)
        q = q._replace(factor=0.1 * init_std * prior_std[:, None] * f / jnp.sqrt(rank))
    return q


class VIInfo(NamedTuple):
    """What one step measured (device scalars; the loop fetches them lazily)."""

    neg_elbo: jax.Array  # -(1/S) sum_s [l_B(theta_s) - log q_t(theta_s)]: full-data scaled
    expected_log_lik: jax.Array  # (1/S) sum_s [l_B(theta_s) - log prior(theta_s)]
    kl_prior: jax.Array  # (1/S) sum_s [log q_t(theta_s) - log prior(theta_s)]
    score_loss: jax.Array  # (1/S) sum_s ||grad log q_t(theta_s) - g_s||^2
    rejected: jax.Array  # True when the update was not finite and q_t was kept


def info_from(m: Moments, num_samples: int, rejected) -> VIInfo:
    """neg_elbo = kl_prior - expected_log_lik, each a Monte Carlo estimate over q_t's samples."""
    return VIInfo(
        neg_elbo=-(m.sum_log_target - m.sum_log_q) / num_samples,
        expected_log_lik=(m.sum_log_target - m.sum_log_prior) / num_samples,
        kl_prior=(m.sum_log_q - m.sum_log_prior) / num_samples,
        score_loss=m.sum_score_loss / num_samples,
        rejected=jnp.asarray(rejected),
    )


def sample(rng_key: jax.Array, q: Gaussian, num: int) -> jax.Array:
    """`num` draws from q: shape (num, D) (for the predictive and tests)."""
    eps = jax.random.normal(rng_key, (num, noise_dim(q)), q.mean.dtype)
    return jax.vmap(lambda e: transform(q, e))(eps)
