"""Exact batch-size sequences of every fixed schedule, buckets, and the compile bound."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnn_bench.inference.smc import loop, sampler, schedules
from bnn_bench.inference.smc.proposals import Proposal
from bnn_bench.models import build_model
from bnn_bench.posterior import make_log_target, make_posterior


def sizes(name, **kw):
    return schedules.batch_sizes(name, **kw).tolist()


def test_full_and_constant():
    assert sizes("full", num_data=1000, num_iterations=4, batch_size=100) == [1000] * 4
    assert sizes("constant", num_data=1000, num_iterations=4, batch_size=100) == [100] * 4


def test_ctr_switches_after_floor_rk():
    kw = dict(num_data=1000, num_iterations=10, batch_size=100)
    assert sizes("ctr", refine_at=0.9, **kw) == [100] * 9 + [1000]
    assert sizes("ctr", refine_at=0.5, **kw) == [100] * 5 + [1000] * 5
    assert sizes("ctr", refine_at=1.0, **kw) == [100] * 10
    assert sizes("ctr", num_data=1000, num_iterations=15, batch_size=100, refine_at=0.9) == (
        [100] * 13 + [1000] * 2
    )


def test_linear_ramps_to_n_at_rk():
    # kappa = (N - C) / (rK) = 900 / 9 = 100: M_k = C + kappa (k - 1) for k <= 9, then N.
    kw = dict(num_data=1000, num_iterations=10, batch_size=100, refine_at=0.9)
    assert sizes("linear", **kw) == [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]
    assert sizes("linear", slope=50, **kw) == [100, 150, 200, 250, 300, 350, 400, 450, 500, 1000]
    assert sizes("linear", slope=500, **kw) == [100, 600] + [1000] * 8


@pytest.mark.parametrize("name", schedules.FIXED_SCHEDULES)
def test_every_schedule_stays_within_1_and_n(name):
    s = schedules.batch_sizes(name, num_data=777, num_iterations=50, batch_size=64)
    assert s.min() >= 1 and s.max() <= 777 and len(s) == 50
    assert s[-1] == (64 if name == "constant" else 777)


def test_batch_size_above_n_is_capped():
    assert sizes("constant", num_data=100, num_iterations=2, batch_size=500) == [100, 100]


def test_buckets():
    assert schedules.buckets(1000, 100) == (100, 200, 400, 800, 1000)
    assert schedules.buckets(100, 500) == (100,)
    assert schedules.bucket_for(150, (100, 200, 1000)) == 200
    assert schedules.bucket_for(1000, (100, 200, 1000)) == 1000


def count_compiles(schedule: str, num_iterations: int) -> int:
    """Compilations of the step function over a whole run (from jit's cache size)."""
    rng = np.random.default_rng(0)
    n = 1000
    x = jnp.asarray(rng.normal(size=(n, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 2, n), jnp.int32)
    post = make_posterior(build_model("linear", 2), x)
    # A fresh log_target per call gives fresh jit cache entries to count.
    lt = make_log_target(post, n)
    bucket_sizes = schedules.buckets(n, 100)
    plan = schedules.SchedulePlan(schedule, n, num_iterations, 100)
    config = sampler.SMCConfig(Proposal(1, 1e-3))
    state = sampler.init(jax.random.key(0), post.prior_std, post.log_prior, 4)
    before = sampler.step._cache_size()
    loop.run(
        jax.random.key(1),
        sampler.init_run(state, plan, config.proposal),
        x,
        y,
        log_target=lt,
        config=config,
        plan=plan,
        bucket_sizes=bucket_sizes,
    )
    return sampler.step._cache_size() - before


@pytest.mark.parametrize("schedule", ["ctr", "linear"])
def test_compilations_do_not_grow_with_k(schedule):
    short, long = count_compiles(schedule, 10), count_compiles(schedule, 60)
    bound = int(np.ceil(np.log2(1000 / 100))) + 2
    assert short == long
    assert long <= bound


@pytest.mark.parametrize("name", schedules.FIXED_SCHEDULES)
@pytest.mark.parametrize("budget", [1, 999, 20_000, 123_457])
def test_iterations_for_budget_is_the_smallest_k_that_spends_it(name, budget):
    kw = {"num_data": 300, "batch_size": 40, "refine_at": 0.7, "slope": None}

    def cost(k):
        return 6 * int(schedules.batch_sizes(name, num_iterations=k, **kw).sum())

    k = schedules.iterations_for_budget(name, budget, per_row=6, **kw)
    brute = next(k for k in range(1, 10_000) if cost(k) >= budget)
    assert k == brute
