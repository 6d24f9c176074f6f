"""Score-based VI against exact answers: Gaussian targets, conjugate regression, a mixture."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import read_jsonl
from test_smc import blr_posterior, linear_regression

from bnn_bench.inference.vi import ALGORITHMS, family, loop
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
    assert res["example_grads"] == 6 * 2 * 50
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
