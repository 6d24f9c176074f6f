"""The NUTS/HMC reference sampler (inference/hmc.py) on targets with known moments."""

import blackjax.diagnostics
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnn_bench.inference import hmc

MEAN = jnp.array([1.0, -2.0, 0.5])
STD = jnp.array([1.0, 0.3, 3.0])


def log_density(theta):
    return -0.5 * jnp.sum(((theta - MEAN) / STD) ** 2)


def config(**changes):
    base = dict(
        algorithm="nuts",
        num_chains=4,
        num_warmup=300,
        num_samples=400,
        thin=2,
        target_accept=0.8,
        max_tree_depth=8,
        num_integration_steps=5,  # 8 resonates on this Gaussian (ESS 16 of 800)
        init="prior",
        init_steps=0,
        init_learning_rate=0.05,
    )
    base.update(changes)
    return hmc.HMCConfig(**base)


def sample(cfg, seed=0, chunk=50):
    pos = hmc.initial_positions(jax.random.key(seed), jnp.ones(3) * 3, log_density, cfg)
    chains, warm = hmc.warmup(jax.random.key(seed + 1), log_density, pos, cfg)
    kept, infos = [], []

    def callback(done, ch, draws, info):
        kept.append(np.asarray(draws))
        infos.append(jax.device_get(info))

    chains, done, status = hmc.run_sampling(
        jax.random.key(seed + 2),
        chains,
        log_density=log_density,
        observe=lambda t: t,
        config=cfg,
        chunk_kept=chunk,
        callback=callback,
    )
    assert status == "finished" and done == cfg.num_samples // cfg.thin
    return chains, np.concatenate(kept), infos, warm


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["nuts", "hmc"])
def test_recovers_gaussian_moments(algorithm):
    cfg = config(algorithm=algorithm)
    chains, draws, infos, warm = sample(cfg)
    assert draws.shape == (200, 4, 3)  # (kept, chains, D)
    flat = draws.reshape(-1, 3)
    ess = np.asarray(blackjax.diagnostics.effective_sample_size(draws.transpose(1, 0, 2)))
    assert np.all(np.abs(flat.mean(0) - MEAN) < 4 * STD / np.sqrt(ess))  # 4 Monte Carlo s.e.
    np.testing.assert_allclose(flat.std(0), STD, rtol=0.2)
    # the adapted diagonal inverse mass matrix tracks the variances
    np.testing.assert_allclose(np.asarray(chains.inverse_mass_matrix).mean(0), STD**2, rtol=0.5)
    diag = hmc.diagnostics(draws.transpose(1, 0, 2))
    assert diag["rhat_max"] < 1.05 and diag["ess_min"] > 100
    stats = hmc.summarise(jax.tree.map(lambda *a: sum(a), *infos), cfg.num_samples)
    assert stats["divergences"] == 0 and stats["accept_mean"] > 0.6
    if algorithm == "hmc":
        assert stats["integration_steps_mean"] == 5 and stats["tree_depth_mean"] == 0
    else:
        assert stats["tree_depth_mean"] >= 1


def test_map_starts_reach_the_mode():
    cfg = config(init="map", init_steps=1000)
    pos = hmc.initial_positions(jax.random.key(0), jnp.ones(3) * 3, log_density, cfg)
    np.testing.assert_allclose(np.asarray(pos), np.broadcast_to(MEAN, (4, 3)), atol=1e-2)
    prior = hmc.initial_positions(jax.random.key(0), jnp.ones(3) * 3, log_density, config())
    assert np.max(np.abs(np.asarray(prior) - MEAN)) > 0.5  # prior draws are not at the mode


def test_diagnostics_flag_chains_that_disagree():
    rng = np.random.default_rng(0)
    mixed = rng.normal(size=(4, 200, 5))
    assert hmc.diagnostics(mixed)["rhat_max"] < 1.05
    stuck = mixed + np.arange(4)[:, None, None]  # each chain in its own place
    assert hmc.diagnostics(stuck)["rhat_max"] > 1.5
    with_constant = np.concatenate([mixed, np.zeros((4, 200, 1))], axis=2)
    assert hmc.diagnostics(with_constant)["num_diagnosed"] == 5  # the constant column skipped


def test_resumed_sampling_continues_exactly():
    cfg = config(num_warmup=50, num_samples=40, thin=2)
    pos = hmc.initial_positions(jax.random.key(0), jnp.ones(3), log_density, cfg)
    chains, _ = hmc.warmup(jax.random.key(1), log_density, pos, cfg)
    run = dict(log_density=log_density, observe=lambda t: t, config=cfg, chunk_kept=5)
    whole = []
    hmc.run_sampling(jax.random.key(2), chains, callback=lambda *a: whole.append(a[2]), **run)
    first = []
    stopped, done, status = hmc.run_sampling(
        jax.random.key(2), chains, callback=lambda *a: first.append(a[2]) or True, **run
    )
    assert status == "stopped" and done == 5
    rest = []
    hmc.run_sampling(
        jax.random.key(2),
        stopped,
        start_kept=done,
        callback=lambda *a: rest.append(a[2]),
        **run,
    )
    np.testing.assert_array_equal(np.concatenate(whole), np.concatenate(first + rest))


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"algorithm": "mala"}, "hmc.algorithm"),
        ({"init": "zeros"}, "hmc.init"),
        ({"num_chains": 1}, "hmc.num_chains"),
        ({"num_samples": 3, "thin": 2}, "hmc.num_samples"),
        ({"num_warmup": 0}, "hmc.num_warmup"),
    ],
)
def test_check_config(changes, match):
    with pytest.raises(ValueError, match=match):
        hmc.check_config(config(**changes))
