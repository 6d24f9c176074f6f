"""What a method is to the runner: one `Method` entry, and the `Job` its run function receives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from bnn_bench.checkpoint import Checkpoints
from bnn_bench.tracking import Reporter


@dataclass
class Job:
    """One configured job, built by run.py: everything a method's `run` needs.

    `test_metrics(particles, log_weights, reliability=False)` evaluates a weighted particle set
    (or equally weighted samples) on the test set; `should_stop()` turns true on SIGTERM, when
    the method must hand its state to the callback and return (the loop does this)."""

    cfg: DictConfig
    data: Any  # bnn_bench.data.Dataset
    posterior: Any  # bnn_bench.posterior.Posterior
    out_dir: Path
    checkpoints: Checkpoints
    reporter: Reporter
    test_metrics: Callable[..., dict]
    should_stop: Callable[[], bool]

    @property
    def state_every(self) -> int:
        """Iterations at whose multiples the loop hands out the state (checkpoints, evaluations)."""
        import math

        return math.gcd(self.cfg.eval_every, self.checkpoints.every)

    def evaluate_every(self, iteration: int) -> bool:
        return bool(self.cfg.eval_every) and iteration % self.cfg.eval_every == 0

    def write_posterior(self, particles, log_weights) -> None:
        """posterior.npz (save_posterior=true): the draws, their log-weights and the data's
        standardisation (x_mean, x_std, and y_mean, y_std for standardised targets)."""
        from bnn_bench.tracking import write_posterior

        write_posterior(
            self.out_dir / "posterior.npz",
            particles,
            log_weights,
            **self.data.standardization_arrays(),
        )


def no_data_checks(cfg: DictConfig, data) -> None:
    """A method with nothing to check against the loaded data."""


def batch_size_check(section: str) -> Callable[[DictConfig, Any], None]:
    """check_data of a method whose `<section>.batch_size` rows must fit the training set."""

    def check(cfg: DictConfig, data) -> None:
        from bnn_bench.errors import ConfigError

        m = cfg[section].batch_size
        if m > data.n_train:
            raise ConfigError(
                f"{section}.batch_size={m} is not allowed; it must be between 1 and "
                f"N={data.n_train} (the training-set size of dataset={cfg.dataset.name})"
            )

    return check


def no_row(results: dict[str, Any]) -> tuple[str, str]:
    """A method whose jobs all share one report row."""
    return "", ""


@dataclass(frozen=True)
class Method:
    """Everything method-specific the runner needs; adding a method is one module and one entry.

    - run(job) -> the results.json fields specific to the method (it raises RunDiverged or
      RunInterrupted through lifecycle.raise_if_stopped);
    - num_iterations(cfg): the progress bar's total;
    - labels(cfg): what names the job after the method (smc: schedule and proposal; vi: the
      algorithm): W&B's job_type is method/labels[0], the run name method-labels-seedN;
    - progress_key: the record field the progress bar shows (ess, neg_elbo, ...);
    - check_data(cfg, data): checks that need the loaded data (ConfigError naming the key);
    - row(results): the report's (variant, proposal) row of a results.json, variant_order the
      order of variants in the table, and baselines(variant, proposal): the rows, best first,
      whose runtime a row's speed-up is measured against (none: no speed-up column).
    """

    name: str
    run: Callable[[Job], dict[str, Any]]
    num_iterations: Callable[[DictConfig], int]
    labels: Callable[[DictConfig], tuple[str, ...]]
    progress_key: str
    check_data: Callable[[DictConfig, Any], None] = no_data_checks
    row: Callable[[dict[str, Any]], tuple[str, str]] = no_row
    variant_order: tuple[str, ...] = ()
    baselines: Callable[[str, str], list[tuple[str, str]]] = lambda variant, proposal: []
