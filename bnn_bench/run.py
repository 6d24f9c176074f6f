"""The one entrypoint: compose config -> data -> model/posterior -> infer -> evaluate -> report.

`main()` first composes and validates every job's config (each job of a multirun too), so that bad
input is answered with one line and exit code 2 before Hydra creates any output directory.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from bnn_bench.checkpoint import Checkpoints
from bnn_bench.config import register_configs, validate, validate_against_data
from bnn_bench.errors import BnnBenchError, ConfigError, RunDiverged, RunInterrupted
from bnn_bench.plots import run_plots

_PACKAGE_DIR = Path(__file__).resolve().parent
# A wheel carries conf/ as bnn_bench/conf (pyproject's package-dir); a source checkout or an
# editable install finds it beside the package.
CONFIG_DIR = next(
    (
        str(d)
        for d in (_PACKAGE_DIR / "conf", _PACKAGE_DIR.parent / "conf")
        if (d / "config.yaml").exists()
    ),
    str(_PACKAGE_DIR / "conf"),
)
EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 143  # 128 + SIGTERM, as a shell reports a job killed by it
_failed_jobs: list[str] = []

register_configs()


def _say(message: str) -> None:
    print(f"bnn-bench: error: {message}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Up-front validation (no output directory is created for a config that fails here)
# ---------------------------------------------------------------------------------------------


def hydra_error_line(exc: BaseException) -> str:
    """Condense a Hydra/OmegaConf composition error into one line naming the key and the problem."""
    msg = str(exc).strip()
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    if "Could not find" in msg and "Available options in" in msg:
        # "In 'config': Could not find 'method/foo'" + "Available options in 'method':" + names
        missing = msg.split("Could not find '", 1)[1].split("'", 1)[0]
        group, _, option = missing.rpartition("/")
        start = next(i for i, ln in enumerate(lines) if ln.startswith("Available options"))
        options = []
        for ln in lines[start + 1 :]:
            if ln.startswith("Config search path") or ":" in ln:
                break
            options.append(ln)
        return f"{group}={option} is not an option; choose one of: {', '.join(options)}"
    if "Could not find" in msg:
        return lines[0].replace("In 'config': ", "")
    cause = exc.__cause__
    if cause is not None and str(cause).strip():
        cause_lines = [ln.strip() for ln in str(cause).splitlines() if ln.strip()]
        key = next(
            (ln.split(":", 1)[1].strip() for ln in cause_lines if ln.startswith("full_key")), ""
        )
        what = cause_lines[0]
        if "not in struct" in what:
            return f"{key or lines[0]}: unknown key (`bnn-bench --help` lists the keys)"
        return f"{key}: {what}" if key and key not in what else what
    return lines[0] if lines else type(exc).__name__


def job_overrides(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override list of every job a command line describes (sweeps expanded)."""
    if not multirun:
        return [overrides]
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides=overrides)
    batches = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [job for batch in batches for job in batch]


def preflight(argv: list[str]) -> None:
    """Compose and validate the config of every job the command line asks for; raise on error."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.core.global_hydra import GlobalHydra

    args, _ = get_args_parser().parse_known_args(argv)
    if args.help or args.hydra_help or args.cfg or args.info or args.shell_completion:
        return
    if args.config_path or args.config_dir or args.config_name:
        return  # user-supplied config sources: Hydra reports their errors itself
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            jobs = job_overrides(args.overrides, args.multirun)
            if args.multirun:
                jobs = _with_sweeper_params(compose, args.overrides, jobs[0])
            for overrides in jobs:
                try:
                    cfg = compose(config_name="config", overrides=overrides)
                except BnnBenchError:
                    raise
                except Exception as exc:
                    raise ConfigError(hydra_error_line(exc)) from exc
                validate(cfg)
            hydra_cfg = compose(
                config_name="config", overrides=overrides, return_hydra_config=True
            ).hydra
            key = "hydra.sweep.dir" if args.multirun else "hydra.run.dir"
            check_creatable(key, hydra_cfg.sweep.dir if args.multirun else hydra_cfg.run.dir)
    except BnnBenchError:
        raise
    except Exception as exc:  # override syntax errors and the like
        raise ConfigError(hydra_error_line(exc)) from exc
    finally:
        GlobalHydra.instance().clear()


def _with_sweeper_params(compose, overrides: list[str], first_job: list[str]) -> list[list[str]]:
    """Every job of a multirun, with the sweep a preset declares in `hydra.sweeper.params`.

    As Hydra's BasicSweeper does: the params come first and the command line's overrides after
    them, so a key given on the command line (e.g. proposal=hmc) replaces the preset's sweep.
    """
    try:
        params = compose(config_name="config", overrides=first_job, return_hydra_config=True)
        params = params.hydra.sweeper.get("params") or {}
    except Exception as exc:
        raise ConfigError(hydra_error_line(exc)) from exc
    swept = [f"{key}={value}" for key, value in params.items()]
    return job_overrides([*swept, *overrides], multirun=True)


def check_creatable(key: str, directory: str) -> None:
    """Refuse an output directory that cannot be made (its nearest existing parent must be a
    writable directory), before Hydra tries and fails with a traceback."""
    path = Path(directory).absolute()
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        what = "not a directory" if not parent.is_dir() else "not writable"
        raise ConfigError(f"{key}={directory} cannot be created: {parent} is {what}")


# ---------------------------------------------------------------------------------------------
# One job
# ---------------------------------------------------------------------------------------------


def _configure_jax(cfg: DictConfig, job_num: int) -> list[int] | None:
    """Cores, platform, dtype, compilation cache, multi-host; returns the pinned cores if any."""
    import jax

    from bnn_bench import hardware

    h = cfg.hardware
    cores = hardware.pin_cores(h.cores_per_job, job_num) if h.cores_per_job else None
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # no "no TPU" notices
    platform = {"gpu": "cuda"}.get(h.platform, h.platform)
    jax.config.update("jax_platforms", platform)
    if h.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    if h.compilation_cache:
        hardware.enable_compilation_cache(h.compilation_cache)
    if h.distributed:
        jax.distributed.initialize()  # coordinator and process ids from SLURM's environment
    hardware.check_devices(h.devices, cfg.smc.num_particles)
    return cores


def _output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    out = Path(HydraConfig.get().runtime.output_dir)
    probe = out / ".write_test"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"output directory {out} is not writable ({exc.strerror})") from exc
    return out


def load_data(cfg: DictConfig):
    """The dataset in the layout the model wants, checked against the likelihood."""
    from bnn_bench.data import load_dataset
    from bnn_bench.models import model_layout

    d = cfg.dataset
    options = {"task": d.task} if d.task else {}
    if d.name == "synthetic_regression":
        options.update(dim=d.dim, noise_std=d.noise_std)
    data = load_dataset(
        d.name,
        layout=model_layout(cfg.model.name),
        root=d.root,
        path=d.path,
        n_train=d.n_train,
        n_test=d.n_test,
        test_fraction=d.test_fraction,
        seed=cfg.seed,
        standardize_inputs=d.standardize.inputs,
        standardize_targets=d.standardize.targets,
        **options,
    )
    wanted = {"categorical": "classification", "gaussian": "regression"}[cfg.likelihood.name]
    if data.task != wanted:
        other = "gaussian" if wanted == "classification" else "categorical"
        raise ConfigError(
            f"likelihood={cfg.likelihood.name} needs a {wanted} dataset but dataset={d.name} is "
            f"{data.task}; use likelihood={other}"
        )
    return data


def build_posterior(cfg: DictConfig, data):
    from bnn_bench.models import build_model
    from bnn_bench.posterior import make_posterior

    num_outputs = data.num_classes if data.task == "classification" else 1
    options = {"hidden": list(cfg.model.hidden)} if cfg.model.name == "mlp" else {}
    model = build_model(cfg.model.name, num_outputs, **options)
    return make_posterior(
        model,
        data.x_train[:1],
        likelihood=cfg.likelihood.name,
        noise_std=cfg.likelihood.noise_std,
        prior_std=cfg.prior.std,
        prior_scale=cfg.prior.scale,
        compute_dtype=cfg.hardware.dtype,
    )


def standardization_arrays(data) -> dict:
    """The means and stds the data was standardised with, as posterior.npz stores them."""
    s = data.standardization
    return {
        key: np.asarray(s[key], np.float64)
        for key in ("x_mean", "x_std", "y_mean", "y_std")
        if s.get(key) is not None
    }


def particle_map(cfg: DictConfig) -> str:
    """hardware.particle_map, with auto resolved: unroll convolutional models on CPU, else vmap."""
    from bnn_bench.models import model_layout

    choice = cfg.hardware.particle_map
    if choice != "auto":
        return choice
    conv_on_cpu = model_layout(cfg.model.name) == "image" and cfg.hardware.platform == "cpu"
    return "unroll" if conv_on_cpu else "vmap"


class Reporter:
    """Sends every record to metrics.jsonl, W&B and the progress bar."""

    def __init__(self, out_dir: Path, cfg: DictConfig, total: int, wandb_run, start: int = 0):
        from bnn_bench.tracking import MetricsFile, Progress

        self.metrics = MetricsFile(out_dir / "metrics.jsonl")
        self.progress = Progress(total, enabled=cfg.progress, start=start)
        self.wandb = wandb_run
        self.run_id = wandb_run.run_id

    def record(self, record: dict[str, Any]) -> None:
        self.metrics.write(record)
        self.wandb.log(record, step=record["iter"])
        if "ess" in record:
            self.progress.update(record["iter"], record.get("batch_size", 0), record["ess"])
        elif "neg_elbo" in record:
            self.progress.update(
                record["iter"], record["batch_size"], record["neg_elbo"], label="neg_elbo"
            )

    def close(self) -> None:
        self.progress.close()
        self.metrics.close()


def evaluate_on_test(cfg: DictConfig, data, posterior, particles, log_weights, reliability):
    """Test metrics of a weighted particle set, streamed as hardware.* says (every method)."""
    from bnn_bench.evaluate import evaluate

    return evaluate(
        posterior,
        particles,
        log_weights,
        data.x_test,
        data.y_test,
        chunk_size=cfg.hardware.eval_chunk,
        particle_chunk=cfg.hardware.particle_chunk,
        particle_map=particle_map(cfg),
        reliability=reliability,
        target_shift=data.y_mean,
        target_scale=data.y_std,
    )


def smc_config(cfg: DictConfig, proposal):
    """The sampler's static settings from the config, with the given proposal."""
    from bnn_bench.inference.smc import sampler

    smc = cfg.smc
    return sampler.SMCConfig(
        proposal=proposal,
        resample_threshold=smc.resample_threshold,
        resampler=smc.resampler,
        weights=smc.weights,
        chunk_size=cfg.hardware.particle_chunk,
        particle_map=particle_map(cfg),
        data_chunk=cfg.hardware.data_chunk,
    )


def run_smc(
    cfg: DictConfig, data, posterior, reporter: Reporter, out_dir: Path, checkpoints: Checkpoints
) -> dict[str, Any]:
    """Data-annealed SMC: returns the results.json fields that are specific to the method."""
    import jax
    import jax.numpy as jnp

    from bnn_bench.hardware import shard_particles
    from bnn_bench.inference.smc import loop, sampler, schedules
    from bnn_bench.inference.smc.proposals import Proposal
    from bnn_bench.posterior import make_log_target
    from bnn_bench.tracking import write_posterior

    s, smc = cfg.schedule, cfg.smc
    n = data.n_train
    if s.name in schedules.ADAPTIVE_SCHEDULES or proposal_from_config(cfg).adaptive:
        return run_smc_scheduled(cfg, data, posterior, reporter, out_dir, checkpoints)
    sizes = schedules.batch_sizes(
        s.name,
        num_data=n,
        num_iterations=smc.num_iterations,
        batch_size=s.batch_size,
        refine_at=s.refine_at,
        slope=s.slope,
    )
    config = smc_config(cfg, Proposal(cfg.proposal.num_steps, cfg.proposal.step_size))
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    key_init, key_run = jax.random.split(jax.random.key(cfg.seed))
    state = sampler.init(key_init, posterior.prior_std, posterior.log_prior, smc.num_particles)
    counts = {"n_resample": 0, "iterations": 0, "ess_final": float(smc.num_particles)}
    progress = {"example_grads": 0, "elapsed": 0.0}
    if checkpoints.resumed is not None:
        state, meta = checkpoints.read(state)
        counts.update(meta["counts"])
        progress.update(meta["progress"])
    if cfg.hardware.devices > 1:
        state, (x, y) = shard_particles(state, (x, y), cfg.hardware.devices)

    def test_metrics(st, reliability: bool = False) -> dict[str, float]:
        return evaluate_on_test(cfg, data, posterior, st.particles, st.log_weights, reliability)

    def callback(record, st):
        k = record["iter"]
        counts["n_resample"] += int(record["resampled"])
        counts["iterations"] = k
        counts["ess_final"] = record["ess"]
        if st is not None and cfg.eval_every and k % cfg.eval_every == 0:
            record.update({f"test_{name}": v for name, v in test_metrics(st).items()})
        reporter.record(record)
        if st is not None and (checkpoints.due(k) or STOP.is_set()):
            done = {"example_grads": record["example_grads"], "elapsed": record["time_s"]}
            checkpoints.write(st, k, counts=counts, progress=done, wandb_id=reporter.run_id)

    state, status = loop.run(
        key_run,
        state,
        x,
        y,
        sizes,
        log_target=make_log_target(posterior, n),
        config=config,
        bucket_sizes=schedules.buckets(n, s.batch_size),
        callback=callback,
        sync_every=cfg.log_every,
        state_at=lambda k: checkpoints.due(k) or bool(cfg.eval_every and k % cfg.eval_every == 0),
        should_stop=STOP.is_set,
        start=counts["iterations"],
        **progress,
    )
    raise_if_stopped(status, counts["iterations"], out_dir, smc_divergence(cfg))
    results = test_metrics(state, reliability=True)
    if cfg.save_posterior:
        write_posterior(
            out_dir / "posterior.npz",
            state.particles,
            state.log_weights,
            **standardization_arrays(data),
        )
    results.update(
        schedule=s.name,
        proposal=cfg.proposal.name,
        devices=len(state.particles.sharding.device_set),  # where the particles ended up
        num_particles=smc.num_particles,
        example_grads=int(
            smc.num_particles * (cfg.proposal.num_steps + 1) * sizes[: counts["iterations"]].sum()
        ),
        **counts,
    )
    return results


def smc_divergence(cfg: DictConfig) -> str:
    """The diverged message of both SMC paths ({iteration} is filled in by raise_if_stopped)."""
    return (
        "every particle diverged by iteration {iteration}: "
        f"try a smaller proposal.step_size (now {cfg.proposal.step_size})"
    )


def raise_if_stopped(status: str, iteration: int, out_dir: Path, divergence: str) -> None:
    """Turn a run loop's "diverged" or "interrupted" status into the job's one-line error."""
    if status == "diverged":
        raise RunDiverged(divergence.format(iteration=iteration))
    if status == "interrupted":
        raise RunInterrupted(
            f"interrupted by SIGTERM at iteration {iteration}; checkpoint written; "
            f"continue with resume=true hydra.run.dir={out_dir}"
        )


def proposal_from_config(cfg: DictConfig):
    from bnn_bench.inference.smc.proposals import Proposal

    p = cfg.proposal
    return Proposal(
        num_steps=p.num_steps,
        step_size=p.step_size,
        name=p.name,
        adapt_step_size=p.adapt_step_size,
        target_accept=p.target_accept,
        adapt_rate=p.adapt_rate,
        mass=p.mass,
        max_steps=p.max_steps,
        learning_rate=p.learning_rate,
    )


def schedule_plan(cfg: DictConfig, num_data: int):
    """The schedule's static plan; refine_iterations null means K - floor(refine_at K) (as ctr)."""
    from bnn_bench.inference.smc import schedules

    s, k = cfg.schedule, cfg.smc.num_iterations
    refine = s.refine_iterations
    if refine is None:
        refine = max(1, k - schedules.refine_start(k, s.refine_at))
    return schedules.SchedulePlan(
        name=s.name,
        num_data=num_data,
        num_iterations=k,
        batch_size=s.batch_size,
        noise_tol=s.noise_tol,
        entropy_tol=s.entropy_tol,
        window=s.window,
        growth=s.growth,
        refine_iterations=refine,
        signal=s.signal,
        loglik_tol=s.loglik_tol,
        refine_at=s.refine_at,
        slope=s.slope,
    )


def run_smc_scheduled(
    cfg: DictConfig, data, posterior, reporter: Reporter, out_dir: Path, checkpoints: Checkpoints
) -> dict[str, Any]:
    """SMC whose batch size (adaptive schedules) or move (tuned proposals) adapts on the device."""
    import jax
    import jax.numpy as jnp

    from bnn_bench.hardware import shard_particles
    from bnn_bench.inference.smc import loop, sampler, schedules
    from bnn_bench.posterior import make_log_target
    from bnn_bench.tracking import write_posterior

    smc, n = cfg.smc, data.n_train
    plan = schedule_plan(cfg, n)
    config = smc_config(cfg, proposal_from_config(cfg))
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    key_init, key_run = jax.random.split(jax.random.key(cfg.seed))
    state = sampler.init(key_init, posterior.prior_std, posterior.log_prior, smc.num_particles)
    run_state = sampler.init_run(state, plan, config.proposal)
    counts = {"n_resample": 0, "ess_final": float(smc.num_particles)}
    resumed = {"counts": None, "elapsed": 0.0}
    if checkpoints.resumed is not None:
        run_state, meta = checkpoints.read(run_state)  # particles, schedule state, tuning
        counts.update(meta["counts"])
        resumed.update(counts=meta["run_counts"], elapsed=meta["elapsed"])
    if cfg.hardware.devices > 1:  # particles split across devices; schedule and tuning replicated
        smc_state, (x, y, schedule, tuning) = shard_particles(
            run_state.smc, (x, y, run_state.schedule, run_state.tuning), cfg.hardware.devices
        )
        run_state = run_state._replace(smc=smc_state, schedule=schedule, tuning=tuning)

    def test_metrics(st, reliability: bool = False) -> dict[str, float]:
        return evaluate_on_test(cfg, data, posterior, st.particles, st.log_weights, reliability)

    def callback(record, rs):
        k = record["iter"]
        counts["n_resample"] += int(record["resampled"])
        counts["ess_final"] = record["ess"]
        if rs is not None and cfg.eval_every and k % cfg.eval_every == 0:
            record.update({f"test_{name}": v for name, v in test_metrics(rs.smc).items()})
        reporter.record(record)
        if rs is not None and (checkpoints.due(k) or STOP.is_set()):
            run_counts = {"iterations": k, "example_grads": record["example_grads"]}
            run_counts["wasted_steps"] = record["wasted_steps"]
            checkpoints.write(
                rs,
                k,
                counts=counts,
                run_counts=run_counts,
                elapsed=record["time_s"],
                wandb_id=reporter.run_id,
            )

    bucket_sizes = schedules.buckets(n, cfg.schedule.batch_size)
    if plan.name in schedules.ADAPTIVE_SCHEDULES:  # only the buckets the schedule can reach
        reachable = schedules.reachable_batch_sizes(plan)
        bucket_sizes = tuple(sorted({schedules.bucket_for(m, bucket_sizes) for m in reachable}))
    run_state, status, run_counts = loop.run_scheduled(
        key_run,
        run_state,
        x,
        y,
        log_target=make_log_target(posterior, n, terms=True),
        config=config,
        plan=plan,
        bucket_sizes=bucket_sizes,
        callback=callback,
        sync_every=cfg.log_every,
        state_every=math.gcd(cfg.eval_every, checkpoints.every),
        should_stop=STOP.is_set,
        counts=resumed["counts"],
        elapsed=resumed["elapsed"],
    )
    raise_if_stopped(status, run_counts["iterations"], out_dir, smc_divergence(cfg))
    results = test_metrics(run_state.smc, reliability=True)
    if cfg.save_posterior:
        write_posterior(
            out_dir / "posterior.npz",
            run_state.smc.particles,
            run_state.smc.log_weights,
            **standardization_arrays(data),
        )
    results.update(
        schedule=plan.name,
        proposal=cfg.proposal.name,
        devices=len(run_state.smc.particles.sharding.device_set),  # where the particles ended up
        adapt_step_size=bool(cfg.proposal.adapt_step_size),
        mass=cfg.proposal.mass,
        num_particles=smc.num_particles,
        step_size=float(run_state.tuning.step_size),
        **run_counts,
        **counts,
    )
    return results


def run_vi(
    cfg: DictConfig, data, posterior, reporter: Reporter, out_dir: Path, checkpoints: Checkpoints
) -> dict[str, Any]:
    """Score-based VI (vi.algorithm): returns the results.json fields specific to the method."""

    import jax
    import jax.numpy as jnp
    import numpy as np

    from bnn_bench.inference.vi import ALGORITHMS, family, loop
    from bnn_bench.posterior import make_log_target
    from bnn_bench.tracking import read_metrics, write_vi_posterior

    vi = cfg.vi
    n = data.n_train
    rank = vi.rank if vi.family == "lowrank" else 0
    config = family.VIConfig(
        num_samples=vi.num_samples,
        batch_size=min(vi.batch_size, n),
        prox_weight=vi.prox_weight,
        prox_growth=vi.prox_growth,
        inner_steps=vi.inner_steps,
        learning_rate=vi.learning_rate,
        family=vi.family,
        rank=rank,
        sample_map="unroll" if particle_map(cfg) == "unroll" else "scan",
    )
    algorithm = ALGORITHMS[vi.algorithm]
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    key_init, key_run, key_pred = jax.random.split(jax.random.key(cfg.seed), 3)
    q0 = family.initial_gaussian(key_init, posterior.prior_std, vi.init_std, rank)
    state = algorithm.init(q0, config)
    history: list[dict[str, Any]] = []
    progress = {"example_grads": 0, "elapsed": 0.0, "rejected_run": 0}
    if checkpoints.resumed is not None:
        state, meta = checkpoints.read(state)  # q and the optimiser state
        progress.update(meta["progress"])
        history = read_metrics(out_dir / "metrics.jsonl")

    def test_metrics(q, reliability: bool = False) -> dict[str, float]:
        samples = family.sample(key_pred, q, vi.num_predictive_samples)
        weights = jnp.zeros(vi.num_predictive_samples)  # equally weighted draws from q
        return evaluate_on_test(cfg, data, posterior, samples, weights, reliability)

    def callback(record, st):
        k = record["iter"]
        history.append(record)
        if st is not None and cfg.eval_every and k % cfg.eval_every == 0:
            record.update({f"test_{name}": v for name, v in test_metrics(st.q).items()})
        reporter.record(record)
        if st is not None and (checkpoints.due(k) or STOP.is_set()):
            done = {key: record[key] for key in ("example_grads", "rejected_run")}
            done["elapsed"] = record["time_s"]
            checkpoints.write(st, k, progress=done, wandb_id=reporter.run_id)

    state, status = loop.run(
        key_run,
        algorithm,
        state,
        x,
        y,
        vi.num_iterations,
        log_target=make_log_target(posterior, n),
        config=config,
        callback=callback,
        sync_every=cfg.log_every,
        state_at=lambda k: checkpoints.due(k) or bool(cfg.eval_every and k % cfg.eval_every == 0),
        should_stop=STOP.is_set,
        start=checkpoints.resumed["iteration"] if checkpoints.resumed else 0,
        **progress,
    )
    last = history[-1]["iter"] if history else 0
    vi_divergence = (
        f"diverged: the {vi.algorithm} update was not finite 10 times in a row by "
        "iteration {iteration}; try a larger vi.prox_weight or a smaller vi.learning_rate"
    )
    raise_if_stopped(status, last, out_dir, vi_divergence)
    results = test_metrics(state.q, reliability=True)
    if cfg.save_posterior:
        samples = family.sample(key_pred, state.q, vi.num_predictive_samples)
        write_vi_posterior(
            out_dir / "posterior.npz", state.q, samples, **standardization_arrays(data)
        )
    tail = history[-max(1, len(history) // 10) :]  # the last 10% of iterations
    results.update(
        algorithm=vi.algorithm,
        family=vi.family,
        rank=rank,
        num_samples=vi.num_samples,
        batch_size=config.batch_size,
        iterations=len(history),
        example_grads=history[-1]["example_grads"] if history else 0,
        neg_elbo=float(np.mean([r["neg_elbo"] for r in tail])),
        score_loss=float(np.mean([r["score_loss"] for r in tail])),
        n_rejected=sum(int(r["rejected"]) for r in history),
        devices=len(jax.tree.leaves(state.q)[0].sharding.device_set),  # VI does not split q
    )
    return results


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (ru_maxrss: KiB on Linux, bytes on macOS).

    A process-wide high-water mark: in a multirun with the basic launcher (jobs share one
    process) a job reports the largest peak of the sweep so far; measure memory in single runs."""
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def num_iterations(cfg: DictConfig) -> int:
    """The iteration count of the configured method (the progress bar's total)."""
    return cfg.vi.num_iterations if cfg.method.name == "vi" else cfg.smc.num_iterations


METHODS = {"smc": run_smc, "vi": run_vi}


def run_job(cfg: DictConfig) -> dict[str, Any]:
    """Run one configured job end to end and write its results.json."""
    from hydra.core.hydra_config import HydraConfig

    from bnn_bench.tracking import WandbRun, new_run_id, truncate_metrics, write_json

    hc = HydraConfig.get()
    validate(cfg)
    cores = _configure_jax(cfg, job_num=hc.job.num if hc.mode.name == "MULTIRUN" else 0)
    out_dir = _output_dir()
    config = OmegaConf.to_container(cfg, resolve=True)
    checkpoints = Checkpoints(out_dir / "checkpoint.npz", config, cfg.checkpoint_every)
    resumed = _resume_point(cfg, out_dir, checkpoints)
    data = load_data(cfg)
    validate_against_data(cfg, data.n_train)
    posterior = build_posterior(cfg, data)
    truncate_metrics(out_dir / "metrics.jsonl", after=resumed["iteration"] if resumed else 0)

    group, job_type, name = wandb_names(
        cfg, multirun=hc.mode.name == "MULTIRUN", sweep_dir=hc.sweep.dir
    )
    base = {
        "method": cfg.method.name,
        "experiment": cfg.experiment,
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "seed": cfg.seed,
        "n_train": data.n_train,
        "n_test": int(len(data.y_test)),
        "n_params": posterior.dim,
        "standardization": data.standardization,
        **({"cores": cores} if cores else {}),
    }
    wandb_run = WandbRun(
        mode=cfg.logger.mode if cfg.logger.name == "wandb" else "disabled",
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        group=group,
        job_type=job_type,
        name=name,
        config=config,
        out_dir=out_dir,
        run_id=resumed.get("wandb_id") if resumed else new_run_id(),
        resume=resumed is not None,
    )
    start = resumed["iteration"] if resumed else 0
    reporter = Reporter(out_dir, cfg, num_iterations(cfg), wandb_run, start=start)
    t0 = time.perf_counter()
    exit_code = 1
    try:
        with _sigterm_sets_stop():
            try:
                method = METHODS[cfg.method.name]
                results = method(cfg, data, posterior, reporter, out_dir, checkpoints)
                status = "finished"
            finally:
                reporter.close()
        results = {**base, **results, "runtime_s": time.perf_counter() - t0, "status": status}
        results["peak_rss_mb"] = peak_rss_mb()  # every method: the memory issue compares J and N
        write_json(out_dir / "results.json", results)
        wandb_run.summary(results)
        wandb_run.images(run_plots(out_dir))  # ess_batch.png, reliability.png from the files
        exit_code = 0
        return results
    except Exception as exc:
        status = {RunDiverged: "diverged", RunInterrupted: "interrupted"}.get(type(exc), "failed")
        failed = {**base, "runtime_s": time.perf_counter() - t0, "status": status}
        failed["error"] = _one_line(exc)
        write_json(out_dir / "results.json", failed)
        wandb_run.summary(failed)
        raise
    finally:
        wandb_run.finish(exit_code)


def _resume_point(cfg: DictConfig, out_dir: Path, checkpoints: Checkpoints) -> dict | None:
    """The checkpoint metadata to resume from (resume=true), or None for a fresh run.

    A fresh run refuses a directory that already holds a run, so that nothing is overwritten.
    """
    if not cfg.resume:
        held = [f for f in ("checkpoint.npz", "results.json") if (out_dir / f).exists()]
        if held:
            raise ConfigError(
                f"output directory {out_dir} already holds a run ({held[0]}); pass resume=true "
                "to continue it, or choose another hydra.run.dir"
            )
        return None
    if not checkpoints.exists():
        print(f"[bnn-bench] resume: no checkpoint in {out_dir}; starting afresh", file=sys.stderr)
        return None
    meta = checkpoints.peek()
    print(f"[bnn-bench] resume: continuing from iteration {meta['iteration']}", file=sys.stderr)
    return meta


# Set by SIGTERM (a preempted cluster job): the run loop writes a checkpoint and stops.
STOP = threading.Event()


@contextlib.contextmanager
def _sigterm_sets_stop():
    STOP.clear()
    previous = signal.signal(signal.SIGTERM, lambda *_: STOP.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def wandb_names(cfg: DictConfig, *, multirun: bool, sweep_dir: str) -> tuple[str, str, str]:
    """W&B (group, job_type, name).

    group: logger.group, else the experiment, else the sweep directory's name in a multirun (one
    group per sweep), else "default". job_type: method/schedule.
    """
    group = cfg.logger.group or cfg.experiment or (Path(sweep_dir).name if multirun else "default")
    if cfg.method.name == "vi":  # job_type: vi/algorithm
        schedule, proposal = cfg.vi.algorithm, None
    else:
        schedule, proposal = (
            cfg.get("schedule", {}).get("name"),
            cfg.get("proposal", {}).get("name"),
        )
    job_type = "/".join(str(v) for v in (cfg.method.name, schedule) if v)
    parts = [job_type.replace("/", "-"), proposal, f"seed{cfg.seed}"]
    return str(group), job_type, "-".join(str(p) for p in parts if p)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _print_summary(results: dict[str, Any], out_dir: Path) -> None:
    keys = ("accuracy", "rmse", "nll", "ece", "brier", "runtime_s", "example_grads", "ess_final")
    keys += ("neg_elbo", "peak_rss_mb")
    shown = ", ".join(
        f"{k}={results[k]:.4g}" if isinstance(results[k], float) else f"{k}={results[k]}"
        for k in keys
        if k in results
    )
    print(f"[bnn-bench] {results['method']} done: {shown}", file=sys.stderr)
    print(f"[bnn-bench] results: {out_dir / 'results.json'}", file=sys.stderr)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _hydra_entry(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    multirun = HydraConfig.get().mode.name == "MULTIRUN"
    try:
        results = run_job(cfg)
        _print_summary(results, Path(HydraConfig.get().runtime.output_dir))
    except BnnBenchError as exc:
        _say(str(exc))
        if not multirun:
            sys.exit(EXIT_USAGE)
        _failed_jobs.append(HydraConfig.get().runtime.output_dir)
    except RunInterrupted as exc:
        _say(str(exc))
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:
        if os.environ.get("BNN_BENCH_TRACEBACK"):
            traceback.print_exc()
        _say(str(exc) if isinstance(exc, RunDiverged) else _one_line(exc))
        if not multirun:
            sys.exit(EXIT_FAILED)
        _failed_jobs.append(HydraConfig.get().runtime.output_dir)


def main(argv: list[str] | None = None) -> None:
    """Console entry point `bnn-bench`."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        preflight(argv)
    except BnnBenchError as exc:
        _say(str(exc))
        sys.exit(EXIT_USAGE)
    sys.argv = [sys.argv[0], *argv]
    _hydra_entry()
    if _failed_jobs:
        _say(f"{len(_failed_jobs)} job(s) failed: {', '.join(_failed_jobs)}")
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy's: Hydra launchers that pickle the
    # job function (joblib, submitit) need it to live in bnn_bench.run.
    from bnn_bench.run import main as _main

    _main()
