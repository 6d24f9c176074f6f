"""The one entrypoint: compose config -> data -> model/posterior -> infer -> evaluate -> report.

`main()` first composes and validates every job's config (each job of a multirun too), so that bad
input is answered with one line and exit code 2 before Hydra creates any output directory.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from bnn_bench.config import register_configs, validate, validate_against_data
from bnn_bench.errors import BnnBenchError, ConfigError

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
            for overrides in job_overrides(args.overrides, args.multirun):
                try:
                    cfg = compose(config_name="config", overrides=overrides)
                except BnnBenchError:
                    raise
                except Exception as exc:
                    raise ConfigError(hydra_error_line(exc)) from exc
                validate(cfg)
    except BnnBenchError:
        raise
    except Exception as exc:  # override syntax errors and the like
        raise ConfigError(hydra_error_line(exc)) from exc
    finally:
        GlobalHydra.instance().clear()


# ---------------------------------------------------------------------------------------------
# One job
# ---------------------------------------------------------------------------------------------


def _configure_jax(cfg: DictConfig) -> None:
    import jax

    platform = {"gpu": "cuda"}.get(cfg.hardware.platform, cfg.hardware.platform)
    jax.config.update("jax_platforms", platform)
    if cfg.hardware.dtype == "float64":
        jax.config.update("jax_enable_x64", True)


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
    )


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

    def __init__(self, out_dir: Path, cfg: DictConfig, total: int, wandb_run):
        from bnn_bench.tracking import MetricsFile, Progress

        self.metrics = MetricsFile(out_dir / "metrics.jsonl")
        self.progress = Progress(total, enabled=cfg.progress)
        self.wandb = wandb_run

    def record(self, record: dict[str, Any]) -> None:
        self.metrics.write(record)
        self.wandb.log(record, step=record["iter"])
        if "ess" in record:
            self.progress.update(record["iter"], record.get("batch_size", 0), record["ess"])

    def close(self) -> None:
        self.progress.close()
        self.metrics.close()


def run_smc(cfg: DictConfig, data, posterior, reporter: Reporter, out_dir: Path) -> dict[str, Any]:
    """Data-annealed SMC: returns the results.json fields that are specific to the method."""
    import jax
    import jax.numpy as jnp

    from bnn_bench.evaluate import evaluate
    from bnn_bench.inference.smc import loop, sampler, schedules
    from bnn_bench.inference.smc.proposals import Proposal
    from bnn_bench.posterior import make_log_target
    from bnn_bench.tracking import write_posterior

    s, smc = cfg.schedule, cfg.smc
    n = data.n_train
    if s.name in schedules.ADAPTIVE_SCHEDULES or proposal_from_config(cfg).adaptive:
        return run_smc_scheduled(cfg, data, posterior, reporter, out_dir)
    sizes = schedules.batch_sizes(
        s.name,
        num_data=n,
        num_iterations=smc.num_iterations,
        batch_size=s.batch_size,
        refine_at=s.refine_at,
        slope=s.slope,
    )
    config = sampler.SMCConfig(
        proposal=Proposal(cfg.proposal.num_steps, cfg.proposal.step_size),
        resample_threshold=smc.resample_threshold,
        resampler=smc.resampler,
        weights=smc.weights,
        chunk_size=cfg.hardware.particle_chunk,
        particle_map=particle_map(cfg),
    )
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    key_init, key_run = jax.random.split(jax.random.key(cfg.seed))
    state = sampler.init(key_init, posterior.prior_std, posterior.log_prior, smc.num_particles)
    counts = {"n_resample": 0, "iterations": 0, "ess_final": float(smc.num_particles)}

    def test_metrics(st) -> dict[str, float]:
        return evaluate(
            posterior,
            st.particles,
            st.log_weights,
            data.x_test,
            data.y_test,
            chunk_size=cfg.hardware.eval_chunk,
            particle_chunk=cfg.hardware.particle_chunk,
            particle_map=config.particle_map,
        )

    def callback(record, st):
        counts["n_resample"] += int(record["resampled"])
        counts["iterations"] = record["iter"]
        counts["ess_final"] = record["ess"]
        if st is not None and cfg.eval_every and record["iter"] % cfg.eval_every == 0:
            record.update({f"test_{k}": v for k, v in test_metrics(st).items()})
        reporter.record(record)

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
        state_every=cfg.eval_every,
    )
    if status == "diverged":
        raise RuntimeError(
            f"every particle diverged by iteration {counts['iterations']}: "
            f"try a smaller proposal.step_size (now {cfg.proposal.step_size})"
        )
    results = test_metrics(state)
    if cfg.save_posterior:
        write_posterior(out_dir / "posterior.npz", state.particles, state.log_weights)
    results.update(
        schedule=s.name,
        proposal=cfg.proposal.name,
        num_particles=smc.num_particles,
        example_grads=int(
            smc.num_particles * (cfg.proposal.num_steps + 1) * sizes[: counts["iterations"]].sum()
        ),
        **counts,
    )
    return results


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
    cfg: DictConfig, data, posterior, reporter: Reporter, out_dir: Path
) -> dict[str, Any]:
    """SMC whose batch size (adaptive schedules) or move (tuned proposals) adapts on the device."""
    import jax
    import jax.numpy as jnp

    from bnn_bench.evaluate import evaluate
    from bnn_bench.inference.smc import loop, sampler, schedules
    from bnn_bench.posterior import make_log_target
    from bnn_bench.tracking import write_posterior

    smc, n = cfg.smc, data.n_train
    plan = schedule_plan(cfg, n)
    config = sampler.SMCConfig(
        proposal=proposal_from_config(cfg),
        resample_threshold=smc.resample_threshold,
        resampler=smc.resampler,
        weights=smc.weights,
        chunk_size=cfg.hardware.particle_chunk,
        particle_map=particle_map(cfg),
    )
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    key_init, key_run = jax.random.split(jax.random.key(cfg.seed))
    state = sampler.init(key_init, posterior.prior_std, posterior.log_prior, smc.num_particles)
    run_state = sampler.init_run(state, plan, config.proposal)
    counts = {"n_resample": 0, "ess_final": float(smc.num_particles)}

    def test_metrics(st) -> dict[str, float]:
        return evaluate(
            posterior,
            st.particles,
            st.log_weights,
            data.x_test,
            data.y_test,
            chunk_size=cfg.hardware.eval_chunk,
            particle_chunk=cfg.hardware.particle_chunk,
            particle_map=config.particle_map,
        )

    def callback(record, rs):
        counts["n_resample"] += int(record["resampled"])
        counts["ess_final"] = record["ess"]
        if rs is not None and cfg.eval_every and record["iter"] % cfg.eval_every == 0:
            record.update({f"test_{k}": v for k, v in test_metrics(rs.smc).items()})
        reporter.record(record)

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
        state_every=cfg.eval_every,
    )
    if status == "diverged":
        raise RuntimeError(
            f"every particle diverged by iteration {run_counts['iterations']}: "
            f"try a smaller proposal.step_size (now {cfg.proposal.step_size})"
        )
    results = test_metrics(run_state.smc)
    if cfg.save_posterior:
        write_posterior(
            out_dir / "posterior.npz", run_state.smc.particles, run_state.smc.log_weights
        )
    results.update(
        schedule=plan.name,
        proposal=cfg.proposal.name,
        adapt_step_size=bool(cfg.proposal.adapt_step_size),
        mass=cfg.proposal.mass,
        num_particles=smc.num_particles,
        step_size=float(run_state.tuning.step_size),
        **run_counts,
        **counts,
    )
    return results


METHODS = {"smc": run_smc}


def run_job(cfg: DictConfig) -> dict[str, Any]:
    """Run one configured job end to end and write its results.json."""
    from hydra.core.hydra_config import HydraConfig

    from bnn_bench.tracking import WandbRun, write_json

    validate(cfg)
    _configure_jax(cfg)
    out_dir = _output_dir()
    data = load_data(cfg)
    validate_against_data(cfg, data.n_train)
    posterior = build_posterior(cfg, data)

    hc = HydraConfig.get()
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
    }
    wandb_run = WandbRun(
        mode=cfg.logger.mode if cfg.logger.name == "wandb" else "disabled",
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        group=group,
        job_type=job_type,
        name=name,
        config=OmegaConf.to_container(cfg, resolve=True),
        out_dir=out_dir,
    )
    reporter = Reporter(out_dir, cfg, cfg.smc.num_iterations, wandb_run)
    t0 = time.perf_counter()
    exit_code = 1
    try:
        try:
            results = METHODS[cfg.method.name](cfg, data, posterior, reporter, out_dir)
            status = "finished"
        finally:
            reporter.close()
        results = {**base, **results, "runtime_s": time.perf_counter() - t0, "status": status}
        write_json(out_dir / "results.json", results)
        wandb_run.summary(results)
        exit_code = 0
        return results
    except Exception as exc:
        failed = {**base, "runtime_s": time.perf_counter() - t0, "status": "failed"}
        failed["error"] = _one_line(exc)
        if "diverged" in failed["error"]:
            failed["status"] = "diverged"
        write_json(out_dir / "results.json", failed)
        wandb_run.summary(failed)
        raise
    finally:
        wandb_run.finish(exit_code)


def wandb_names(cfg: DictConfig, *, multirun: bool, sweep_dir: str) -> tuple[str, str, str]:
    """W&B (group, job_type, name).

    group: logger.group, else the experiment, else the sweep directory's name in a multirun (one
    group per sweep), else "default". job_type: method/schedule.
    """
    group = cfg.logger.group or cfg.experiment or (Path(sweep_dir).name if multirun else "default")
    schedule = cfg.get("schedule", {}).get("name")
    job_type = "/".join(str(v) for v in (cfg.method.name, schedule) if v)
    parts = [job_type.replace("/", "-"), cfg.get("proposal", {}).get("name"), f"seed{cfg.seed}"]
    return str(group), job_type, "-".join(str(p) for p in parts if p)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _print_summary(results: dict[str, Any], out_dir: Path) -> None:
    keys = ("accuracy", "rmse", "nll", "ece", "brier", "runtime_s", "example_grads", "ess_final")
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
    except Exception as exc:
        if os.environ.get("BNN_BENCH_TRACEBACK"):
            traceback.print_exc()
        _say(_one_line(exc))
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
    main()
