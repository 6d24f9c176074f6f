"""Deep ensemble (MAP fits) and SG-MCMC (SGLD, SGHMC) on Bayesian linear regression, where the
MAP and the posterior are known in closed form."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bnn_bench.inference import ensemble, sgmcmc
from bnn_bench.inference.minibatch import epoch_batch
from bnn_bench.models import Linear
from bnn_bench.posterior import make_log_target, make_posterior

NOISE, PRIOR = 0.5, 0.2  # a tight prior, so that the MAP is far from least squares


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 2)).astype(np.float32)
    y = (x @ np.array([1.0, -0.5]) + 0.3 + NOISE * rng.normal(size=64)).astype(np.float32)
    post = make_posterior(
        Linear(1), jnp.asarray(x), likelihood="gaussian", noise_std=NOISE, prior_std=PRIOR
    )
    design = np.hstack([x, np.ones((64, 1))]).astype(np.float64)
    precision = design.T @ design / NOISE**2 + np.eye(3) / PRIOR**2
    cov = np.linalg.inv(precision)
    mean = cov @ design.T @ y / NOISE**2
    probe = np.array([[1.0, 2.0], [-1.0, 0.5]], np.float32)
    probe1 = np.hstack([probe, np.ones((2, 1))])
    exact = {"mean": probe1 @ mean, "std": np.sqrt(np.einsum("ij,jk,ik->i", probe1, cov, probe1))}
    return post, jnp.asarray(x), jnp.asarray(y), probe, exact


def ens_config(**changes):
    base = dict(num_members=1, num_epochs=300, batch_size=64, learning_rate=0.05)
    base.update(lr_schedule="constant")
    base.update(changes)
    return ensemble.EnsembleConfig(**base)


def test_epoch_batch_covers_each_row_once_per_epoch():
    key = jax.random.key(3)
    rows = np.concatenate([np.asarray(epoch_batch(key, s, 10, 3)) for s in range(3)])
    assert sorted(rows.tolist()) == sorted(set(rows.tolist())) and len(rows) == 9
    assert not np.array_equal(epoch_batch(key, 0, 10, 3), epoch_batch(key, 3, 10, 3))


def test_one_member_is_a_plain_map_fit(problem):
    post, x, y, _, _ = problem
    target = make_log_target(post, 64)
    cfg = ens_config(num_epochs=50)
    theta0 = post.sample_prior(jax.random.key(1), 1)
    state = ensemble.init_from(theta0, cfg, 50)
    state, info = ensemble.run_chunk(
        jax.random.key(2), state, x, y, log_target=target, config=cfg, total_steps=50, num=50
    )
    # the same fit written out with optax (full batch, so the minibatch order does not matter)
    opt = optax.adam(0.05)
    theta, opt_state = theta0[0], opt.init(theta0[0])
    mask = jnp.ones(64, bool)
    for _ in range(50):
        grad = jax.grad(lambda t: -target(t, x, y, mask, 64) / 64)(theta)
        updates, opt_state = opt.update(grad, opt_state, theta)
        theta = optax.apply_updates(theta, updates)
    np.testing.assert_allclose(np.asarray(state.params[0]), np.asarray(theta), rtol=1e-5, atol=1e-6)
    assert info.loss.shape == (50, 1) and info.loss[-1, 0] < info.loss[0, 0]


def test_members_are_independent_fits_and_reach_the_map(problem):
    post, x, y, probe, exact = problem
    target = make_log_target(post, 64)
    cfg = ens_config(num_members=3, lr_schedule="cosine")
    theta0 = post.sample_prior(jax.random.key(1), 3)
    run = dict(log_target=target, config=cfg, total_steps=300, num=300)
    state, _ = ensemble.run_chunk(
        jax.random.key(2), ensemble.init_from(theta0, cfg, 300), x, y, **run
    )
    one = cfg._replace(num_members=1)
    alone, _ = ensemble.run_chunk(
        jax.random.key(2), ensemble.init_from(theta0[1:2], one, 300), x, y, **{**run, "config": one}
    )
    np.testing.assert_allclose(np.asarray(state.params[1]), np.asarray(alone.params[0]), atol=1e-5)
    # the posterior is Gaussian, so its MAP is the posterior mean: every member lands there
    preds = np.asarray(jax.vmap(lambda t: post.apply(t, jnp.asarray(probe))[:, 0])(state.params))
    np.testing.assert_allclose(preds, np.broadcast_to(exact["mean"], (3, 2)), atol=2e-3)


def test_unrolled_members_and_steps_are_the_vmapped_scan(problem):
    """particle_map=unroll (CNNs on CPU) must take exactly the steps of the vmapped scan: same
    minibatch order (batch 16 of 64 rows), members apart, and chunks of UNROLL_STEPS that do not
    divide the steps (13 = 5 + 5 + 3)."""
    post, x, y, _, _ = problem
    cfg = ens_config(num_members=3, batch_size=16, lr_schedule="cosine")
    state0 = ensemble.init_from(post.sample_prior(jax.random.key(1), 3), cfg, 26)
    run = dict(log_target=make_log_target(post, 64), config=cfg, total_steps=26, num=13)
    key = jax.random.key(2)
    scanned, info = ensemble.run_steps(key, state0, x, y, **run)
    unrolled, info_u = ensemble.run_steps(key, state0, x, y, particle_map="unroll", **run)
    assert ensemble.UNROLL_STEPS < 13 and 13 % ensemble.UNROLL_STEPS
    np.testing.assert_allclose(np.asarray(unrolled.params), np.asarray(scanned.params), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(info_u.loss), np.asarray(info.loss), rtol=1e-5)
    assert info_u.loss.shape == (13, 3) and int(unrolled.step) == 13
    # a second epoch goes on from the state (its batches depend on the step count)
    again, _ = ensemble.run_steps(key, unrolled, x, y, particle_map="unroll", **run)
    twice, _ = ensemble.run_chunk(key, state0, x, y, **{**run, "num": 26})
    np.testing.assert_allclose(np.asarray(again.params), np.asarray(twice.params), rtol=1e-5)
    assert not np.allclose(np.asarray(again.params), np.asarray(unrolled.params))


def test_minibatch_map_depends_on_the_prior(problem):
    """Without the prior term the fit is least squares, measurably off the MAP: the test above
    would fail if the ensemble dropped the weight decay."""
    post, x, y, probe, exact = problem
    flat = make_log_target(
        make_posterior(Linear(1), x, likelihood="gaussian", noise_std=NOISE, prior_std=1e3), 64
    )
    cfg = ens_config()
    state, _ = ensemble.run_chunk(
        jax.random.key(2),
        ensemble.init_from(post.sample_prior(jax.random.key(1), 1), cfg, 300),
        x,
        y,
        log_target=flat,
        config=cfg,
        total_steps=300,
        num=300,
    )
    pred = np.asarray(post.apply(state.params[0], jnp.asarray(probe))[:, 0])
    assert np.max(np.abs(pred - exact["mean"])) > 0.02


def sg_config(**changes):
    base = dict(
        algorithm="sgld",
        num_iterations=6000,
        batch_size=32,
        step_size=2e-4,
        step_schedule="constant",
        num_cycles=1,
        burn_in=1000,
        thin=5,
        num_integration_steps=5,
        alpha=0.1,
    )
    base.update(changes)
    return sgmcmc.SGMCMCConfig(**base)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["sgld", "sghmc"])
def test_sgmcmc_samples_the_linear_posterior(problem, algorithm):
    post, x, y, probe, exact = problem
    # blackjax's SGHMC moves the position by step_size * momentum: its step size is the square
    # root of a Langevin step size, and alpha is a friction per unit of that time
    cfg = sg_config(algorithm=algorithm)
    if algorithm == "sghmc":
        cfg = cfg._replace(step_size=0.01, alpha=1.0)
    sgmcmc.check_config(cfg)
    state = sgmcmc.init(post.sample_prior(jax.random.key(0), 1)[0])
    state, positions, info = sgmcmc.run_chunk(
        jax.random.key(1),
        state,
        x,
        y,
        log_target=make_log_target(post, 64),
        config=cfg,
        num_groups=cfg.num_iterations // cfg.thin,
    )
    draws = np.asarray(positions)[np.asarray(info.keep)]
    assert len(draws) == sgmcmc.kept_draws(cfg) == 1000
    preds = np.asarray(jax.vmap(lambda t: post.apply(t, jnp.asarray(probe))[:, 0])(draws))
    np.testing.assert_allclose(preds.mean(0), exact["mean"], atol=0.05)
    np.testing.assert_allclose(preds.std(0), exact["std"], rtol=0.35)


def test_cyclical_step_size_and_kept_steps():
    cfg = sg_config(num_iterations=40, step_schedule="cyclical", num_cycles=2, burn_in=0, thin=2)
    steps = jnp.arange(40)
    h = np.asarray(jax.vmap(lambda s: sgmcmc.step_size_at(s, cfg))(steps))
    assert h[0] == pytest.approx(2e-4) and h[20] == pytest.approx(2e-4)  # each cycle restarts
    assert h[19] < 0.01 * 2e-4 and np.all(np.diff(h[:20]) < 0)
    kept = np.flatnonzero(np.asarray(sgmcmc.is_kept(steps, cfg)))
    assert kept.tolist() == [11, 13, 15, 17, 19, 31, 33, 35, 37, 39]  # second halves, thinned
    assert sgmcmc.kept_draws(cfg) == 10
    constant = sg_config(num_iterations=40, burn_in=10, thin=5)
    assert np.flatnonzero(np.asarray(sgmcmc.is_kept(steps, constant))).tolist() == [
        14,
        19,
        24,
        29,
        34,
        39,
    ]


def test_check_configs():
    with pytest.raises(ValueError, match="sgmcmc.algorithm"):
        sgmcmc.check_config(sg_config(algorithm="sgnht"))
    with pytest.raises(ValueError, match="multiple of sgmcmc.thin"):
        sgmcmc.check_config(sg_config(thin=7))
    with pytest.raises(ValueError, match="ensemble.num_members"):
        ensemble.check_config(ens_config(num_members=0))
    assert ensemble.num_steps(ens_config(num_epochs=3, batch_size=20), 64) == 9
