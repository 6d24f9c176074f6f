"""Score-based VI against exact answers: Gaussian targets, conjugate regression, a mixture."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import read_jsonl
from test_smc import blr_posterior, linear_regression

from bnn_bench.config import VISettings
from bnn_bench.inference.vi import ALGORITHMS, bam, family, loop, score_prox
from bnn_bench.inference.vi.family import VIConfig
from bnn_bench.models import build_model
from bnn_bench.posterior import make_log_target, make_posterior

NO_DATA = (jnp.zeros((1, 1)), jnp.zeros((1,)))  # synthetic targets ignore the batch


def fit(name, log_target, q0, config, num_iterations, x=NO_DATA[0], y=NO_DATA[1], seed=1):
    algorithm = ALGORITHMS[name]
    state, status = loop.run(
        jax.random.key(seed),
        algorithm,
        algorithm.init(q0, config),
        x,
        y,
        num_iterations,
        log_target=log_target,
        config=config,
    )
    assert status == "finished"
    return state.q


# Each algorithm on the same target; S = 8 samples, exact scores.
SETTINGS = {
    "score_prox": (dict(prox_weight=1.0, prox_growth=0.01), 300),
    "advi": (dict(learning_rate=0.05), 500),
    "gsm": ({}, 300),
    "bam": (dict(prox_weight=1.0, prox_growth=0.01), 300),
}


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_every_algorithm_recovers_a_diagonal_gaussian(name):
    rng = np.random.default_rng(0)
    dim = 10
    mean = jnp.asarray(3 * rng.normal(size=dim), jnp.float32)
    std = jnp.asarray(np.exp(rng.uniform(-2, 1, size=dim)), jnp.float32)  # 0.14 .. 2.7

    def log_target(theta, *_):
        return -0.5 * jnp.sum(((theta - mean) / std) ** 2)

    options, iterations = SETTINGS[name]
    config = VIConfig(num_samples=8, batch_size=1, **options)
    q0 = family.initial_gaussian(jax.random.key(0), jnp.ones(dim), 1.0)
    q = fit(name, log_target, q0, config, iterations)
    np.testing.assert_array_less(np.abs(np.asarray((q.mean - mean) / std)), 0.02)
    np.testing.assert_allclose(np.asarray(family.variance(q)), np.asarray(std**2), rtol=0.10)


def test_lowrank_score_prox_recovers_a_correlated_gaussian():
    # Target covariance diag(d) + W W^T with rank(W) = 2; family lowrank with rank 2.
    rng = np.random.default_rng(3)
    dim, rank = 8, 2
    w = rng.normal(size=(dim, rank))
    cov = np.diag(np.exp(rng.uniform(-1, 0.5, size=dim))) + w @ w.T
    prec = jnp.asarray(np.linalg.inv(cov), jnp.float32)
    mean = jnp.asarray(rng.normal(size=dim), jnp.float32)

    def log_target(theta, *_):
        return -0.5 * (theta - mean) @ prec @ (theta - mean)

    config = VIConfig(
        num_samples=16,
        batch_size=1,
        prox_weight=1.0,
        prox_growth=0.0,
        inner_steps=10,
        learning_rate=0.05,
        family="lowrank",
        rank=rank,
    )
    q0 = family.initial_gaussian(jax.random.key(0), jnp.ones(dim), 1.0, rank)
    q = fit("score_prox", log_target, q0, config, 300)
    fitted = np.asarray(family.covariance(q))
    assert np.linalg.norm(fitted - cov) / np.linalg.norm(cov) < 0.10
    np.testing.assert_allclose(np.asarray(q.mean), np.asarray(mean), atol=0.05)


def test_minibatch_score_prox_matches_the_conjugate_posterior_mean():
    # N = 300, d = 5 (+ intercept), minibatches of M = 64, S = 8, T = 2000 with the growing
    # proximal weight rho_t = 1 + t (algorithms.md: a constant weight wanders by several sd).
    x, y, mean, sd = linear_regression()
    post = blr_posterior(x)
    config = VIConfig(num_samples=8, batch_size=64, prox_weight=1.0, prox_growth=1.0)
    q0 = family.initial_gaussian(jax.random.key(0), post.prior_std, 0.1)
    lt = make_log_target(post, len(x))
    q = fit("score_prox", lt, q0, config, 2000, jnp.asarray(x), jnp.asarray(y))
    np.testing.assert_array_less(np.abs((np.asarray(q.mean) - mean) / sd), 0.1)


def test_gaussian_mixture_forward_and_reverse_kl():
    # Model mismatch: a 2-component mixture in 2-D fitted with a diagonal Gaussian.
    weights = jnp.array([0.7, 0.3])
    centres = jnp.array([[-1.0, 0.0], [2.0, 1.0]])
    scales = jnp.array([[0.6, 0.8], [0.9, 0.5]])

    def log_p(theta):
        comp = -0.5 * jnp.sum(((theta - centres) / scales) ** 2, axis=1)
        comp = comp - jnp.sum(jnp.log(scales), axis=1) - jnp.log(2 * jnp.pi)
        return jax.scipy.special.logsumexp(comp + jnp.log(weights))

    n = 20_000
    kc, kn = jax.random.split(jax.random.key(9))
    c = jax.random.choice(kc, 2, (n,), p=weights)
    p_samples = centres[c] + scales[c] * jax.random.normal(kn, (n, 2))

    def kls(q):
        log_q = jax.vmap(lambda t: family.log_density(q, t))
        forward = float(jnp.mean(jax.vmap(log_p)(p_samples) - log_q(p_samples)))
        q_samples = family.sample(jax.random.key(5), q, n)
        reverse = float(jnp.mean(log_q(q_samples) - jax.vmap(log_p)(q_samples)))
        return forward, reverse

    q0 = family.initial_gaussian(jax.random.key(0), jnp.ones(2), 1.0)
    base = dict(num_samples=16, batch_size=1, prox_weight=1.0, prox_growth=0.1)
    result = {}
    for name, options, iterations in [
        ("score_prox", {}, 300),
        ("advi", dict(learning_rate=0.02), 1500),
    ]:
        q = fit(name, lambda t, *_: log_p(t), q0, VIConfig(**base, **options), iterations)
        result[name] = kls(q)
    for forward, reverse in result.values():
        assert np.isfinite(forward) and np.isfinite(reverse)
        assert forward > 0 and reverse > 0  # a Gaussian cannot match the mixture
    # Measured with these settings: forward KL 2.95 (score_prox) vs 2.88 (advi) nats; both lock
    # onto the heavier mode. Pinned margin: score_prox is not worse than advi by > 0.25 nats.
    assert result["score_prox"][0] <= result["advi"][0] + 0.25


def test_minibatch_score_is_unbiased_for_the_full_data_score():
    # E_B[grad l_B(theta)] = grad l_full(theta): mean of R = 4000 batch scores (M = 10 of N = 50)
    # within 5 standard errors of the full-data score in every coordinate.
    rng = np.random.default_rng(0)
    n, m, draws = 50, 10, 4000
    x = jnp.asarray(rng.normal(size=(n, 4)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, size=n))
    post = make_posterior(build_model("mlp", 3, hidden=[5]), x)
    lt = make_log_target(post, n)
    theta = post.sample_prior(jax.random.key(0), 1)[0]
    full = jax.grad(lt)(theta, x, y, jnp.ones(n, bool), n)

    def one(key):
        return family.minibatch_value_and_grad(lt, key, x, y, VIConfig(batch_size=m))(theta, 0)[1]

    grads = jax.lax.map(one, jax.random.split(jax.random.key(1), draws), batch_size=500)
    mean = np.asarray(grads.mean(0))
    se = np.asarray(grads.std(0)) / np.sqrt(draws)
    assert np.all(np.abs(mean - np.asarray(full)) <= 5 * se + 1e-4 * np.abs(np.asarray(full)))
    # and the batch scores really are noisy (the check above is not vacuous)
    assert np.median(se * np.sqrt(draws) / (np.abs(np.asarray(full)) + 1e-6)) > 0.1


def test_scan_and_unroll_streams_give_the_same_moments():
    post = make_posterior(build_model("linear", 2), jnp.zeros((1, 3)))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(20, 3)), jnp.float32)
    y = jnp.arange(20) % 2
    q = family.initial_gaussian(jax.random.key(0), post.prior_std, 0.5)
    lt = make_log_target(post, 20)
    out = []
    for sample_map in ("scan", "unroll"):
        config = VIConfig(num_samples=3, batch_size=5, sample_map=sample_map)
        m = family.moments_stream(jax.random.key(2), q, x, y, log_target=lt, config=config)
        out.append(m)
    for a, b in zip(*out, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_lowrank_algebra_matches_dense_formulas():
    rng = np.random.default_rng(1)
    q = family.Gaussian(
        jnp.asarray(rng.normal(size=5), jnp.float32),
        jnp.asarray(rng.normal(size=5) * 0.3, jnp.float32),
        jnp.asarray(rng.normal(size=(5, 2)), jnp.float32),
    )
    q1 = q._replace(mean=q.mean + 0.5, log_scale=q.log_scale - 0.2)
    cov, cov1 = np.asarray(family.covariance(q), np.float64), np.asarray(family.covariance(q1))
    theta = jnp.asarray(rng.normal(size=5), jnp.float32)
    diff = np.asarray(theta - q.mean)
    np.testing.assert_allclose(
        np.asarray(family.score(q, theta)), -np.linalg.solve(cov, diff), 1e-4
    )
    logdet = np.linalg.slogdet(cov)[1]
    dense = -0.5 * (diff @ np.linalg.solve(cov, diff) + logdet + 5 * np.log(2 * np.pi))
    assert float(family.log_density(q, theta)) == pytest.approx(dense, rel=1e-4)
    dm = np.asarray(q1.mean - q.mean)
    kl = 0.5 * (
        np.trace(np.linalg.solve(cov1, cov))
        + dm @ np.linalg.solve(cov1, dm)
        - 5
        + np.linalg.slogdet(cov1)[1]
        - logdet
    )
    assert float(family.kl(q, q1)) == pytest.approx(kl, rel=1e-4)


# ---------------------------------------------------------------------------------------------
# End to end through the CLI
# ---------------------------------------------------------------------------------------------

TINY_VI = [
    "method=vi",
    "vi.num_iterations=6",
    "vi.num_samples=2",
    "vi.batch_size=50",
    "vi.num_predictive_samples=4",
    "logger=none",
    "log_every=2",
    "eval_every=3",
]
VI_METRIC_KEYS = {"iter", "batch_size", "neg_elbo", "score_loss", "time_s", "example_grads"}
VI_METRIC_KEYS |= {"expected_log_lik", "kl_prior"}


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_cli_vi_run_on_digits(run_cli, tmp_path, algorithm):
    out = tmp_path / "run"
    proc = run_cli(*TINY_VI, f"vi.algorithm={algorithm}", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "finished" and res["method"] == "vi"
    assert res["algorithm"] == algorithm and res["iterations"] == 6
    assert 0.0 <= res["accuracy"] <= 1.0 and res["nll"] > 0 and res["ece"] >= 0
    assert np.isfinite(res["neg_elbo"]) and res["peak_rss_mb"] > 0
    assert res["neg_elbo"] == pytest.approx(res["kl_prior"] - res["expected_log_lik"], rel=1e-4)
    # S M per step; score_prox's control variate adds M per step and N per snapshot (K = 10)
    cv = algorithm == "score_prox"
    assert res["example_grads"] == 6 * 2 * 50 + cv * (6 * 50 + res["n_train"])
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["iter"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(set(r) >= VI_METRIC_KEYS for r in rows)
    assert "test_accuracy" in rows[2] and "test_accuracy" in rows[5]


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("vi.algorithm=sgld", "vi.algorithm=sgld"),
        ("vi.family=full", "vi.family=full"),
        ("vi.rank=0", "vi.rank=0"),
        ("vi.num_samples=1", "vi.num_samples=1"),
        ("vi.batch_size=0", "vi.batch_size=0"),
        ("vi.prox_weight=0", "vi.prox_weight=0"),
        ("vi.learning_rate=-1", "vi.learning_rate=-1"),
        ("vi.init_std=0", "vi.init_std=0"),
    ],
)
def test_bad_vi_config_is_one_line_exit_2(run_cli, tmp_path, override, needle):
    out = tmp_path / "run"
    proc = run_cli("method=vi", override, "logger=none", f"hydra.run.dir={out}")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert not out.exists()


def test_gsm_rejects_the_lowrank_family(run_cli, tmp_path):
    proc = run_cli("method=vi", "vi.algorithm=gsm", "vi.family=lowrank", "logger=none")
    assert proc.returncode == 2
    assert "vi.family=lowrank" in proc.stderr and "vi.algorithm=gsm" in proc.stderr


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_a_run_compiles_its_step_once(name):
    post = make_posterior(build_model("linear", 2), jnp.zeros((1, 3)))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(30, 3)), jnp.float32)
    y = jnp.arange(30) % 2
    config = VIConfig(num_samples=2, batch_size=7, prox_growth=0.5, learning_rate=0.003)
    q0 = family.initial_gaussian(jax.random.key(0), post.prior_std, 0.1)
    step = ALGORITHMS[name].step
    before = step._cache_size()
    fit(name, make_log_target(post, 30), q0, config, 12, x, y)
    assert step._cache_size() - before == 1


# ---------------------------------------------------------------------------------------------
# The closed form at the CLI's defaults
# ---------------------------------------------------------------------------------------------


def blr_npz(tmp_path, n=500, d=5, seed=0):
    """A 5-d Bayesian linear regression with N = 500 training rows in an npz, and its exact
    posterior (mean, sd) under the CLI's default prior (N(0, 3^2 / fan_in) on bias and kernel)
    and noise (std 1). The inputs are standardised already, so the loader's per-feature
    standardisation leaves them as they are (to float32 rounding)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    x = (x - x.mean(0)) / x.std(0)
    y = x @ rng.normal(size=d) + 0.3 + rng.normal(size=n)
    xt = rng.normal(size=(50, d))
    path = tmp_path / "blr.npz"
    np.savez(path, x=x.astype(np.float32), y=y.astype(np.float32), x_test=xt, y_test=xt[:, 0])
    post = make_posterior(
        build_model("linear", 1),
        jnp.asarray(x, jnp.float32),
        likelihood="gaussian",
        noise_std=1.0,
        prior_std=3.0,
        prior_scale="fan_in",
    )
    prior_var = np.asarray(post.prior_std, np.float64) ** 2
    phi = np.concatenate([np.ones((n, 1)), x], axis=1)  # ravel order: bias, then kernel
    cov = np.linalg.inv(phi.T @ phi + np.diag(1.0 / prior_var))
    return path, cov @ phi.T @ y, np.sqrt(np.diag(cov))


@pytest.mark.slow
def test_cli_defaults_match_the_conjugate_posterior(run_cli, tmp_path):
    # `bnn-bench method=vi dataset=npz model=linear likelihood=gaussian` with nothing else
    # changed (issue 15: before the trust region and the re-chosen schedule the mean was 0.35
    # sd off and the sds 0.76-1.16 of the exact ones).
    path, mean, sd = blr_npz(tmp_path)
    out = tmp_path / "run"
    proc = run_cli(
        "method=vi",
        "dataset=npz",
        f"dataset.path={path}",
        "model=linear",
        "likelihood=gaussian",
        "save_posterior=true",
        "logger=none",
        f"hydra.run.dir={out}",
    )
    assert proc.returncode == 0, proc.stderr
    q = np.load(out / "posterior.npz")
    fitted_sd = np.sqrt(np.exp(2 * q["log_scale"]) + np.sum(q["factor"] ** 2, axis=1))
    np.testing.assert_array_less(np.abs(q["mean"] - mean) / sd, 0.1)
    np.testing.assert_allclose(fitted_sd, sd, rtol=0.15)


# ---------------------------------------------------------------------------------------------
# The bounded step, the low-rank solve, BaM's schedule, the score options
# ---------------------------------------------------------------------------------------------


def fake_moments(q, thetas, grads):
    m = family.zero_moments(q)
    for th, g in zip(thetas, grads, strict=True):
        m = family.add_moments(q, m, th, (jnp.zeros(()), jnp.zeros(())), g)
    return m


def test_diag_step_stays_in_the_trust_region():
    # Scores 1e4 times the scale of q_t: the unbounded closed form moves the mean by > 100 sds;
    # the bounded step moves each mean coordinate by at most max_mean_step sds and each variance
    # by at most a factor max_var_ratio.
    rng = np.random.default_rng(0)
    dim, s = 20, 4
    q = family.init_gaussian(jnp.asarray(rng.normal(size=dim)), jnp.full(dim, 0.1, jnp.float32))
    thetas = jax.vmap(lambda e: family.transform(q, e))(jnp.asarray(rng.normal(size=(s, dim))))
    grads = jnp.asarray(1e4 * rng.normal(size=(s, dim)) + 3e3, jnp.float32)
    m = fake_moments(q, thetas, grads)
    free = score_prox.diag_update(q, m, s, 1.0)
    assert np.max(np.abs(np.asarray(free.mean - q.mean)) / 0.1) > 100  # the bound is active
    new = score_prox.diag_update(q, m, s, 1.0, max_mean_step=0.5, max_var_ratio=1.5)
    step_sd = np.abs(np.asarray(new.mean - q.mean)) / 0.1
    ratio = np.asarray(family.variance(new)) / 0.01
    assert np.all(step_sd <= 0.5 + 1e-5) and np.any(step_sd > 0.49)
    assert np.all((ratio >= 1 / 1.5 - 1e-5) & (ratio <= 1.5 + 1e-5))


def test_lowrank_trust_region_bounds_mean_and_marginal_variances():
    rng = np.random.default_rng(1)
    dim = 6
    q_t = family.Gaussian(
        jnp.zeros(dim), jnp.full(dim, np.log(0.5), jnp.float32), 0.3 * jnp.ones((dim, 1))
    )
    new = family.Gaussian(
        jnp.asarray(rng.normal(size=dim) * 10, jnp.float32),
        jnp.asarray(rng.normal(size=dim) * 2, jnp.float32),
        jnp.asarray(rng.normal(size=(dim, 1)) * 3, jnp.float32),
    )
    out = score_prox.trust_region(new, q_t, 1.0, 2.0)
    sd_t = np.sqrt(np.asarray(family.variance(q_t)))
    assert np.all(np.abs(np.asarray(out.mean - q_t.mean)) <= sd_t + 1e-5)
    ratio = np.asarray(family.variance(out)) / sd_t**2
    assert np.all((ratio >= 0.5 - 1e-4) & (ratio <= 2.0 * (1 + score_prox.DIAG_FLOOR) + 1e-4))


def lowrank_problem(seed=0, dim=8, rank=2, s=16, rho=3.0):
    rng = np.random.default_rng(seed)
    q_t = family.Gaussian(
        jnp.asarray(rng.normal(size=dim), jnp.float32),
        jnp.asarray(rng.uniform(-1, 0, size=dim), jnp.float32),
        jnp.asarray(0.3 * rng.normal(size=(dim, rank)), jnp.float32),
    )
    w = rng.normal(size=(dim, rank))
    prec = jnp.asarray(np.linalg.inv(np.diag(rng.uniform(0.2, 1, size=dim)) + w @ w.T))
    centre = jnp.asarray(rng.normal(size=dim), jnp.float32)
    thetas = family.sample(jax.random.key(seed), q_t, s)
    grads = -(thetas - centre) @ prec.T + jnp.asarray(0.3 * rng.normal(size=(s, dim)))
    return q_t, thetas, grads.astype(jnp.float32), rho


def test_lowrank_inner_solve_reaches_the_block_minimiser():
    # The precision block by L-BFGS: its gradient is ~0 there and 5,000 Adam steps find no
    # lower value; the closed-form mean block zeroes L_t's gradient in the mean. (The solve it
    # replaced, 10 Adam steps of 1e-3, left the gradient at ~the value it started from.)
    import optax

    q_t, thetas, grads, rho = lowrank_problem()
    phi, iters, rel = score_prox.inner_solve(q_t, thetas, grads, rho, max_steps=500, tol=1e-5)
    assert float(rel) < 1e-3 and int(iters) < 500
    to, z0 = score_prox.whiten(q_t)

    def loss(z):
        return score_prox.precision_loss(to(z), q_t, thetas, grads, rho)

    opt = optax.adam(1e-2)

    def adam_step(carry, _):
        z, st = carry
        updates, st = opt.update(jax.grad(loss)(z), st, z)
        return (optax.apply_updates(z, updates), st), None

    (z_long, _), _ = jax.lax.scan(adam_step, (z0, opt.init(z0)), None, length=5000)
    cov_phi = phi._replace(mean=q_t.mean)
    solved = float(score_prox.precision_loss(cov_phi, q_t, thetas, grads, rho))
    assert solved <= float(loss(z_long)) + 1e-4 * abs(solved)
    assert solved < float(loss(z0)) - 1e-2 * abs(solved)  # not vacuous: q_t is not a minimiser
    g_mean = jax.grad(
        lambda mu: score_prox.prox_loss(phi._replace(mean=mu), q_t, thetas, grads, rho)
    )
    g0 = jax.grad(lambda mu: score_prox.prox_loss(q_t._replace(mean=mu), q_t, thetas, grads, rho))
    assert float(jnp.linalg.norm(g_mean(phi.mean))) < 1e-3 * float(jnp.linalg.norm(g0(q_t.mean)))


def test_lowrank_mean_block_reduces_to_the_diagonal_formula():
    q_t, thetas, grads, rho = lowrank_problem(rank=0)
    m = fake_moments(q_t, thetas, grads)
    diag = score_prox.diag_update(q_t, m, thetas.shape[0], rho)
    mean = score_prox.mean_update(diag, q_t, thetas, grads, rho)
    np.testing.assert_allclose(np.asarray(mean), np.asarray(diag.mean), rtol=1e-4, atol=1e-5)


def test_bam_uses_the_reference_schedule():
    # lambda_t = lambda_0 / (1 + t) with lambda_0 = bam_lambda0 (Cai et al.'s code): one step at
    # t = 4 equals the closed-form update with lambda = 100 / 5 on the same moments.
    post = make_posterior(build_model("linear", 2), jnp.zeros((1, 3)))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(30, 3)), jnp.float32)
    y = jnp.arange(30) % 2
    lt = make_log_target(post, 30)
    config = VIConfig(num_samples=3, batch_size=7)
    assert config.bam_lambda0 == 100.0
    q = family.initial_gaussian(jax.random.key(0), post.prior_std, 0.1)
    state = bam.BaMState(q, jnp.asarray(4, jnp.int32))
    new, _ = bam.step(jax.random.key(3), state, x, y, log_target=lt, config=config)
    m = family.moments_stream(jax.random.key(3), q, x, y, log_target=lt, config=config)
    want = bam.diag_update(q, m, 3, 100.0 / 5.0)
    np.testing.assert_allclose(np.asarray(new.q.mean), np.asarray(want.mean), rtol=1e-5)
    other = bam.diag_update(q, m, 3, 1.0 / 5.0)  # the old 1 / (1 + t)
    assert not np.allclose(np.asarray(other.mean), np.asarray(want.mean), rtol=1e-3)


def blr_target(n=200):
    x, y, _, _ = linear_regression(n=n)
    post = blr_posterior(x)
    return jnp.asarray(x), jnp.asarray(y), post, make_log_target(post, n)


def test_batch_per_sample_draws_a_batch_for_each_sample():
    x, y, post, lt = blr_target()
    theta = post.sample_prior(jax.random.key(0), 1)[0]
    shared = family.minibatch_value_and_grad(lt, jax.random.key(1), x, y, VIConfig(batch_size=20))
    own = family.minibatch_value_and_grad(
        lt, jax.random.key(1), x, y, VIConfig(batch_size=20, batch_per_sample=True)
    )
    np.testing.assert_array_equal(np.asarray(shared(theta, 0)[1]), np.asarray(shared(theta, 1)[1]))
    assert not np.allclose(np.asarray(own(theta, 0)[1]), np.asarray(own(theta, 1)[1]))


def test_control_variate_score_is_unbiased_and_exact_at_the_snapshot():
    x, y, post, lt = blr_target()
    n = x.shape[0]
    anchor = post.sample_prior(jax.random.key(0), 1)[0]
    full = lambda th: jax.grad(lt)(th, x, y, jnp.ones(n, bool), n)  # noqa: E731
    snap = family.Snapshot(anchor, family.full_data_grad(lt, anchor, x, y, 30))  # 7 chunks
    np.testing.assert_allclose(np.asarray(snap.grad), np.asarray(full(anchor)), rtol=1e-4)
    config = VIConfig(batch_size=20)

    def cv(key, th):
        return family.minibatch_value_and_grad(lt, key, x, y, config, snap)(th, 0)[1]

    def plain(key, th):
        return family.minibatch_value_and_grad(lt, key, x, y, config)(th, 0)[1]

    keys = jax.random.split(jax.random.key(2), 2000)
    at_anchor = jax.vmap(lambda k: cv(k, anchor))(keys)
    np.testing.assert_allclose(
        np.asarray(at_anchor), np.broadcast_to(snap.grad, at_anchor.shape), rtol=1e-3, atol=1e-2
    )
    near = anchor + 0.05
    g_cv, g_plain = jax.vmap(lambda k: cv(k, near))(keys), jax.vmap(lambda k: plain(k, near))(keys)
    se = np.asarray(g_cv.std(0)) / np.sqrt(len(keys))
    assert np.all(np.abs(np.asarray(g_cv.mean(0) - full(near))) <= 5 * se + 1e-3)
    assert np.all(np.asarray(g_cv.std(0)) < 0.2 * np.asarray(g_plain.std(0)))


def test_adaptive_schedule_grows_rho_only_on_reversals():
    config = VIConfig(prox_weight=1.0, prox_growth=2.0, prox_schedule="adaptive")
    assert float(family.prox_rho(config, jnp.asarray(50), jnp.asarray(3.0))) == 7.0
    # score_prox counts a reversal when the whitened mean step turns against the last one
    q = family.init_gaussian(jnp.zeros(3), jnp.ones(3))
    state = score_prox.init(q, config)._replace(last_step=jnp.array([1.0, 0.0, 0.0]))

    def log_target(theta, *_):  # pulls the mean towards -1 in the first coordinate
        return -0.5 * jnp.sum((theta - jnp.array([-1.0, 0.0, 0.0])) ** 2)

    cfg = config._replace(batch_size=1, snapshot_every=0)
    new, _ = score_prox.step(jax.random.key(0), state, *NO_DATA, log_target=log_target, config=cfg)
    assert float(new.reversals) == 1.0 and float(new.last_step[0]) < 0


def test_kl_prior_and_expected_log_lik_split_the_neg_elbo():
    # With S = 4,000 samples: kl_prior matches the closed-form KL(q || prior) and the parts add
    # up to neg_elbo.
    x, y, post, lt = blr_target()
    q = family.initial_gaussian(jax.random.key(0), post.prior_std, 0.3)
    config = VIConfig(num_samples=4000, batch_size=200)
    m = family.moments_stream(jax.random.key(1), q, x, y, log_target=lt, config=config)
    info = family.info_from(m, 4000, False)
    prior = family.init_gaussian(jnp.zeros_like(q.mean), post.prior_std)
    assert float(info.kl_prior) == pytest.approx(float(family.kl(q, prior)), abs=0.05)
    assert float(info.neg_elbo) == pytest.approx(
        float(info.kl_prior - info.expected_log_lik), rel=1e-5
    )


def test_library_defaults_are_the_config_schema_defaults():
    schema = {f.name: f.default for f in dataclasses.fields(VISettings)}
    for name in VIConfig._fields:
        if name in schema and name != "rank":  # rank: 0 means the diagonal family in VIConfig
            assert getattr(VIConfig(), name) == schema[name], name
