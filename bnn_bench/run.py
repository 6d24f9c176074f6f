"""One job end to end: configure -> build -> METHODS[name].run -> evaluate -> results.json.

The console entry is bnn_bench.cli; `python -m bnn_bench.run` still works as an alias of it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bnn_bench import build, hardware, rundir
from bnn_bench.backend import cpu_scheduler_in_effect
from bnn_bench.checkpoint import Checkpoints
from bnn_bench.config import validate
from bnn_bench.lifecycle import STOP, one_line, results_ready, status_of, stop_on_signals
from bnn_bench.methods import METHODS, Job
from bnn_bench.plots import run_plots
from bnn_bench.tracking import (
    Reporter,
    WandbRun,
    new_run_id,
    truncate_metrics,
    wandb_names,
    write_json,
)


def run_job(cfg: DictConfig) -> dict[str, Any]:
    """Run one configured job end to end and write its results.json; returns its results.
    SIGTERM and SIGINT stop it cleanly from its first line to its last (lifecycle)."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    with stop_on_signals(Path(hc.runtime.output_dir)):
        return _run_job(cfg, hc)


def _run_job(cfg: DictConfig, hc) -> dict[str, Any]:
    multirun = hc.mode.name == "MULTIRUN"
    validate(cfg)
    method = METHODS[cfg.method.name]
    cores = hardware.configure(
        cfg.hardware, job_num=hc.job.num if multirun else 0, cpu_scheduler=build.cpu_scheduler(cfg)
    )
    out_dir = rundir.output_dir(Path(hc.runtime.output_dir))
    config = OmegaConf.to_container(cfg, resolve=True)
    checkpoints = Checkpoints(out_dir / "checkpoint.npz", config, cfg.checkpoint_every)
    resumed = rundir.resume_point(out_dir, checkpoints, resume=cfg.resume, overwrite=cfg.overwrite)
    data = build.load_data(cfg)
    reference = build.reference(cfg)
    build.check_reference(cfg, data, reference)  # a reference of another target: refused here
    method.check_data(cfg, data)
    posterior = build.posterior(cfg, data)
    start = resumed["iteration"] if resumed else 0
    if resumed is None and cfg.overwrite:
        rundir.clear_replaced(out_dir)  # every check passed: the old run may go now
    truncate_metrics(out_dir / "metrics.jsonl", after=start)

    group, job_type, name = wandb_names(
        cfg, method.labels(cfg), multirun=multirun, sweep_dir=hc.sweep.dir
    )
    base = {
        "method": cfg.method.name,
        "experiment": cfg.experiment,
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "seed": cfg.seed,
        "n_train": data.n_train,
        "n_test": int(len(data.y_test)),
        # the metrics' split: "val" when dataset.val_fraction holds training rows out for tuning
        "eval_split": "val" if cfg.dataset.val_fraction else "test",
        "n_params": posterior.dim,
        "num_classes": data.num_classes,  # 0 for regression (the report's chance level)
        "standardization": data.standardization,
        **({"cores": cores} if cores else {}),
        "cpu_scheduler": cpu_scheduler_in_effect(),
        **hardware.process_fields(cfg.hardware),
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
    reporter = Reporter(
        out_dir,
        wandb_run,
        total=method.num_iterations(cfg),
        progress_key=method.progress_key,
        progress=cfg.progress,
        start=start,
    )
    job = Job(
        cfg=cfg,
        data=data,
        posterior=posterior,
        out_dir=out_dir,
        checkpoints=checkpoints,
        reporter=reporter,
        test_metrics=build.evaluator(cfg, data, posterior, reference),
        should_stop=STOP.is_set,
    )
    t0 = time.perf_counter()
    exit_code = 1
    try:
        try:
            results = method.run(job)
            results_ready()  # only results.json and the plots remain: a signal now is too late
        finally:
            reporter.close()
        results = {**base, **results, "runtime_s": time.perf_counter() - t0, "status": "finished"}
        results["peak_rss_mb"] = hardware.peak_rss_mb()
        write_json(out_dir / "results.json", results)
        wandb_run.summary(results)
        wandb_run.images(run_plots(out_dir))  # ess_batch.png, reliability.png from the files
        exit_code = 0
        return results
    except Exception as exc:
        failed = {**base, "runtime_s": time.perf_counter() - t0, "status": status_of(exc)}
        failed["error"] = one_line(exc)
        write_json(out_dir / "results.json", failed)
        wandb_run.summary(failed)
        raise
    finally:
        wandb_run.finish(exit_code)


def main(argv: list[str] | None = None) -> None:
    """The console entry of installs made before it moved to bnn_bench.cli (their bnn-bench
    script still names bnn_bench.run:main)."""
    from bnn_bench.cli import main as cli_main

    cli_main(argv)


if __name__ == "__main__":
    main()
