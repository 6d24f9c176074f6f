"""method=ensemble: a deep ensemble of MAP fits under the prior (num_members=1: MAP)."""

from __future__ import annotations

from typing import Any

from bnn_bench import build
from bnn_bench.lifecycle import raise_if_stopped
from bnn_bench.methods.base import Job, Method, batch_size_check


def run(job: Job) -> dict[str, Any]:
    """ensemble.num_epochs of Adam steps for every member; equal weights in the predictive."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from bnn_bench.inference import driver, ensemble
    from bnn_bench.posterior import make_log_target

    cfg, n = job.cfg, job.data.n_train
    config = build.ensemble_config(cfg)
    total = ensemble.num_steps(config, n)
    batch = min(config.batch_size, n)
    x, y = jnp.asarray(job.data.x_train), jnp.asarray(job.data.y_train)
    key_init, key_run = jax.random.split(jax.random.key(cfg.seed))
    state = ensemble.init(key_init, job.posterior.prior_std, config, total)
    counters = {"elapsed": 0.0}
    start = 0
    if job.checkpoints.resumed is not None:
        state, meta = job.checkpoints.read(state)
        counters.update(meta["counters"])
        start = meta["iteration"]
    log_target = make_log_target(job.posterior, n)
    members = jnp.zeros(config.num_members)
    if cfg.hardware.devices > 1:  # members split across devices like SMC particles; data replicated
        from bnn_bench.hardware import shard_particles

        (params, opt_state), (step, x, y) = shard_particles(
            (state.params, state.opt_state), (state.step, x, y), cfg.hardware.devices
        )
        state = state._replace(params=params, opt_state=opt_state, step=step)

    per_epoch = total // config.num_epochs

    def dispatch(st):  # one epoch of minibatch steps, jitted (ensemble.run_steps)
        return ensemble.run_steps(
            key_run,
            st,
            x,
            y,
            log_target=log_target,
            config=config,
            total_steps=total,
            num=per_epoch,
            particle_map=build.particle_map(cfg),
        )

    done = {"iter": start}

    def to_records(infos, elapsed):
        records = []
        for info in infos:
            done["iter"] += 1
            k = done["iter"]
            loss = np.asarray(info.loss)  # (steps, M)
            records.append(
                {
                    "iter": k,
                    "batch_size": batch,
                    "loss": float(np.mean(loss)),
                    "loss_last_max": float(np.max(loss[-1])),
                    "time_s": elapsed,
                    "example_grads": k * per_epoch * batch * config.num_members,
                }
            )
        return records, False

    def callback(record, st):
        k = record["iter"]
        if st is not None and job.evaluate_every(k):
            out = job.test_metrics(st.params, members)
            record.update({f"test_{name}": v for name, v in out.items()})
        job.reporter.record(record)
        if st is not None and (job.checkpoints.due(k) or job.should_stop()):
            saved = {"elapsed": record["time_s"]}
            job.checkpoints.write(st, k, counters=saved, wandb_id=job.reporter.run_id)

    state, status, iterations = driver.run(
        dispatch,
        state,
        num_iterations=config.num_epochs,
        to_records=to_records,
        diverged=lambda record: not np.isfinite(record["loss"]),
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
        "diverged: a member's loss was not finite at iteration {iteration}; "
        f"try a smaller ensemble.learning_rate (now {config.learning_rate})",
    )
    results = job.test_metrics(state.params, members, reliability=True)
    if cfg.save_posterior:
        job.write_posterior(state.params, np.asarray(members))
    results.update(
        num_members=config.num_members,
        num_epochs=config.num_epochs,
        batch_size=batch,
        learning_rate=config.learning_rate,
        lr_schedule=config.lr_schedule,
        iterations=iterations,
        devices=len(state.params.sharding.device_set),  # where the members ended up
        steps=iterations * per_epoch,
        example_grads=iterations * per_epoch * batch * config.num_members,
    )
    return results


def check_data(cfg, data) -> None:
    """The batch must fit the data; members are split evenly across hardware.devices."""
    from bnn_bench.errors import ConfigError

    batch_size_check("ensemble")(cfg, data)
    devices, m = cfg.hardware.devices, cfg.ensemble.num_members
    if m % devices:
        raise ConfigError(
            f"hardware.devices={devices} is not allowed; it must divide ensemble.num_members={m}"
        )


METHOD = Method(
    name="ensemble",
    run=run,
    num_iterations=lambda cfg: cfg.ensemble.num_epochs,  # one iteration is an epoch
    labels=lambda cfg: (f"m{cfg.ensemble.num_members}",),
    progress_key="loss",
    check_data=check_data,
    row=lambda results: (f"{results.get('num_members', '?')} members", ""),
)
