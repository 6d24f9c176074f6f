"""method=sgmcmc: SGLD or SGHMC (blackjax) on minibatches; kept draws weighted equally."""

from __future__ import annotations

from typing import Any, NamedTuple

from bnn_bench import build
from bnn_bench.lifecycle import raise_if_stopped
from bnn_bench.methods.base import Job, Method, batch_size_check


class SGMCMCRun(NamedTuple):
    chain: Any  # inference.sgmcmc.SGMCMCState
    draws: Any  # (kept_draws, D) buffer, filled in order
    num_kept: Any  # () draws so far


def run(job: Job) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from bnn_bench.inference import driver, sgmcmc
    from bnn_bench.posterior import make_log_target

    cfg, n, post = job.cfg, job.data.n_train, job.posterior
    config = build.sgmcmc_config(cfg)
    batch = min(config.batch_size, n)
    total_kept = sgmcmc.kept_draws(config)
    x, y = jnp.asarray(job.data.x_train), jnp.asarray(job.data.y_train)
    key_init, key_run = jax.random.split(jax.random.key(cfg.seed))
    chain = sgmcmc.init(post.sample_prior(key_init, 1)[0])
    state = SGMCMCRun(chain, jnp.zeros((total_kept, post.dim)), jnp.zeros((), jnp.int32))
    counters = {"elapsed": 0.0}
    start = 0
    if job.checkpoints.resumed is not None:
        state, meta = job.checkpoints.read(state)
        counters.update(meta["counters"])
        start = meta["iteration"]
    log_target = make_log_target(post, n)
    grads = sgmcmc.grads_per_step(config) * batch

    @jax.jit
    def dispatch(s: SGMCMCRun):
        chain, info = sgmcmc.step(key_run, s.chain, x, y, log_target=log_target, config=config)

        def keep(s):
            return s._replace(
                draws=s.draws.at[s.num_kept].set(chain.position), num_kept=s.num_kept + 1
            )

        s = jax.lax.cond(info.keep, keep, lambda s: s, s._replace(chain=chain))
        finite = jnp.all(jnp.isfinite(chain.position))
        return s, (info, finite, s.num_kept)

    done = {"iter": start}

    def to_records(infos, elapsed):
        records = []
        for info, finite, kept in infos:
            done["iter"] += 1
            k = done["iter"]
            records.append(
                {
                    "iter": k,
                    "batch_size": batch,
                    "step_size": float(info.step_size),
                    "kept": bool(info.keep),
                    "draws": int(kept),
                    "finite": bool(finite),
                    "time_s": elapsed,
                    "example_grads": k * grads,
                }
            )
        return records, False

    def test_metrics(s, reliability=False):
        kept = int(s.num_kept)
        draws = s.draws[:kept] if kept else s.chain.position[None]
        return job.test_metrics(draws, jnp.zeros(len(draws)), reliability)

    def callback(record, s):
        k = record["iter"]
        if s is not None and job.evaluate_every(k):
            record.update({f"test_{name}": v for name, v in test_metrics(s).items()})
        job.reporter.record(record)
        if s is not None and (job.checkpoints.due(k) or job.should_stop()):
            saved = {"elapsed": record["time_s"]}
            job.checkpoints.write(s, k, counters=saved, wandb_id=job.reporter.run_id)

    state, status, iterations = driver.run(
        dispatch,
        state,
        num_iterations=config.num_iterations,
        to_records=to_records,
        diverged=lambda record: not record["finite"],
        start=start,
        elapsed=counters["elapsed"],
        sync_every=cfg.log_every,
        state_every=job.state_every,
        callback=callback,
        should_stop=job.should_stop,
    )
    raise_if_stopped(
        status,
        iterations,
        job.out_dir,
        "diverged: the chain left the finite numbers at iteration {iteration}; "
        f"try a smaller sgmcmc.step_size (now {config.step_size})",
    )
    results = test_metrics(state, reliability=True)
    if cfg.save_posterior:
        draws = np.asarray(state.draws[: int(state.num_kept)])
        job.write_posterior(draws, np.zeros(len(draws), np.float32))
    results.update(
        algorithm=config.algorithm,
        step_schedule=config.step_schedule,
        step_size=config.step_size,
        batch_size=batch,
        iterations=iterations,
        n_draws=int(state.num_kept),
        example_grads=iterations * grads,
    )
    return results


METHOD = Method(
    name="sgmcmc",
    run=run,
    num_iterations=lambda cfg: cfg.sgmcmc.num_iterations,
    labels=lambda cfg: (cfg.sgmcmc.algorithm, cfg.sgmcmc.step_schedule),
    progress_key="draws",
    check_data=batch_size_check("sgmcmc"),
    row=lambda results: (str(results.get("algorithm", "?")), str(results.get("step_schedule", ""))),
    variant_order=("sgld", "sghmc"),
)
