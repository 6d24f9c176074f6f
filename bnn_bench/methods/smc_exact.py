"""method=smc, smc.path = nested | tempered: the exact SMC sampler, config -> run -> results.

The pure sampler is inference/smc/exact.py. This module builds its static settings from the
config, puts the training set on the device once in the path's seeded row order, reports every
iteration (metrics.jsonl, W&B, progress bar), checkpoints and evaluates the final cloud.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from bnn_bench.errors import ConfigError

EXACT_PATHS = ("nested", "tempered")
SMC_PATHS = (*EXACT_PATHS, "minibatch")
CORRECTIONS = ("mh", "none")
NESTED_SCHEDULES = ("full", "constant", "ctr", "linear", "automated", "sda", "ctr_adaptive")
SIGNAL_SCHEDULES = ("sda", "ctr_adaptive")  # the next subset from the moved cloud's statistics
# Fixed schedules under nested: K schedule entries plus the bridge steps the jumps need; the
# allowance only guards against a run that never ends (tempered and automated: their only cap).
BRIDGE_ALLOWANCE = 10_000
# smc.budget's final sweeps stop here even if the budget is not spent: every sweep keeps its
# cloud for the predictive, so this bounds the memory (J * D floats per sweep)
MAX_BUDGET_SWEEPS = 1_000


def validate(cfg: DictConfig) -> None:
    """Checks of smc.path, smc.num_mcmc_steps and proposal.correction (ConfigError, named key)."""
    smc = cfg.smc
    if smc.path not in SMC_PATHS:
        raise ConfigError(
            f"smc.path={smc.path} is not allowed; choose one of: {', '.join(SMC_PATHS)}"
        )
    c = cfg.proposal.correction  # resolved by the path (config.PATH_DEFAULTS)
    if c not in CORRECTIONS:
        raise ConfigError(
            f"proposal.correction={c} is not allowed; choose one of: {', '.join(CORRECTIONS)}"
        )
    if smc.num_mcmc_steps < 1:
        raise ConfigError(
            f"smc.num_mcmc_steps={smc.num_mcmc_steps} is not allowed; it must be >= 1"
        )
    if smc.path == "minibatch":
        from bnn_bench.methods.smc import check_minibatch_budget

        check_minibatch_budget(cfg)
        if smc.final_sweeps:
            raise ConfigError(
                f"smc.final_sweeps={smc.final_sweeps} is not available with smc.path=minibatch "
                "(its moves are not invariant for the posterior); use 0, or smc.path=nested"
            )
        if cfg.proposal.max_retries:
            raise ConfigError(
                f"proposal.max_retries={cfg.proposal.max_retries} is not available with "
                "smc.path=minibatch (its moves have no acceptance); use 0, or smc.path=nested"
            )
        if c != "none":
            raise ConfigError(
                "proposal.correction=mh is not available with smc.path=minibatch (its weights "
                "absorb the energy error); use smc.path=nested or tempered, or correction=none"
            )
        return
    if c != "mh":
        raise ConfigError(
            f"proposal.correction=none is not allowed with smc.path={smc.path}: the exact sampler "
            "needs gamma_k-invariant (Metropolis-adjusted) moves; use smc.path=minibatch"
        )
    if smc.path == "nested" and cfg.schedule.name not in NESTED_SCHEDULES:
        raise ConfigError(
            f"schedule={cfg.schedule.name} is not available with smc.path=nested; choose one of: "
            f"{', '.join(NESTED_SCHEDULES)} (or smc.path=minibatch)"
        )
    nested_signal = smc.path == "nested" and cfg.schedule.name == "ctr_adaptive"
    if nested_signal and cfg.schedule.signal == "noise":
        raise ConfigError(
            "schedule.signal=noise is not available with smc.path=nested (it measures the "
            "noise of a minibatch's weights; nested has none); use loglik or entropy"
        )


def path_plan(cfg: DictConfig, num_data: int):
    """The sampler's static path plan from smc.path and the schedule."""
    from bnn_bench.inference.smc import exact, schedules

    s, k = cfg.schedule, cfg.smc.num_iterations
    # tempered and automated choose their own targets and end at the posterior; the allowance
    # only guards against a run that never ends
    if cfg.smc.path == "tempered":
        return exact.PathPlan("tempered", num_data, BRIDGE_ALLOWANCE)
    if s.name in SIGNAL_SCHEDULES:
        from bnn_bench import build

        schedule = build.schedule_plan(cfg, num_data)
        return exact.PathPlan("nested", num_data, k + BRIDGE_ALLOWANCE, schedule=schedule)
    if s.name == "automated":
        return exact.PathPlan(
            "nested",
            num_data,
            BRIDGE_ALLOWANCE,
            automated=True,
            growth=s.growth,
            first_size=s.batch_size,
        )
    sizes = schedules.batch_sizes(
        s.name,
        num_data=num_data,
        num_iterations=k,
        batch_size=s.batch_size,
        refine_at=s.refine_at,
        slope=s.slope,
    )
    return exact.PathPlan(
        "nested", num_data, k + BRIDGE_ALLOWANCE, sizes=tuple(int(m) for m in sizes)
    )


def exact_config(cfg: DictConfig, particle_map: str):
    from bnn_bench.inference.smc import exact, moves

    p = cfg.proposal
    move = moves.MoveSettings(
        num_steps=p.num_steps,  # langevin: 1 (MALA; config.validate)
        num_mcmc_steps=cfg.smc.num_mcmc_steps,
        adapt_step_size=p.adapt_step_size,
        target_accept=p.target_accept,
        adapt_rate=p.adapt_rate,
        mass=p.mass,
        min_accept=p.min_accept,
        max_retries=p.max_retries,
        chees=p.name == "chees",
        max_steps=p.max_steps,
        learning_rate=p.learning_rate,
    )
    return exact.ExactConfig(
        move,
        resample_threshold=cfg.smc.resample_threshold,
        resampler=cfg.smc.resampler,
        particle_map=particle_map,
        particle_chunk=cfg.hardware.particle_chunk,
        data_chunk=cfg.hardware.data_chunk,
    )


def run(job) -> dict[str, Any]:
    """The exact sampler end to end (methods/smc.py hands over smc.path=nested | tempered).

    Returns the results.json fields specific to it. Checkpoints hold the whole sampler state
    (particles, weights, log-evidence, where the path stands, step size), so a resumed run
    continues exactly.
    """
    import sys

    import jax
    import jax.numpy as jnp
    import numpy as np

    from bnn_bench import build
    from bnn_bench.inference.smc import exact
    from bnn_bench.lifecycle import raise_if_stopped
    from bnn_bench.metrics import ess

    cfg, data, posterior = job.cfg, job.data, job.posterior
    smc, n = cfg.smc, data.n_train
    plan = path_plan(cfg, n)
    config = exact_config(cfg, build.particle_map(cfg))
    # The path's row order: a fixed seeded permutation, on the device once; D_k is its prefix.
    order = np.random.default_rng(cfg.seed).permutation(n)
    x, y = jnp.asarray(data.x_train[order]), jnp.asarray(data.y_train[order])
    key_init, key_run = jax.random.split(jax.random.key(cfg.seed))
    state = exact.init(
        key_init, posterior.prior_std, smc.num_particles, cfg.proposal.step_size, plan, config.move
    )
    counts = None
    elapsed = 0.0
    if job.checkpoints.resumed is not None:
        state, meta = job.checkpoints.read(state)
        counts, elapsed = meta["run_counts"], meta["elapsed"]
    if cfg.hardware.devices > 1:  # the particles and their weights split across devices
        from bnn_bench.hardware import shard_particles

        (particles, log_weights), (x, y, state) = shard_particles(
            (state.particles, state.log_weights), (x, y, state), cfg.hardware.devices
        )
        state = state._replace(particles=particles, log_weights=log_weights)
    last = {"checkpointed": int(state.iteration), "evaluated": int(state.iteration)}
    tally = dict(counts or {"iterations": 0, "example_grads": 0, "n_resample": 0, "n_bridge": 0})
    every = job.checkpoints.every

    def callback(record, st):
        k = record["iter"]
        last["time_s"] = record["time_s"]
        tally.update(iterations=k, example_grads=record["example_grads"])
        tally["n_resample"] += int(record["resampled"])
        tally["n_bridge"] += int(record["bridged"])
        last["distinct_min"] = min(
            last.get("distinct_min", smc.num_particles), record["distinct_particles"]
        )
        if st is not None and cfg.eval_every and k - last["evaluated"] >= cfg.eval_every:
            last["evaluated"] = k
            test = job.test_metrics(st.particles, st.log_weights, False)
            record.update({f"test_{name}": v for name, v in test.items()})
        job.reporter.record(record)
        due = every > 0 and k - last["checkpointed"] >= every
        if st is not None and (due or job.should_stop()):
            last["checkpointed"] = k
            job.checkpoints.write(
                st,
                k,
                run_counts=dict(tally),
                elapsed=record["time_s"],
                wandb_id=job.reporter.run_id,
            )

    state, status, run_counts = exact.run(
        key_run,
        state,
        x,
        y,
        log_prior=posterior.log_prior,
        log_likelihood=posterior.log_likelihood,
        plan=plan,
        config=config,
        bucket_sizes=(n,) if plan.path == "tempered" else exact.buckets(n, cfg.schedule.batch_size),
        num_particles=smc.num_particles,
        callback=callback,
        sync_every=cfg.log_every,
        state_every=job.state_every,
        should_stop=job.should_stop,
        counts=counts,
        elapsed=elapsed,
    )
    from bnn_bench.methods.smc import divergence_message

    raise_if_stopped(status, run_counts["iterations"], job.out_dir, divergence_message(cfg))
    path_grads = int(run_counts["example_grads"])  # the path's alone, before the sweeps
    if smc.budget is not None and path_grads > smc.budget:
        print(
            f"[bnn-bench] warning: the path alone spent {path_grads:.3g} example-gradients, "
            f"more than smc.budget={smc.budget:.3g} (it runs to its end to reach the posterior); "
            "no final sweeps beyond smc.final_sweeps were added",
            file=sys.stderr,
        )
    particles, log_weights = final_sweeps(
        job, state, x, y, key_run, config, run_counts, last.get("time_s", elapsed)
    )
    distinct = int(exact.distinct_particles(particles[-smc.num_particles :]))
    if distinct < smc.num_particles / 2:
        print(
            f"[bnn-bench] warning: the final cloud has {distinct} distinct particles of "
            f"{smc.num_particles}: the moves did not separate the resampled copies, so the "
            "weights' ESS overstates the sample (try a smaller proposal.step_size, more "
            "smc.num_mcmc_steps or proposal.mass=diag)",
            file=sys.stderr,
        )
    results = job.test_metrics(particles, log_weights, True)
    if cfg.save_posterior:
        job.write_posterior(particles, log_weights)
    final = exact.final_target(state, n)
    if not exact.path_finished(state, plan):
        final += f" (stopped at the iteration cap, {plan.max_iterations})"
    results.update(
        path=smc.path,
        schedule=None if smc.path == "tempered" else cfg.schedule.name,
        proposal=cfg.proposal.name,
        correction="mh",
        num_mcmc_steps=smc.num_mcmc_steps,
        num_particles=smc.num_particles,
        devices=len(state.particles.sharding.device_set),  # where the particles ended up
        final_sweeps=int(particles.shape[0]) // smc.num_particles - 1,  # the sweeps run
        num_draws=int(particles.shape[0]),  # the predictive's: J per cloud, 1 + final_sweeps clouds
        budget=smc.budget,
        path_example_grads=path_grads,  # example_grads less the final sweeps'
        budget_exceeded=None if smc.budget is None else path_grads > smc.budget,
        adapt_step_size=bool(cfg.proposal.adapt_step_size),
        mass=cfg.proposal.mass,
        step_size=float(state.step_size),
        trajectory_length=None if state.chees is None else float(state.chees.trajectory_length),
        log_evidence=float(state.log_evidence),
        final_target=final,
        ess_final=float(ess(state.log_weights)),
        distinct_particles=distinct,  # of the final cloud; min over the path's iterations:
        distinct_particles_min=last.get("distinct_min", distinct),
        **run_counts,
    )
    return results


def final_sweeps(job, state, x, y, key_run, config, run_counts, elapsed):
    """`smc.final_sweeps` more rounds of the moves on the final target (exact.final_sweep); the
    predictive then averages over the clouds after every sweep and the last one of the path.

    Returns (particles, log_weights) of all the clouds stacked, each cloud with the path's final
    weights (so each counts 1 / (1 + final_sweeps)). Every sweep is an iteration record and
    its gradients are in example_grads. On SIGTERM between sweeps the run stops with the path's
    end as its checkpoint: a resumed run repeats the sweeps with the same keys.
    """
    import time

    import jax
    import jax.numpy as jnp

    from bnn_bench.inference.smc import exact, moves
    from bnn_bench.lifecycle import raise_if_stopped
    from bnn_bench.metrics import ess

    cfg, t0 = job.cfg, time.perf_counter()
    num, budget = cfg.smc.final_sweeps, cfg.smc.budget

    def more(sweep: int) -> bool:  # smc.final_sweeps at least, then until the budget is spent
        spent = budget is not None and run_counts["example_grads"] >= budget
        return sweep < num or (budget is not None and not spent and sweep < MAX_BUDGET_SWEEPS)

    if not more(0):
        return state.particles, state.log_weights
    end, end_counts = state, dict(run_counts)
    rows = int(state.m_to)
    xs, ys = x[:rows], y[:rows]
    key = jax.random.fold_in(key_run, 2**31 - 1)  # iteration keys are fold_in(key_run, k)
    per_row = cfg.smc.num_particles * rows  # example-gradients per gradient of the cloud
    clouds = [state.particles]
    ess_end = float(ess(state.log_weights))
    sweep = 0
    while more(sweep):
        if job.should_stop():
            job.checkpoints.write(
                end,
                int(end.iteration),
                run_counts=end_counts,
                elapsed=elapsed,
                wandb_id=job.reporter.run_id,
            )
            raise_if_stopped("stopped", run_counts["iterations"], job.out_dir, "")
        state, info = exact.final_sweep(
            key,
            state,
            xs,
            ys,
            jnp.asarray(sweep, jnp.uint32),
            log_prior=job.posterior.log_prior,
            log_likelihood=job.posterior.log_likelihood,
            config=config,
        )
        clouds.append(state.particles)
        grads = moves.gradient_evaluations(config.move, int(info.leapfrog_steps))
        run_counts["example_grads"] += per_row * grads * int(info.move_rounds)
        record = {
            "iter": run_counts["iterations"] + sweep + 1,
            "sweep": sweep + 1,
            "batch_size": rows,
            "lambda": 1.0,
            "accept_mean": float(info.accept),
            "divergent": int(info.divergent),
            "step_size": float(info.step_size),
            "leapfrog_steps": int(info.leapfrog_steps),
            "move_rounds": int(info.move_rounds),
            "distinct_particles": int(info.distinct),
            "ess": ess_end,  # the sweeps leave the weights alone
            "progress": 1.0,
            "time_s": elapsed + time.perf_counter() - t0,
            "example_grads": run_counts["example_grads"],
        }
        if job.evaluate_every(sweep + 1):  # the predictive of the clouds so far
            pooled = jnp.concatenate(clouds), jnp.tile(state.log_weights, len(clouds))
            test = job.test_metrics(*pooled, False)
            record.update({f"test_{name}": v for name, v in test.items()})
        job.reporter.record(record)
        sweep += 1
    particles = jnp.concatenate(clouds)
    return particles, jnp.tile(state.log_weights, len(clouds))
