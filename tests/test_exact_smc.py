"""The exact SMC sampler (inference/smc/exact.py, moves.py) against exact answers.

Bayesian linear regression with known noise has a closed-form posterior and marginal likelihood;
a two-component Gaussian mixture has known mode masses and normaliser. The settings are chosen so
that the answers need the weights: few MH steps per iteration and few iterations (a run with the
reweighting zeroed misses the sds by 10-35% and log Z by ~5 nats), and the MH kernel is checked
for invariance at a step size where the unadjusted leapfrog is visibly biased.
"""

from __future__ import annotations

import functools

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnn_bench.inference.smc import exact, moves
from bnn_bench.inference.smc.schedules import SchedulePlan

D, N, NOISE, PRIOR = 3, 100, 0.5, 1.0


def _blr():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D)).astype(np.float32)
    y = (x @ rng.normal(size=D) + NOISE * rng.normal(size=N)).astype(np.float32)
    cov = np.linalg.inv(x.T @ x / NOISE**2 + np.eye(D) / PRIOR**2)
    mean = cov @ x.T @ y / NOISE**2
    marginal = NOISE**2 * np.eye(N) + PRIOR**2 * x @ x.T
    log_z = -0.5 * (
        y @ np.linalg.solve(marginal, y) + np.linalg.slogdet(marginal)[1] + N * np.log(2 * np.pi)
    )
    return x, y, mean, np.sqrt(np.diag(cov)), log_z


X, Y, POST_MEAN, POST_SD, LOG_Z = _blr()


def blr_log_prior(theta):
    return -0.5 * jnp.sum(theta**2) / PRIOR**2 - 0.5 * D * jnp.log(2 * jnp.pi * PRIOR**2)


def blr_log_likelihood(theta, x, y):
    return -0.5 * ((y - x @ theta) / NOISE) ** 2 - jnp.log(NOISE) - 0.5 * jnp.log(2 * jnp.pi)


def config(num_mcmc_steps=2, num_steps=3, adapt=True, threshold=0.5):
    move = moves.MoveSettings(num_steps, num_mcmc_steps, adapt, 0.65, 1.0, "identity")
    return exact.ExactConfig(move, threshold, "systematic")


C = 25
PLANS = {
    "ctr": exact.PathPlan("nested", N, 200, sizes=(C, C, C, N, N)),
    "tempered": exact.PathPlan("tempered", N, 200),
    "automated": exact.PathPlan("nested", N, 200, automated=True, growth=2.0, first_size=C),
}


def automated_log_likelihood(theta, x, y):
    """Used by the automated runs only: their compilations can be counted (new cache entries)."""
    return blr_log_likelihood(theta, x, y)


@functools.cache
def blr_run(name, seed):
    """One run per (path, seed), shared by the tests (compiling a step takes seconds)."""
    ll = automated_log_likelihood if name == "automated" else blr_log_likelihood
    before = exact.step._cache_size()
    state, records, counts = run_blr(PLANS[name], seed, log_likelihood=ll)
    return state, records, counts, exact.step._cache_size() - before


def run_blr(plan, seed, *, num_particles=2000, cfg=None, log_likelihood=blr_log_likelihood):
    move = cfg.move if cfg else None
    state = exact.init(jax.random.key(seed), jnp.full(D, PRIOR), num_particles, 0.1, plan, move)
    records = []
    state, status, counts = exact.run(
        jax.random.key(100 + seed),
        state,
        jnp.asarray(X),
        jnp.asarray(Y),
        log_prior=blr_log_prior,
        log_likelihood=log_likelihood,
        plan=plan,
        config=cfg or config(),
        bucket_sizes=exact.buckets(N, C),
        num_particles=num_particles,
        callback=lambda record, _: records.append(record),
    )
    assert status == "finished"
    return state, records, counts


def weighted_moments(state):
    w = np.asarray(jax.nn.softmax(state.log_weights))
    p = np.asarray(state.particles)
    mean = w @ p
    return mean, np.sqrt(w @ (p - mean) ** 2)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ctr", "tempered", "automated"])
def test_linear_regression_posterior_and_evidence(name):
    for seed in range(2):
        state, records, _, _ = blr_run(name, seed)
        mean, sd = weighted_moments(state)
        assert np.all(np.abs(mean - POST_MEAN) < 0.1 * POST_SD), (mean, POST_MEAN)
        assert np.all(np.abs(sd / POST_SD - 1) < 0.1), sd / POST_SD
        assert abs(float(state.log_evidence) - LOG_Z) < 0.5, (float(state.log_evidence), LOG_Z)
        assert exact.final_target(state, N) == "posterior"
        assert len(records) <= 20  # few iterations of 2 MH steps each: the weights do the work


SIGNAL_PLANS = {
    "sda": exact.PathPlan(
        "nested", N, 200, schedule=SchedulePlan("sda", N, 40, C, window=2, entropy_tol=0.02)
    ),
    "ctr_adaptive": exact.PathPlan(
        "nested",
        N,
        200,
        schedule=SchedulePlan("ctr_adaptive", N, 12, C, window=2, refine_iterations=3),
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sda", "ctr_adaptive"])
def test_signal_schedules_under_nested_reach_the_posterior_and_its_evidence(name):
    """sda and ctr_adaptive choose the next subset from the moved cloud (entropy settled;
    per-row log-likelihood plateaued) after every completed target, bridges in between."""
    plan = SIGNAL_PLANS[name]
    for seed in range(2):
        state, records, _ = run_blr(plan, seed)
        mean, sd = weighted_moments(state)
        assert np.all(np.abs(mean - POST_MEAN) < 0.1 * POST_SD), (mean, POST_MEAN)
        assert np.all(np.abs(sd / POST_SD - 1) < 0.1), sd / POST_SD
        assert abs(float(state.log_evidence) - LOG_Z) < 0.5, (float(state.log_evidence), LOG_Z)
        assert exact.final_target(state, N) == "posterior" and exact.path_finished(state, plan)
        sizes = [r["batch_size"] for r in records]
        assert sizes == sorted(sizes) and sizes[0] == C and sizes[-1] == N
        done = [r["batch_size"] for r in records if r["lambda"] == 1.0]  # completed targets
        if name == "sda":  # w + 1 = 3 completed targets at a size before it grows or stops
            assert set(sizes) == {25, 50, 100}
            assert all(done.count(m) >= 3 for m in (25, 50, 100)), done
        else:  # C until the signal (4 completions at least: two windows), then R = 3 at N
            assert set(sizes) == {25, 100}
            assert done.count(25) >= 4 and done.count(100) == 3, done


@pytest.mark.slow
def test_bridges_end_at_lambda_one_exactly_and_subsets_are_growing_prefixes():
    for name in ("ctr", "automated"):
        state, records, counts, _ = blr_run(name, 0)
        bridged = [r for r in records if r["bridged"]]
        assert bridged, "the jumps must have needed a bridge for this test to say anything"
        assert counts["n_bridge"] == len(bridged)
        sizes = [r["batch_size"] for r in records]
        assert sizes == sorted(sizes) and sizes[-1] == N  # never shrink, end at all rows
        for prev, r in zip(records, records[1:], strict=False):
            if prev["bridged"] and r["batch_size"] == prev["batch_size"]:
                assert r["lambda"] > prev["lambda"]  # a bridge makes progress
        for i, r in enumerate(records):
            if r["bridged"]:
                assert 0 < r["lambda"] < 1
                # the bridge continues until an iteration on the same rows ends it at exactly 1
                end = next(q for q in records[i:] if not q["bridged"])
                assert end["batch_size"] == r["batch_size"] and end["lambda"] == 1.0
        assert float(state.lam) == 1.0 and int(state.m_to) == N


def test_the_target_is_the_unscaled_posterior_of_a_prefix():
    theta = jnp.asarray([0.3, -0.2, 0.5])
    w = exact.row_weights(64, 20, 50, 0.25)
    got = exact.weighted_log_likelihood(blr_log_likelihood, theta, X[:64], Y[:64], w)
    ll = np.asarray(blr_log_likelihood(theta, X[:64], Y[:64]))
    np.testing.assert_allclose(float(got), ll[:20].sum() + 0.25 * ll[20:50].sum(), rtol=1e-5)
    # rows of weight 0 add nothing even where the likelihood is not finite
    w0 = exact.row_weights(4, 2, 2, 1.0)
    bad = lambda th, x, y: jnp.asarray([1.0, 2.0, jnp.nan, -jnp.inf])
    assert float(exact.weighted_log_likelihood(bad, theta, None, None, w0)) == 3.0


@pytest.mark.slow
def test_compile_count_is_bounded_by_the_buckets():
    _, records, _, compiles = blr_run("automated", 0)  # the first automated run compiles
    assert compiles <= np.log2(N / C) + 2
    assert compiles == len(exact.buckets(N, C))  # automated went through every bucket
    assert len({r["batch_size"] for r in records}) >= 3  # it grew in several steps


@pytest.mark.slow
def test_tempered_agrees_with_blackjax_adaptive_tempered_smc():
    """Same target, kernel settings and ESS target: similar temperature counts and answers."""
    num_particles, h, steps, mcmc = 1000, 0.1, 3, 2  # h: run_blr's initial step size
    plan = exact.PathPlan("tempered", N, 200)
    ours, records, _ = run_blr(plan, 3, num_particles=num_particles, cfg=config(mcmc, steps, False))

    def loglik(theta):
        return jnp.sum(blr_log_likelihood(theta, jnp.asarray(X), jnp.asarray(Y)))

    theirs = blackjax.adaptive_tempered_smc(
        blr_log_prior,
        loglik,
        blackjax.hmc.build_kernel(),
        blackjax.hmc.init,
        blackjax.smc.extend_params(
            {"step_size": h, "inverse_mass_matrix": jnp.ones(D), "num_integration_steps": steps}
        ),
        blackjax.smc.resampling.systematic,
        0.5,
        num_mcmc_steps=mcmc,
    )
    state = theirs.init(jax.random.normal(jax.random.key(7), (num_particles, D)) * PRIOR)
    step = jax.jit(theirs.step)
    log_z, temperatures, key = 0.0, 0, jax.random.key(8)
    while float(state.tempering_param) < 1.0:
        key, sub = jax.random.split(key)
        state, info = step(sub, state)
        log_z += float(info.log_likelihood_increment)
        temperatures += 1
    # blackjax solves for the next temperature on the particles before resampling and moving
    # (ours after), so the counts differ a little
    assert 0.6 < len(records) / temperatures < 1.6, (len(records), temperatures)
    assert abs(log_z - LOG_Z) < 0.5 and abs(float(ours.log_evidence) - LOG_Z) < 0.5
    w = np.asarray(state.weights)
    their_mean = w @ np.asarray(state.particles)
    our_mean, _ = weighted_moments(ours)
    assert np.all(np.abs(their_mean - our_mean) < 0.2 * POST_SD)


# -- a bimodal target with a known normaliser ---------------------------------------------------

MIX_LOG_Z, MIX_W, MIX_MU, MIX_SD, MIX_PRIOR = 2.0, 0.3, (-2.0, 3.0), (0.5, 0.7), 4.0


def mix_log_prior(theta):
    return jax.scipy.stats.norm.logpdf(theta[0], 0.0, MIX_PRIOR)


def mix_log_likelihood(theta, x, y):
    """log f(theta) - log prior(theta) as one 'row': tempering it walks prior -> f / Z."""
    a = jnp.log(MIX_W) + jax.scipy.stats.norm.logpdf(theta[0], MIX_MU[0], MIX_SD[0])
    b = jnp.log(1 - MIX_W) + jax.scipy.stats.norm.logpdf(theta[0], MIX_MU[1], MIX_SD[1])
    return (MIX_LOG_Z + jnp.logaddexp(a, b) - mix_log_prior(theta))[None]


def test_gaussian_mixture_mode_masses_and_normaliser():
    plan = exact.PathPlan("tempered", 1, 100)
    one = jnp.zeros((1, 1))
    for seed in range(2):
        state = exact.init(jax.random.key(seed), jnp.full(1, MIX_PRIOR), 1000, 0.5)
        state, status, _ = exact.run(
            jax.random.key(50 + seed),
            state,
            one,
            one[:, 0],
            log_prior=mix_log_prior,
            log_likelihood=mix_log_likelihood,
            plan=plan,
            config=config(2, 3),
            bucket_sizes=(1,),
            num_particles=1000,
        )
        assert status == "finished"
        w = np.asarray(jax.nn.softmax(state.log_weights))
        left = float(w @ (np.asarray(state.particles)[:, 0] < 0.5))
        assert abs(left - MIX_W) < 0.05, left
        assert abs(float(state.log_evidence) - MIX_LOG_Z) < 0.3, float(state.log_evidence)


# -- the MH kernel ------------------------------------------------------------------------------


def test_mh_moves_leave_a_gaussian_invariant():
    """Exact draws of N(m, diag(s^2)) stay distributed so after many moves at a step size where
    the unadjusted leapfrog inflates the variance by ~40%."""
    m, s = jnp.asarray([1.0, -2.0]), jnp.asarray([1.0, 0.5])

    def logdensity(theta):
        return -0.5 * jnp.sum(((theta - m) / s) ** 2)

    settings = moves.MoveSettings(3, 50, False, 0.65, 1.0, "identity")
    start = m + s * jax.random.normal(jax.random.key(0), (4000, 2))
    moved, info = jax.jit(
        lambda k, p: moves.mh_moves(k, p, logdensity, jnp.asarray(0.8), settings)
    )(jax.random.key(1), start)
    moved = np.asarray(moved)
    assert 0.3 < float(jnp.mean(info.accept)) < 0.95
    np.testing.assert_allclose(moved.mean(0), m, atol=0.05)
    np.testing.assert_allclose(moved.std(0), s, rtol=0.05)
    # the moves do move: the chain forgets its start
    assert abs(np.corrcoef(moved[:, 0], np.asarray(start)[:, 0])[0, 1]) < 0.2


def test_the_unrolled_hmc_step_is_blackjaxs_kernel():
    """moves.hmc_step (the CNN-on-CPU path) against blackjax's HMC kernel, same keys: the same
    proposal, acceptance, divergence and next state, on a correlated Gaussian at step sizes
    from mostly accepted to divergent."""
    from blackjax.mcmc import hmc

    cov = jnp.asarray([[1.0, 0.8, 0.0], [0.8, 1.0, 0.3], [0.0, 0.3, 0.5]])
    precision = jnp.linalg.inv(cov)

    def logdensity(theta):
        return -0.5 * theta @ precision @ theta

    kernel = hmc.build_kernel()
    inverse_mass = jnp.asarray([1.0, 0.5, 2.0])
    accepted = set()
    for seed, h in [(0, 0.1), (1, 0.5), (2, 1.2), (3, 3.0), (4, 0.9), (5, 60.0)]:
        key = jax.random.key(seed)
        state = hmc.init(jax.random.normal(jax.random.fold_in(key, 7), (3,)), logdensity)
        ref, info = kernel(key, state, logdensity, h, inverse_mass, 4)
        new, p_accept, divergent, proposal = moves.hmc_step(
            key, state, logdensity, h, inverse_mass, 4
        )
        for a, b in zip(new, ref, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(p_accept, info.acceptance_rate, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(proposal.position, info.proposal.position, rtol=1e-5)
        np.testing.assert_allclose(proposal.momentum, info.proposal.momentum, rtol=1e-5)
        assert bool(divergent) == bool(info.is_divergent)
        accepted.add(bool(info.is_accepted))
    assert accepted == {True, False}  # both branches of the accept step were compared


def test_unrolled_moves_are_the_vmapped_blackjax_moves():
    """mh_moves with particle_map=unroll (hmc_step, unrolled) and vmap (blackjax's kernel in a
    scan) move every particle to the same place with the same keys."""
    m, s = jnp.asarray([1.0, -2.0]), jnp.asarray([1.0, 0.5])

    def logdensity(theta):
        return -0.5 * jnp.sum(((theta - m) / s) ** 2)

    settings = moves.MoveSettings(3, 4, False, 0.65, 1.0, "identity")
    start = m + s * jax.random.normal(jax.random.key(0), (6, 2))
    out = {
        mapping: moves.mh_moves(
            jax.random.key(1), start, logdensity, jnp.asarray(0.9), settings, particle_map=mapping
        )
        for mapping in ("vmap", "unroll")
    }
    np.testing.assert_allclose(out["unroll"][0], out["vmap"][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(out["unroll"][1][:3], out["vmap"][1][:3], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(out["unroll"][0], start)  # they moved


def test_unrolled_moves_have_no_loop_or_conditional_in_their_graph():
    """Under particle_map=unroll the network's gradients must not sit in a loop or a conditional
    (XLA's CPU convolutions ran a CNN's moves 6x slower there: docs/performance.md)."""

    def primitives(jaxpr):  # every primitive, inside nested jaxprs (pjit, custom_vjp) too
        names = set()
        for eqn in jaxpr.eqns:
            names.add(eqn.primitive.name)
            for value in eqn.params.values():
                for sub in value if isinstance(value, tuple | list) else (value,):
                    sub = getattr(sub, "jaxpr", sub)
                    if hasattr(sub, "eqns"):
                        names |= primitives(sub)
        return names

    settings = moves.MoveSettings(3, 2, False, 0.65, 1.0, "identity")

    def logdensity(theta):
        return -0.5 * jnp.sum(theta**2)

    def graph(mapping):
        return jax.make_jaxpr(
            lambda k, p: moves.mh_moves(k, p, logdensity, 0.1, settings, particle_map=mapping)
        )(jax.random.key(0), jnp.ones((3, 2)))

    assert not primitives(graph("unroll").jaxpr) & {"scan", "while", "cond"}
    assert primitives(graph("vmap").jaxpr) & {"scan", "while"}  # blackjax's kernel: loops


def _small_prior_run(max_retries, seed, num_particles=8):
    """Tempered SMC on a 100-d Gaussian whose prior sd (0.05) is a tenth of the first step size:
    the regime of a network's fan-in prior, where the first moves accept nothing."""
    dim, n, s0, sig = 100, 20, 0.05, 0.2
    rng = np.random.default_rng(0)
    data = (rng.normal(size=dim) * s0 + sig * rng.normal(size=(n, dim))).astype(np.float32)
    precision = 1 / s0**2 + n / sig**2
    post_mean, post_sd = data.sum(0) / sig**2 / precision, 1 / np.sqrt(precision)

    def log_prior(theta):
        return -0.5 * jnp.sum(theta**2) / s0**2

    def log_likelihood(theta, x, y):
        return -0.5 * jnp.sum((x - theta) ** 2, axis=1) / sig**2

    move = moves.MoveSettings(3, 2, True, 0.65, 1.0, "identity", 0.2, max_retries)
    state = exact.init(jax.random.key(seed), jnp.full(dim, s0), num_particles, 0.5)
    records = []
    state, status, _ = exact.run(
        jax.random.key(100 + seed),
        state,
        jnp.asarray(data),
        jnp.asarray(data),
        log_prior=log_prior,
        log_likelihood=log_likelihood,
        plan=exact.PathPlan("tempered", n, 200),
        config=exact.ExactConfig(move, 0.5, "systematic"),
        bucket_sizes=(n,),
        num_particles=num_particles,
        callback=lambda record, _: records.append(record),
    )
    assert status == "finished"
    mean, sd = weighted_moments(state)
    return np.mean(np.abs(mean - post_mean) / post_sd), np.mean(sd / post_sd), records


@pytest.mark.slow
def test_moves_that_accept_nothing_are_retried_at_a_smaller_step():
    """A step size 10x the prior sd: without retries the first two moves accept nothing, the
    resampled copies stay copies, the weight ESS cannot see it and lambda jumps to 1 with 2-4
    distinct particles of 8 (the FashionMNIST CNN's failure, docs/results/exact-smc.md). With
    them every iteration leaves at least half the particles distinct and the cloud's moments
    are those of 8 draws of the posterior."""
    for seed in range(3):
        err, sd_ratio, records = _small_prior_run(5, seed)
        assert records[0]["move_rounds"] > 1  # the first round was too coarse and was retried
        assert min(r["distinct_particles"] for r in records) >= 4, records
        assert err < 0.6 and 0.7 < sd_ratio < 1.2, (seed, err, sd_ratio)
    # the failure this protects against
    failed = [_small_prior_run(0, seed) for seed in range(3)]
    assert all(min(r["distinct_particles"] for r in rec) <= 4 for _, _, rec in failed)
    assert max(err for err, _, _ in failed) > 1.0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ctr", "tempered"])
def test_chees_moves_keep_the_posterior_and_adapt_the_trajectory_length(name):
    """proposal=chees on the exact sampler: MH steps of a jittered number of leapfrog steps,
    T adapted between iterations by blackjax's ChEES update; the answers stay exact."""
    move = moves.MoveSettings(3, 2, True, 0.65, 1.0, "identity", 0.2, 5, chees=True, max_steps=10)
    plan = PLANS[name]
    start = exact.init(jax.random.key(0), jnp.full(D, PRIOR), 2000, 0.1, plan, move)
    assert float(start.chees.trajectory_length) == pytest.approx(0.3)  # S h
    for seed in range(2):
        cfg = exact.ExactConfig(move, 0.5, "systematic")
        state, records, _ = run_blr(plan, seed, cfg=cfg)
        mean, sd = weighted_moments(state)
        assert np.all(np.abs(mean - POST_MEAN) < 0.1 * POST_SD), (mean, POST_MEAN)
        assert np.all(np.abs(sd / POST_SD - 1) < 0.1), sd / POST_SD
        assert abs(float(state.log_evidence) - LOG_Z) < 0.5
        assert float(state.chees.trajectory_length) > 0.45  # T grew from 0.3 on this target
        steps = [r["leapfrog_steps"] for r in records]
        assert len(set(steps)) > 3 and max(steps) <= 10, steps  # jittered, capped


def test_chunked_rows_give_the_whole_rows_value_gradient_and_row_terms():
    x, y = jnp.asarray(X), jnp.asarray(Y)
    wts = exact.row_weights(N, 40, 90, 0.3)
    theta = jnp.asarray([0.3, -1.0, 2.0])
    whole = jax.value_and_grad(exact.log_density(blr_log_prior, blr_log_likelihood, x, y, wts))
    for chunk in (7, 33, 99):
        f = exact.log_density(blr_log_prior, blr_log_likelihood, x, y, wts, chunk)
        (v0, g0), (v1, g1) = whole(theta), jax.jit(jax.value_and_grad(f))(theta)
        assert float(v1) == pytest.approx(float(v0), rel=1e-6)
        np.testing.assert_allclose(np.asarray(g1), np.asarray(g0), rtol=1e-5)
    cloud = jax.random.normal(jax.random.key(0), (5, D))
    rows = exact.row_log_likelihoods(blr_log_likelihood, cloud, x, y)
    np.testing.assert_allclose(
        np.asarray(exact.row_log_likelihoods(blr_log_likelihood, cloud, x, y, 7)),
        np.asarray(rows),
        rtol=1e-6,
    )


def test_distinct_particles_counts_exact_copies_once():
    p = jax.random.normal(jax.random.key(0), (5, 7))
    cloud = p[jnp.asarray([0, 0, 1, 2, 2, 2, 4, 3])]
    assert int(exact.distinct_particles(cloud)) == 5
    assert int(exact.distinct_particles(cloud[:1].repeat(6, axis=0))) == 1
    assert int(exact.distinct_particles(cloud.at[1, 3].add(1e-6))) == 6


def test_step_size_follows_the_acceptance():
    settings = moves.MoveSettings(3, 1, True, 0.65, 1.0, "identity")
    h = jnp.asarray(0.1)
    assert float(moves.next_step_size(h, jnp.asarray(0.9), settings)) > 0.1
    assert float(moves.next_step_size(h, jnp.asarray(0.2), settings)) < 0.1
    fixed = settings._replace(adapt_step_size=False)
    assert float(moves.next_step_size(h, jnp.asarray(0.2), fixed)) == pytest.approx(0.1)


@pytest.mark.slow
def test_a_stopped_run_resumed_from_its_state_ends_where_the_whole_run_does():
    state, records, counts, _ = blr_run("ctr", 0)
    start = exact.init(jax.random.key(0), jnp.full(D, PRIOR), 2000, 0.1)
    common = dict(
        log_prior=blr_log_prior,
        log_likelihood=blr_log_likelihood,
        plan=PLANS["ctr"],
        config=config(),
        bucket_sizes=exact.buckets(N, C),
        num_particles=2000,
        sync_every=1,
    )
    half, status, part = exact.run(
        jax.random.key(100),
        start,
        jnp.asarray(X),
        jnp.asarray(Y),
        callback=lambda r, _: r["iter"] >= 5,
        **common,
    )
    assert status == "stopped" and int(half.iteration) == 5
    rest, status, total = exact.run(
        jax.random.key(100), half, jnp.asarray(X), jnp.asarray(Y), counts=part, **common
    )
    assert status == "finished" and total == counts
    # equal up to float summation order: syncing every step lets the host pick tighter buckets
    np.testing.assert_allclose(np.asarray(rest.particles), np.asarray(state.particles), atol=1e-5)
    assert float(rest.log_evidence) == pytest.approx(float(state.log_evidence), abs=1e-3)


def _posterior_cloud(seed, num_particles):
    """Exact posterior draws of the regression as a finished exact-SMC state (lam = 1, all rows)."""
    rng = np.random.default_rng(seed)
    cov = np.linalg.inv(X.T @ X / NOISE**2 + np.eye(D) / PRIOR**2)
    draws = rng.multivariate_normal(POST_MEAN, cov, size=num_particles).astype(np.float32)
    # h near the posterior's scale (sd ~ 0.05), as the path's adaptation leaves it
    state = exact.init(jax.random.key(seed), jnp.full(D, PRIOR), num_particles, 0.03)
    n = jnp.asarray(N, jnp.int32)
    return state._replace(particles=jnp.asarray(draws), m_from=n, m_to=n, done=jnp.asarray(True))


def _pooled_mean(state, sweeps, seed):
    clouds = [state.particles]
    for s in range(sweeps):
        state, info = exact.final_sweep(
            jax.random.key(seed),
            state,
            jnp.asarray(X),
            jnp.asarray(Y),
            jnp.asarray(s, jnp.uint32),
            log_prior=blr_log_prior,
            log_likelihood=blr_log_likelihood,
            config=config(num_mcmc_steps=2, num_steps=3),
        )
        assert float(info.accept) > 0.3
        clouds.append(state.particles)
    pooled = np.concatenate([np.asarray(c) for c in clouds])
    return pooled, state


def test_final_sweeps_keep_the_posterior_and_add_draws():
    """smc.final_sweeps: every sweep's cloud is another sample of the posterior (pooled moments
    match the closed form), the weights are untouched, and pooling the clouds of 8 sweeps gives a
    mean estimate with a smaller error than the last cloud alone. A sweep that did not move the
    particles (or moved them off the target) fails the error (or the moment) check."""
    num, sweeps = 32, 8
    err_single, err_pooled, sds = [], [], []
    for seed in range(12):
        start = _posterior_cloud(seed, num)
        pooled, end = _pooled_mean(start, sweeps, seed)
        assert np.array_equal(np.asarray(end.log_weights), np.asarray(start.log_weights))
        err_single.append(np.sum(((pooled[-num:].mean(0) - POST_MEAN) / POST_SD) ** 2))
        err_pooled.append(np.sum(((pooled.mean(0) - POST_MEAN) / POST_SD) ** 2))
        sds.append(pooled.std(0) / POST_SD)
    assert np.all(np.abs(np.mean(sds, axis=0) - 1) < 0.1), np.mean(sds, axis=0)
    assert np.mean(err_pooled) < 0.5 * np.mean(err_single), (
        np.mean(err_pooled),
        np.mean(err_single),
    )
