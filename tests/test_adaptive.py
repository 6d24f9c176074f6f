"""Adaptive schedules (automated, sda, ctr_adaptive) on synthetic statistics, the device-side
schedule loop (compile bound, exact iteration counts), and the tuned proposals against exact
answers (Bayesian linear regression, reusing test_smc's helpers)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_smc import blr_posterior, linear_regression

from bnn_bench.inference.smc import loop, proposals, sampler, schedules
from bnn_bench.inference.smc.proposals import Proposal
from bnn_bench.inference.smc.schedules import SchedulePlan, ScheduleStats
from bnn_bench.posterior import make_log_target


def drive(plan, stats_fn, max_iter=None):
    """Apply next_batch_size on synthetic statistics; returns the M_k sequence and the stop k."""
    state = schedules.init_state(plan)
    sizes, stop_at = [], None
    for k in range(1, (max_iter or plan.num_iterations) + 1):
        sizes.append(int(state.batch_size))
        m, state, stop = schedules.next_batch_size(plan, state, stats_fn(k))
        assert int(state.iteration) == k and int(m) == int(state.batch_size)
        if bool(stop):
            stop_at = k
            break
    return sizes, stop_at


def stats(noise=0.0, entropy=0.0, loglik=0.0):
    f = lambda v: jnp.asarray(v, jnp.float32)
    return ScheduleStats(noise=f(noise), entropy=f(entropy), log_likelihood=f(loglik))


# --- automated ---------------------------------------------------------------------------------


def test_automated_doubles_while_noisy_and_never_exceeds_n():
    plan = SchedulePlan("automated", num_data=1000, num_iterations=20, batch_size=100)
    sizes, stop_at = drive(plan, lambda k: stats(noise=5.0))
    assert sizes[:6] == [100, 200, 400, 800, 1000, 1000]
    assert max(sizes) == 1000 and stop_at == 20  # automated runs all K iterations


def test_automated_keeps_m_while_quiet_and_is_monotone():
    plan = SchedulePlan("automated", num_data=1000, num_iterations=30, batch_size=100, noise_tol=1)
    noise = lambda k: stats(noise=[0.5, 2.0, np.nan][k % 3] if k > 10 else 0.2)
    sizes, _ = drive(plan, noise)
    assert sizes[:11] == [100] * 11  # quiet: no growth
    assert all(b >= a for a, b in zip(sizes, sizes[1:], strict=False))
    assert sizes[-1] == 1000 and max(sizes) <= 1000  # NaN noise is no evidence either way


# --- sda ---------------------------------------------------------------------------------------


def test_sda_grows_when_entropy_settles_and_stops_on_full_data():
    plan = SchedulePlan("sda", num_data=1000, num_iterations=100, batch_size=100, window=3)
    sizes, stop_at = drive(plan, lambda k: stats(entropy=1.0))
    # Each batch size needs w + 1 = 4 entropies to compare H_k with H_{k-w}; then M doubles.
    assert sizes == [100] * 4 + [200] * 4 + [400] * 4 + [800] * 4 + [1000] * 4
    assert stop_at == 20


def test_sda_does_not_grow_or_stop_while_entropy_moves():
    plan = SchedulePlan("sda", num_data=1000, num_iterations=50, batch_size=100, window=3)
    sizes, stop_at = drive(plan, lambda k: stats(entropy=-0.05 * k), max_iter=50)
    assert sizes == [100] * 50 and stop_at == 50  # stops only because K is reached
    tol = plan.entropy_tol
    # Drift just below the tolerance over a window settles; just above does not.
    slow, _ = drive(plan, lambda k: stats(entropy=-0.99 * tol / 3 * k), max_iter=5)
    fast, _ = drive(plan, lambda k: stats(entropy=-1.01 * tol / 3 * k), max_iter=5)
    assert slow == [100] * 4 + [200] and fast == [100] * 5


def test_sda_growth_factor_and_cap():
    plan = SchedulePlan(
        "sda", num_data=1000, num_iterations=100, batch_size=150, window=1, growth=3
    )
    sizes, stop_at = drive(plan, lambda k: stats(entropy=0.0))
    assert sizes == [150, 150, 450, 450, 1000, 1000] and stop_at == 6
    assert schedules.reachable_batch_sizes(plan) == (150, 450, 1000)


# --- ctr_adaptive ------------------------------------------------------------------------------


@pytest.mark.parametrize("signal", schedules.SIGNALS)
def test_ctr_adaptive_switches_when_the_signal_fires_then_refines(signal):
    plan = SchedulePlan(
        "ctr_adaptive", num_data=1000, num_iterations=80, batch_size=100, window=3,
        refine_iterations=5, signal=signal,
    )  # fmt: skip

    # The signal moves until iteration 20, then holds still (entropy, loglik) or turns noisy.
    def fire_after_20(k):
        if signal == "noise":
            return stats(noise=5.0 if k >= 20 else 0.1)
        value = -float(min(k, 20))
        return stats(entropy=value, loglik=-value)

    sizes, stop_at = drive(plan, fire_after_20)
    switch = {"entropy": 23, "loglik": 25, "noise": 20}[signal]
    assert sizes == [100] * switch + [1000] * 5
    assert stop_at == switch + 5


def test_ctr_adaptive_without_a_signal_switches_at_the_deadline():
    plan = SchedulePlan(
        "ctr_adaptive", num_data=1000, num_iterations=40, batch_size=100, refine_iterations=8
    )
    sizes, stop_at = drive(plan, lambda k: stats(entropy=float(k), loglik=float(k)))
    assert sizes == [100] * 32 + [1000] * 8 and stop_at == 40  # the same as ctr with r = 0.8
    assert schedules.reachable_batch_sizes(plan) == (100, 1000)


# --- the device-side loop ----------------------------------------------------------------------


@functools.cache
def blr_problem(n):
    """Data, closed-form answer and one log-target per size (shared: compiled steps are reused)."""
    x, y, mean, sd = linear_regression(n=n)
    post = blr_posterior(x)
    return x, y, mean, sd, post, make_log_target(post, n, terms=True)


def blr_run(plan, proposal, *, num_particles=256, seed=0, sync_every=10, n=300, c=50, fresh=False):
    x, y, mean, sd, post, log_target = blr_problem(n)
    if fresh:  # a new log-target: new jit cache entries, to count compilations
        log_target = make_log_target(post, n, terms=True)
    state = sampler.init(jax.random.key(seed), post.prior_std, post.log_prior, num_particles)
    records = []
    run_state, status, counts = loop.run(
        jax.random.key(seed + 1),
        sampler.init_run(state, plan, proposal),
        jnp.asarray(x),
        jnp.asarray(y),
        log_target=log_target,
        config=sampler.SMCConfig(proposal),
        plan=plan,
        bucket_sizes=schedules.buckets(n, c),
        callback=lambda r, s: records.append(r),
        sync_every=sync_every,
    )
    return run_state, status, counts, records, (mean, sd)


def test_sda_stops_early_with_exact_iterations_whatever_the_sync_interval():
    plan = SchedulePlan("sda", num_data=300, num_iterations=200, batch_size=50, window=5)
    runs = [blr_run(plan, Proposal(3, 0.01), num_particles=64, sync_every=s) for s in (1, 7)]
    (st1, status1, c1, rec1, _), (st7, status7, c7, rec7, _) = runs
    assert status1 == status7 == "stopped"
    assert c1["iterations"] == c7["iterations"] == int(st7.schedule.iteration) < 200
    assert [r["iter"] for r in rec7] == list(range(1, c7["iterations"] + 1))
    assert [r["batch_size"] for r in rec1] == [r["batch_size"] for r in rec7]
    assert rec7[-1]["batch_size"] == 300  # it stopped on the full data
    assert c1["wasted_steps"] == 0 and c7["wasted_steps"] > 0  # no-op steps, not iterations
    np.testing.assert_allclose(st1.smc.particles, st7.smc.particles, rtol=1e-5, atol=1e-6)
    sizes = np.array([r["batch_size"] for r in rec7])
    assert c7["example_grads"] == 64 * 4 * sizes.sum()


def count_compiles(plan):
    before = sampler.step._cache_size()
    blr_run(plan, Proposal(1, 1e-3), num_particles=4, n=1000, c=100, fresh=True)
    return sampler.step._cache_size() - before


@pytest.mark.parametrize("name", ["automated", "ctr_adaptive"])
def test_adaptive_compilations_do_not_grow_with_k(name):
    # noise_tol = 0: automated doubles at every step, so the run visits every bucket.
    short = count_compiles(SchedulePlan(name, 1000, 8, 100, noise_tol=0.0, refine_iterations=2))
    long = count_compiles(SchedulePlan(name, 1000, 40, 100, noise_tol=0.0, refine_iterations=2))
    assert short == long <= int(np.ceil(np.log2(1000 / 100))) + 2


# --- tuned proposals ---------------------------------------------------------------------------


def test_adapted_step_size_reaches_the_target_acceptance():
    # Gaussian target (the conjugate posterior), full batch: start from h = 1e-3, far too small.
    plan = SchedulePlan("full", 300, 120, 300)
    proposal = Proposal(3, 1e-3, adapt_step_size=True, target_accept=0.65)
    _, _, _, rec, _ = blr_run(plan, proposal, num_particles=256)
    accept = np.mean([r["accept_mean"] for r in rec[60:]])
    assert abs(accept - 0.65) < 0.05
    assert rec[-1]["step_size"] > 10 * 1e-3


@pytest.mark.parametrize(
    "proposal",
    [
        Proposal(3, 0.002, adapt_step_size=True, target_accept=0.95),
        Proposal(3, 0.002, name="chees", target_accept=0.95),
        Proposal(3, 0.01, mass="diag"),
    ],
    ids=["adapt_step_size", "chees", "mass_diag"],
)
def test_tuned_proposals_recover_the_conjugate_posterior(proposal):
    # J = 1024, K = 200, full batch (as test_smc's exact test). Without accept/reject the bias
    # grows with h, so the adapted proposals target an acceptance of 0.95 here (see the docs).
    plan = SchedulePlan("full", 300, 200, 300)
    st, status, _, rec, (mean, sd) = blr_run(plan, proposal, num_particles=1024)
    assert status == "finished"
    m, s = sampler.weighted_moments(st.smc)
    np.testing.assert_array_less(np.abs((np.asarray(m) - mean) / sd), 0.1)
    np.testing.assert_allclose(np.asarray(s), sd, rtol=0.15)
    if proposal.name == "chees":
        assert len({r["num_steps"] for r in rec}) > 1  # the trajectory length is jittered


def test_diagonal_inverse_mass_follows_the_weighted_variance():
    rng = np.random.default_rng(0)
    particles = jnp.asarray(rng.normal(size=(4000, 3)) * np.array([1.0, 2.0, 4.0]), jnp.float32)
    inv = np.asarray(proposals.diagonal_inverse_mass(particles, jnp.zeros(4000)))
    var = np.array([1.0, 4.0, 16.0])
    np.testing.assert_allclose(inv, (4000 * var / var.mean() + 5) / 4005, rtol=0.05)
    collapsed = jnp.ones((8, 3))  # one point: no information, identity mass
    np.testing.assert_allclose(proposals.diagonal_inverse_mass(collapsed, jnp.zeros(8)), 1.0)
