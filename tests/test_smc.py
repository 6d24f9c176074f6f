"""The SMC sampler against exact answers: conjugate Bayesian linear regression, ESS, resampling."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnn_bench.inference.smc import loop, sampler, schedules
from bnn_bench.inference.smc.proposals import Proposal, leapfrog_move
from bnn_bench.inference.smc.schedules import SchedulePlan
from bnn_bench.models import build_model
from bnn_bench.posterior import make_log_target, make_posterior


def linear_regression(n=300, d=5, noise=0.5, seed=0):
    """Data with an intercept and the closed-form posterior under a N(0, I) prior on [b, w]."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x @ rng.normal(size=d) + 0.3 + noise * rng.normal(size=n)).astype(np.float32)
    phi = np.concatenate([np.ones((n, 1)), x], axis=1)  # ravel order: bias, then kernel
    cov = np.linalg.inv(phi.T @ phi / noise**2 + np.eye(d + 1))
    mean = cov @ phi.T @ y / noise**2
    return x, y, mean, np.sqrt(np.diag(cov))


def blr_posterior(x, noise=0.5):
    model = build_model("linear", 1)
    return make_posterior(model, jnp.asarray(x), likelihood="gaussian", noise_std=noise)


def full_plan(n, k):
    return SchedulePlan("full", num_data=n, num_iterations=k, batch_size=n)


def run_sampler(post, x, y, plan, *, config, num_particles, seed=0, bucket_sizes=None, **kw):
    """(final SMCState, status) of a run of `plan` (fixed schedules: a stateless schedule)."""
    n = len(x)
    state = sampler.init(jax.random.key(seed), post.prior_std, post.log_prior, num_particles)
    run_state, status, _ = loop.run(
        jax.random.key(seed + 1),
        sampler.init_run(state, plan, config.proposal),
        jnp.asarray(x),
        jnp.asarray(y),
        log_target=make_log_target(post, n),
        config=config,
        plan=plan,
        bucket_sizes=bucket_sizes or (n,),
        **kw,
    )
    return run_state.smc, status


def one_step(key, state, x, y, batch_size, *, log_target, config, bucket):
    """One iteration of a constant schedule of `batch_size` rows from an SMCState."""
    plan = SchedulePlan("constant", num_data=x.shape[0], num_iterations=1, batch_size=batch_size)
    run_state = sampler.init_run(state, plan, config.proposal)
    new, info = sampler.step(
        key, run_state, x, y, log_target=log_target, config=config, plan=plan, bucket=bucket
    )
    return new.smc, info.smc


@pytest.mark.parametrize("weights", ["energy", "annealed"])
def test_full_batch_smc_matches_conjugate_posterior(weights):
    # J = 1024 particles, K = 200 iterations, HMC S = 3, h = 0.01 (algorithms.md: h = 0.01 is
    # exact on this problem; 0.002 has not converged in 200 iterations, 0.03 is biased).
    x, y, mean, sd = linear_regression()
    post = blr_posterior(x)
    config = sampler.SMCConfig(Proposal(num_steps=3, step_size=0.01), weights=weights)
    state, status = run_sampler(
        post, x, y, full_plan(len(x), 200), config=config, num_particles=1024
    )
    assert status == "finished"
    m, s = sampler.weighted_moments(state)
    np.testing.assert_array_less(np.abs((np.asarray(m) - mean) / sd), 0.1)
    np.testing.assert_allclose(np.asarray(s), sd, rtol=0.15)


def test_minibatch_ctr_ends_near_the_posterior():
    # Constant-to-refine: 150 minibatch iterations (C = 50 of N = 300) then 50 full-batch ones.
    x, y, mean, sd = linear_regression()
    post = blr_posterior(x)
    plan = SchedulePlan("ctr", num_data=300, num_iterations=200, batch_size=50, refine_at=0.75)
    config = sampler.SMCConfig(Proposal(3, 0.01))
    state, _ = run_sampler(
        post, x, y, plan, config=config, num_particles=512, bucket_sizes=schedules.buckets(300, 50)
    )
    m, s = sampler.weighted_moments(state)
    np.testing.assert_array_less(np.abs((np.asarray(m) - mean) / sd), 0.25)
    np.testing.assert_allclose(np.asarray(s), sd, rtol=0.25)


@pytest.mark.parametrize(
    ("log_weights", "expected"),
    [
        (np.zeros(8), 8.0),
        (np.array([0.0, -np.inf, -np.inf, -np.inf]), 1.0),
        (np.log([0.5, 0.25, 0.25]), 1 / (0.25 + 0.0625 + 0.0625)),
        (np.log([0.5, 0.25, 0.25]) + 200.0, 1 / (0.25 + 0.0625 + 0.0625)),  # exp(200) overflows
        (np.full(3, -np.inf), 0.0),
    ],
)
def test_ess_of_known_weights(log_weights, expected):
    assert float(sampler.ess(jnp.asarray(log_weights, jnp.float32))) == pytest.approx(
        expected, rel=1e-4
    )


@pytest.mark.parametrize("resampler", list(sampler.RESAMPLERS))
def test_resampling_keeps_the_weighted_mean(resampler):
    rng = np.random.default_rng(0)
    values = rng.normal(size=4000).astype(np.float32)
    weights = rng.dirichlet(np.ones(4000)).astype(np.float32)
    target = float(np.sum(weights * values**2))
    idx = sampler.RESAMPLERS[resampler](jax.random.key(3), jnp.asarray(weights), 4000)
    resampled = float(np.mean(values[np.asarray(idx)] ** 2))
    # Monte Carlo error of the resampled mean: sd(f) / sqrt(J); allow 4 of them.
    mc_error = np.sqrt(np.sum(weights * (values**2 - target) ** 2) / 4000)
    assert abs(resampled - target) < 4 * mc_error


def test_huge_step_size_drops_particles_and_reports_divergence():
    x, y, _, _ = linear_regression()
    post = blr_posterior(x)
    config = sampler.SMCConfig(Proposal(3, 50.0))
    state, status = run_sampler(post, x, y, full_plan(len(x), 5), config=config, num_particles=16)
    assert status == "diverged"
    assert np.all(np.isfinite(np.asarray(state.particles)))  # divergent moves are not kept


def test_divergent_particles_get_zero_weight():
    x, y, _, _ = linear_regression()
    post = blr_posterior(x)
    lt = make_log_target(post, len(x))
    state = sampler.init(jax.random.key(0), post.prior_std, post.log_prior, 8)
    state = state._replace(particles=state.particles.at[3].set(jnp.nan))
    config = sampler.SMCConfig(Proposal(3, 0.001), resample_threshold=0.0)
    new, info = one_step(
        jax.random.key(1),
        state,
        jnp.asarray(x),
        jnp.asarray(y),
        len(x),
        log_target=lt,
        config=config,
        bucket=len(x),
    )
    assert int(info.divergent) == 1
    assert np.isneginf(np.asarray(new.log_weights)[3])
    assert np.isfinite(np.asarray(new.log_weights)[[0, 1, 2, 4, 5, 6, 7]]).all()


def test_batch_is_drawn_without_replacement_and_masked():
    idx, mask = sampler.select_batch(jax.random.key(0), 1000, 512, jnp.asarray(300))
    assert len(set(np.asarray(idx).tolist())) == 512
    assert int(mask.sum()) == 300
    idx, mask = sampler.select_batch(jax.random.key(0), 1000, 1000, jnp.asarray(1000))
    np.testing.assert_array_equal(np.asarray(idx), np.arange(1000))


def test_minibatch_log_target_is_unbiased_for_the_full_one():
    x, y, _, _ = linear_regression(n=200)
    post = blr_posterior(x)
    lt = make_log_target(post, 200)
    theta = post.sample_prior(jax.random.key(0), 1)[0]
    full = float(lt(theta, jnp.asarray(x), jnp.asarray(y), jnp.ones(200, bool), 200))
    # Padded batch: 64 rows of which 40 are real; the expectation over batches is the full value.
    estimates = []
    for i in range(400):
        idx, mask = sampler.select_batch(jax.random.key(i), 200, 64, jnp.asarray(40))
        estimates.append(float(lt(theta, jnp.asarray(x)[idx], jnp.asarray(y)[idx], mask, 40)))
    se = np.std(estimates) / np.sqrt(len(estimates))
    assert abs(np.mean(estimates) - full) < 4 * se


@pytest.mark.parametrize(
    "particle_map, chunk", [("unroll", None), ("unroll", 3), ("vmap", 3), ("vmap", None)]
)
def test_particle_maps_give_the_same_step(particle_map, chunk):
    # The three ways of mapping the move over particles are the same computation.
    x, y, _, _ = linear_regression(n=60)
    post = blr_posterior(x)
    lt = make_log_target(post, len(x))
    state = sampler.init(jax.random.key(0), post.prior_std, post.log_prior, 8)
    args = (jax.random.key(1), state, jnp.asarray(x), jnp.asarray(y), 30)

    def step(**kw):
        config = sampler.SMCConfig(Proposal(3, 0.01), **kw)
        return one_step(*args, log_target=lt, config=config, bucket=30)

    ref, ref_info = step(particle_map="vmap", particle_chunk=1)
    got, info = step(particle_map=particle_map, particle_chunk=chunk)
    np.testing.assert_allclose(got.particles, ref.particles, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.log_weights, ref.log_weights, rtol=1e-4, atol=1e-4)
    assert float(info.ess) == pytest.approx(float(ref_info.ess), rel=1e-4)


def test_a_resumed_loop_continues_exactly():
    # Stopping at iteration 6 and resuming from the state there gives the same particles as the
    # uninterrupted 12-iteration run: iteration k's randomness depends only on (key, k).
    x, y, _, _ = linear_regression(n=80)
    post = blr_posterior(x)
    cfg = sampler.SMCConfig(Proposal(2, 0.01))
    plan = SchedulePlan("ctr", num_data=80, num_iterations=12, batch_size=20, refine_at=8 / 12)
    assert schedules.fixed_batch_sizes(plan).tolist() == [20] * 8 + [80] * 4
    common = dict(
        log_target=make_log_target(post, len(x)), config=cfg, plan=plan, bucket_sizes=(20, 80)
    )
    key = jax.random.key(1)
    args = (jnp.asarray(x), jnp.asarray(y))
    start = sampler.init_run(
        sampler.init(jax.random.key(0), post.prior_std, post.log_prior, 8), plan, cfg.proposal
    )

    full, status, counts = loop.run(key, start, *args, **common)
    assert status == "finished" and counts["iterations"] == 12

    saved, records = {}, []

    def keep(record, st):
        records.append(record)
        if st is not None:
            saved[record["iter"]] = st

    requested = iter([False] * 5 + [True])
    half, status, half_counts = loop.run(
        key, start, *args, **common, callback=keep, should_stop=lambda: next(requested)
    )
    assert status == "interrupted" and [r["iter"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert list(saved) == [6]
    elapsed = records[-1]["time_s"]
    more = []
    resumed, status, _ = loop.run(
        key,
        saved[6],
        *args,
        **common,
        callback=lambda r, s: more.append(r),
        counts=half_counts,
        elapsed=elapsed,
    )
    assert status == "finished" and [r["iter"] for r in more] == list(range(7, 13))
    sizes = schedules.fixed_batch_sizes(plan)
    assert more[-1]["example_grads"] == 8 * 3 * sum(sizes) and more[0]["time_s"] >= elapsed
    np.testing.assert_array_equal(np.asarray(resumed.smc.particles), np.asarray(full.smc.particles))
    np.testing.assert_array_equal(
        np.asarray(resumed.smc.log_weights), np.asarray(full.smc.log_weights)
    )


@pytest.mark.parametrize("num_steps", [1, 3])
def test_static_leapfrog_has_no_loop_in_its_graph(num_steps):
    # A loop (even lax.scan(unroll=True) of length 1) put the CNN's convolutions in a loop body,
    # where XLA:CPU ran the langevin step 4x slower; a static S is traced straight through.
    def value_and_grad(theta):
        return jax.value_and_grad(lambda t: -0.5 * jnp.sum(t**2))(theta)

    jaxpr = jax.make_jaxpr(
        lambda key, theta: leapfrog_move(value_and_grad, key, theta, Proposal(num_steps, 0.1))
    )(jax.random.key(0), jnp.ones(3))
    primitives = {eqn.primitive.name for eqn in jaxpr.jaxpr.eqns}
    assert not primitives & {"scan", "while"}, primitives


@pytest.mark.parametrize("terms", [False, True])
def test_data_chunked_gradient_equals_the_whole_batch(terms):
    # 37 rows (the last 5 masked out as padding) in chunks of at most 10: 4 chunks of 10, 3 padded.
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(37, 64)).astype(np.float32), rng.integers(0, 10, 37)
    post = make_posterior(build_model("mlp", 10, hidden=[16]), jnp.asarray(x))
    lt = make_log_target(post, 500, terms=terms)
    theta = post.sample_prior(jax.random.key(3), 1)[0]
    mask = jnp.arange(37) < 32
    rows = (jnp.asarray(x), jnp.asarray(y), mask)

    @partial(jax.jit, static_argnames="chunk")
    def f(theta, rows, chunk):
        batch = sampler.make_batch(*rows, chunk)
        return sampler.batch_value_and_grad(lt, theta, batch, jnp.asarray(32), has_aux=terms)

    whole = f(theta, rows, chunk=None)
    chunked = f(theta, rows, chunk=10)
    close = partial(np.testing.assert_allclose, rtol=2e-5, atol=1e-4)
    jax.tree.map(close, whole, chunked)
    if terms:
        assert chunked[0][1].shape == (37,) and np.all(np.asarray(chunked[0][1])[32:] == 0)


def test_data_chunks_bound_a_full_batch_steps_memory_in_n():
    # XLA's own buffer plan for one full-batch step: without data chunks its scratch memory grows
    # with the batch (activations of every row are alive for the backward pass); with chunks of
    # 64 rows it stays near one chunk's worth when the batch grows 4x.
    post = make_posterior(build_model("mlp", 10, hidden=[256, 256]), jnp.zeros((1, 64)))
    lt = make_log_target(post, 4096)
    state = sampler.init(jax.random.key(0), post.prior_std, post.log_prior, 4)

    def scratch_mb(n, chunk):
        x, y = jnp.zeros((n, 64)), jnp.zeros(n, jnp.int32)
        config = sampler.SMCConfig(Proposal(3, 1e-3), data_chunk=chunk)
        plan = full_plan(n, 1)
        lowered = sampler.step.lower(
            jax.random.key(1),
            sampler.init_run(state, plan, config.proposal),
            x,
            y,
            log_target=lt,
            config=config,
            plan=plan,
            bucket=n,
        )
        return lowered.compile().memory_analysis().temp_size_in_bytes / 2**20

    whole = [scratch_mb(n, None) for n in (1024, 4096)]
    chunked = [scratch_mb(n, 64) for n in (1024, 4096)]
    assert whole[1] > 3 * whole[0]  # the test would not see a difference otherwise
    assert chunked[1] < 1.3 * chunked[0] and chunked[1] < whole[1] / 4


def test_a_data_chunked_step_moves_particles_as_the_whole_batch_does():
    x, y, _, _ = linear_regression()
    post = blr_posterior(x)
    got = {}
    for chunk in (None, 64):
        config = sampler.SMCConfig(Proposal(3, 0.01), data_chunk=chunk)
        state, status = run_sampler(
            post, x, y, full_plan(len(x), 4), config=config, num_particles=8
        )
        assert status == "finished"
        got[chunk] = state
    np.testing.assert_allclose(got[64].particles, got[None].particles, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[64].log_weights, got[None].log_weights, rtol=1e-4, atol=1e-3)
