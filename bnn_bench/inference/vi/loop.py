"""The VI run: one algorithm's `step` driven by the shared host loop (inference/driver.py).

What is VI's own here: the per-iteration record (info -> record, with the example-gradient count)
and the divergence rule (the update was rejected as non-finite `max_rejected` times in a row).
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import jax

from bnn_bench.inference import driver
from bnn_bench.inference.vi.family import VIConfig

MAX_REJECTED = 10  # non-finite updates in a row that end a run as diverged


def run(
    rng_key: jax.Array,
    algorithm: ModuleType,
    state,
    x: jax.Array,
    y: jax.Array,
    num_iterations: int,
    *,
    log_target: Callable,
    config: VIConfig,
    callback: Callable | None = None,
    sync_every: int = 10,
    state_every: int = 0,
    should_stop: Callable[[], bool] | None = None,
    max_rejected: int = MAX_REJECTED,
    start: int = 0,
    example_grads: int = 0,
    elapsed: float = 0.0,
    rejected_run: int = 0,
):
    """Run steps start+1 .. num_iterations; returns (state, status) with the statuses of
    `driver.run` ("diverged": the update was non-finite and rejected `max_rejected` times in a
    row).

    Records: iter, batch_size, neg_elbo, score_loss, rejected, rejected_run, time_s,
    example_grads. Step k's randomness is fold_in(rng_key, k): a run resumed with `start`, the
    state there and the counters continues exactly.
    """
    batch = min(config.batch_size, x.shape[0])
    counters = {"iteration": start, "example_grads": example_grads, "rejected_run": rejected_run}

    def dispatch(st):
        counters["iteration"] += 1
        key = jax.random.fold_in(rng_key, counters["iteration"])
        return algorithm.step(key, st, x, y, log_target=log_target, config=config)

    def to_records(infos, elapsed_s):
        first = counters["iteration"] - len(infos) + 1
        records = []
        for it, inf in enumerate(infos, start=first):
            counters["example_grads"] += config.num_samples * batch
            rejected = bool(inf.rejected)
            counters["rejected_run"] = counters["rejected_run"] + 1 if rejected else 0
            records.append(
                {
                    "iter": it,
                    "batch_size": batch,
                    "neg_elbo": float(inf.neg_elbo),
                    "score_loss": float(inf.score_loss),
                    "rejected": rejected,
                    "time_s": elapsed_s,
                    "example_grads": counters["example_grads"],
                    "rejected_run": counters["rejected_run"],
                }
            )
        return records, False

    state, status, _ = driver.run(
        dispatch,
        state,
        num_iterations=num_iterations,
        to_records=to_records,
        diverged=lambda record: record["rejected_run"] >= max_rejected,
        start=start,
        elapsed=elapsed,
        sync_every=sync_every,
        state_every=state_every,
        callback=callback,
        should_stop=should_stop,
    )
    return state, status
