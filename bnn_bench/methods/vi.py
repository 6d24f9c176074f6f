"""method=vi: score-based variational inference and its baselines (inference/vi/)."""

from __future__ import annotations

from typing import Any

from bnn_bench import build
from bnn_bench.lifecycle import raise_if_stopped
from bnn_bench.methods.base import Job, Method, batch_size_check


def run(job: Job) -> dict[str, Any]:
    """Run vi.algorithm for vi.num_iterations; returns the results.json fields specific to VI."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from bnn_bench.inference.vi import ALGORITHMS, family, loop
    from bnn_bench.posterior import make_log_target
    from bnn_bench.tracking import read_metrics, write_vi_posterior

    cfg, vi, n = job.cfg, job.cfg.vi, job.data.n_train
    config = build.vi_config(cfg, n)
    algorithm = ALGORITHMS[vi.algorithm]
    x, y = jnp.asarray(job.data.x_train), jnp.asarray(job.data.y_train)
    key_init, key_run, key_pred = jax.random.split(jax.random.key(cfg.seed), 3)
    q0 = family.initial_gaussian(key_init, job.posterior.prior_std, vi.init_std, config.rank)
    state = algorithm.init(q0, config)
    history: list[dict[str, Any]] = []
    counters = {"example_grads": 0, "elapsed": 0.0, "rejected_run": 0}
    start = 0
    if job.checkpoints.resumed is not None:
        state, meta = job.checkpoints.read(state)  # q and the optimiser state
        counters.update(meta["counters"])
        start = meta["iteration"]
        history = read_metrics(job.out_dir / "metrics.jsonl")

    def test_metrics(q, reliability: bool = False) -> dict[str, Any]:
        samples = family.sample(key_pred, q, vi.num_predictive_samples)
        weights = jnp.zeros(vi.num_predictive_samples)  # equally weighted draws from q
        return job.test_metrics(samples, weights, reliability)

    def callback(record, st):
        k = record["iter"]
        history.append(record)
        if st is not None and job.evaluate_every(k):
            record.update({f"test_{name}": v for name, v in test_metrics(st.q).items()})
        job.reporter.record(record)
        if st is not None and (job.checkpoints.due(k) or job.should_stop()):
            done = {key: record[key] for key in ("example_grads", "rejected_run")}
            done["elapsed"] = record["time_s"]
            job.checkpoints.write(st, k, counters=done, wandb_id=job.reporter.run_id)

    state, status = loop.run(
        key_run,
        algorithm,
        state,
        x,
        y,
        vi.num_iterations,
        log_target=make_log_target(job.posterior, n),
        config=config,
        callback=callback,
        sync_every=cfg.log_every,
        state_every=job.state_every,
        should_stop=job.should_stop,
        start=start,
        **counters,
    )
    last = history[-1]["iter"] if history else 0
    divergence = (
        f"diverged: the {vi.algorithm} update was not finite {loop.MAX_REJECTED} times in a row "
        "by iteration {iteration}; try a larger vi.prox_weight, a smaller vi.max_mean_step or "
        "a smaller vi.learning_rate"
    )
    raise_if_stopped(status, last, job.out_dir, divergence)
    results = test_metrics(state.q, reliability=True)
    if cfg.save_posterior:
        samples = family.sample(key_pred, state.q, vi.num_predictive_samples)
        write_vi_posterior(
            job.out_dir / "posterior.npz", state.q, samples, **job.data.standardization_arrays()
        )
    tail = history[-max(1, len(history) // 10) :]  # the last 10% of iterations
    results.update(
        algorithm=vi.algorithm,
        family=vi.family,
        rank=config.rank,
        num_samples=vi.num_samples,
        batch_size=config.batch_size,
        iterations=len(history),
        example_grads=history[-1]["example_grads"] if history else 0,
        # neg_elbo = kl_prior - expected_log_lik, each averaged over the last 10%
        **{
            k: float(np.mean([r[k] for r in tail]))
            for k in ("neg_elbo", "expected_log_lik", "kl_prior")
        },
        score_loss=float(np.mean([r["score_loss"] for r in tail])),
        n_rejected=sum(int(r["rejected"]) for r in history),
        devices=len(jax.tree.leaves(state.q)[0].sharding.device_set),  # VI does not split q
    )
    return results


METHOD = Method(
    name="vi",
    run=run,
    num_iterations=lambda cfg: cfg.vi.num_iterations,
    labels=lambda cfg: (cfg.vi.algorithm,),
    progress_key="neg_elbo",
    check_data=batch_size_check("vi"),
    row=lambda results: (str(results.get("algorithm", "?")), ""),
    variant_order=("score_prox", "advi", "gsm", "bam"),
)
