"""method=smc: SMC over network weights with data-annealing schedules (inference/smc/).

smc.path=minibatch is the paper's formulation (below); nested and tempered, the exact sampler,
run in methods/smc_exact.py.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from bnn_bench import build
from bnn_bench.errors import ConfigError
from bnn_bench.lifecycle import raise_if_stopped
from bnn_bench.methods.base import Job, Method


def run(job: Job) -> dict[str, Any]:
    """Run the configured schedule; returns the results.json fields specific to SMC."""
    import jax
    import jax.numpy as jnp

    from bnn_bench.hardware import shard_particles
    from bnn_bench.inference.smc import loop, sampler, schedules
    from bnn_bench.posterior import make_log_target

    cfg, smc, n = job.cfg, job.cfg.smc, job.data.n_train
    if smc.path != "minibatch":  # the exact sampler: nested | tempered
        from bnn_bench.methods import smc_exact

        return smc_exact.run(job)
    plan = build.schedule_plan(cfg, n)
    config = build.smc_config(cfg)
    statistics = sampler.reads_statistics(plan, config.proposal)
    x, y = jnp.asarray(job.data.x_train), jnp.asarray(job.data.y_train)
    key_init, key_run = jax.random.split(jax.random.key(cfg.seed))
    post = job.posterior
    state = sampler.init(key_init, post.prior_std, post.log_prior, smc.num_particles)
    run_state = sampler.init_run(state, plan, config.proposal)
    counts = {"n_resample": 0, "ess_final": float(smc.num_particles)}
    resumed = {"counts": None, "elapsed": 0.0}
    if job.checkpoints.resumed is not None:
        run_state, meta = job.checkpoints.read(run_state)  # particles, schedule state, tuning
        counts.update(meta["counts"])
        resumed.update(counts=meta["run_counts"], elapsed=meta["elapsed"])
    if cfg.hardware.devices > 1:  # particles split across devices; schedule and tuning replicated
        smc_state, (x, y, schedule, tuning) = shard_particles(
            run_state.smc, (x, y, run_state.schedule, run_state.tuning), cfg.hardware.devices
        )
        run_state = run_state._replace(smc=smc_state, schedule=schedule, tuning=tuning)

    def test_metrics(rs, reliability: bool = False) -> dict[str, Any]:
        return job.test_metrics(rs.smc.particles, rs.smc.log_weights, reliability)

    def callback(record, rs):
        k = record["iter"]
        counts["n_resample"] += int(record["resampled"])
        counts["ess_final"] = record["ess"]
        if rs is not None and job.evaluate_every(k):
            record.update({f"test_{name}": v for name, v in test_metrics(rs).items()})
        job.reporter.record(record)
        if rs is not None and (job.checkpoints.due(k) or job.should_stop()):
            run_counts = {"iterations": k, "example_grads": record["example_grads"]}
            run_counts["wasted_steps"] = record.get("wasted_steps", 0)
            job.checkpoints.write(
                rs,
                k,
                counts=counts,
                run_counts=run_counts,
                elapsed=record["time_s"],
                wandb_id=job.reporter.run_id,
            )

    bucket_sizes = schedules.buckets(n, cfg.schedule.batch_size)
    if plan.name in schedules.ADAPTIVE_SCHEDULES:  # only the buckets the schedule can reach
        reachable = schedules.reachable_batch_sizes(plan)
        bucket_sizes = tuple(sorted({schedules.bucket_for(m, bucket_sizes) for m in reachable}))
    run_state, status, run_counts = loop.run(
        key_run,
        run_state,
        x,
        y,
        log_target=make_log_target(post, n, terms=statistics),
        config=config,
        plan=plan,
        bucket_sizes=bucket_sizes,
        callback=callback,
        sync_every=cfg.log_every,
        state_every=job.state_every,
        should_stop=job.should_stop,
        counts=resumed["counts"],
        elapsed=resumed["elapsed"],
    )
    raise_if_stopped(status, run_counts["iterations"], job.out_dir, divergence_message(cfg))
    results = test_metrics(run_state, reliability=True)
    if cfg.save_posterior:
        job.write_posterior(run_state.smc.particles, run_state.smc.log_weights)
    results.update(
        schedule=plan.name,
        proposal=cfg.proposal.name,
        budget=smc.budget,  # K was chosen to spend it (check_data)
        devices=len(run_state.smc.particles.sharding.device_set),  # where the particles ended up
    )
    if statistics:  # what the adaptive schedule or the tuned move did
        results.update(
            adapt_step_size=bool(cfg.proposal.adapt_step_size),
            mass=cfg.proposal.mass,
            num_particles=smc.num_particles,
            step_size=float(run_state.tuning.step_size),
            **run_counts,
        )
    else:
        results.update(
            num_particles=smc.num_particles,
            example_grads=run_counts["example_grads"],
            iterations=run_counts["iterations"],
        )
    results.update(counts)
    return results


def divergence_message(cfg: DictConfig) -> str:
    """The diverged message ({iteration} is filled in by raise_if_stopped)."""
    return (
        "every particle diverged by iteration {iteration}: "
        f"try a smaller proposal.step_size (now {cfg.proposal.step_size})"
    )


def check_data(cfg: DictConfig, data) -> None:
    """C must fit the data; particles are split evenly across hardware.devices. On minibatch,
    smc.budget's K is chosen here, the first place that knows N (config.BUDGET_DEFAULTS)."""
    devices, j = cfg.hardware.devices, cfg.smc.num_particles
    if j % devices:
        raise ConfigError(
            f"hardware.devices={devices} is not allowed; it must divide smc.num_particles={j}"
        )
    c = cfg.schedule.batch_size
    if cfg.schedule.name != "full" and c > data.n_train:
        raise ConfigError(
            f"schedule.batch_size={c} is not allowed; it must be between 1 and N={data.n_train} "
            f"(the training-set size of dataset={cfg.dataset.name})"
        )
    if cfg.smc.path == "minibatch" and cfg.smc.budget is not None:
        cfg.smc.num_iterations = minibatch_iterations(cfg, data.n_train)


def check_minibatch_budget(cfg: DictConfig) -> None:
    """smc.budget on minibatch chooses K, which needs a schedule and a move of known cost."""
    from bnn_bench.inference.smc import schedules

    smc = cfg.smc
    if smc.budget is None:
        return
    if smc.num_iterations is not None:
        raise ConfigError(
            f"smc.num_iterations={smc.num_iterations} and smc.budget={smc.budget} are both set: "
            "with smc.path=minibatch the budget chooses K; pass smc.num_iterations=null"
        )
    if cfg.schedule.name not in schedules.FIXED_SCHEDULES:
        raise ConfigError(
            f"smc.budget is not available with schedule={cfg.schedule.name} and "
            "smc.path=minibatch (its cost is known only as it runs); choose one of: "
            f"{', '.join(schedules.FIXED_SCHEDULES)}, or set smc.num_iterations"
        )
    if cfg.proposal.name == "chees":
        raise ConfigError(
            "smc.budget is not available with proposal=chees and smc.path=minibatch (its "
            "number of leapfrog steps is known only as it runs); use hmc or langevin, or set "
            "smc.num_iterations"
        )


def minibatch_iterations(cfg: DictConfig, num_data: int) -> int:
    """K for smc.budget on minibatch: the smallest fixed schedule that spends the budget (every
    iteration costs J * M_k * (S + 1) example-gradients, S = 1 for langevin)."""
    from bnn_bench.inference.smc import schedules

    s = cfg.schedule
    try:
        return schedules.iterations_for_budget(
            s.name,
            cfg.smc.budget,
            per_row=cfg.smc.num_particles * (cfg.proposal.num_steps + 1),
            num_data=num_data,
            batch_size=s.batch_size,
            refine_at=s.refine_at,
            slope=s.slope,
        )
    except ValueError as exc:
        raise ConfigError(f"smc.budget={cfg.smc.budget} is not allowed: {exc}") from None


def report_row(results: dict[str, Any]) -> tuple[str, str]:
    """(schedule, proposal); an adapted step size or a diagonal mass is its own row."""
    proposal = str(results.get("proposal"))
    path = results.get("path", "minibatch")
    if path != "minibatch":  # the exact sampler: its own rows, never mixed with the paper's
        variant = "tempered" if path == "tempered" else f"nested-{results.get('schedule')}"
        return variant, proposal + "+mh"
    if results.get("adapt_step_size"):  # a tuned move is its own row, not mixed with fixed h
        proposal += "+adapt"
    if results.get("mass") == "diag":
        proposal += "+diag"
    return str(results.get("schedule", "?")), proposal


def speedup_baselines(schedule: str, proposal: str) -> list[tuple[str, str]]:
    """Full-batch SMC with the same move, else with its untuned base (hmc for hmc+adapt)."""
    return [("full", proposal), ("full", proposal.split("+")[0])]


METHOD = Method(
    name="smc",
    run=run,
    num_iterations=lambda cfg: cfg.smc.num_iterations,
    labels=lambda cfg: (cfg.schedule.name, cfg.proposal.name),
    progress_key="ess",
    check_data=check_data,
    row=report_row,
    variant_order=(
        *("full", "constant", "ctr", "linear", "automated", "sda", "ctr_adaptive"),
        *("tempered", "nested-full", "nested-constant", "nested-ctr", "nested-linear"),
        "nested-automated",
    ),
    baselines=speedup_baselines,
)
