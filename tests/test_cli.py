"""End to end through the real CLI: results files, multirun, validation errors."""

import json

import pytest
from conftest import read_jsonl

# The runner's mechanics on the paper's formulation (seconds a run); the exact default has its own
# test below and tests/test_exact_smc_cli.py.
TINY = [
    "smc.path=minibatch",
    "schedule=ctr",
    "smc.num_particles=8",
    "smc.num_iterations=6",
    "logger=none",
    "log_every=2",
]

RESULT_KEYS = {
    "accuracy",
    "nll",
    "ece",
    "brier",
    "runtime_s",
    "example_grads",
    "n_params",
    "n_resample",
    "ess_final",
    "iterations",
    "seed",
    "method",
    "schedule",
    "proposal",
    "dataset",
    "model",
    "status",
}
METRIC_KEYS = {
    "iter",
    "batch_size",
    "ess",
    "resampled",
    "energy_error_mean",
    "energy_error_max",
    "divergent",
    "time_s",
    "example_grads",
}


@pytest.mark.slow
def test_minibatch_run_writes_complete_results(run_cli, tmp_path):
    out = tmp_path / "run"
    proc = run_cli(*TINY, "eval_every=3", "schedule.batch_size=200", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert set(results) >= RESULT_KEYS
    assert results["status"] == "finished"
    assert results["method"] == "smc" and results["schedule"] == "ctr"
    assert results["dataset"] == "digits" and results["model"] == "mlp"
    assert results["iterations"] == 6
    assert 0.0 <= results["accuracy"] <= 1.0 and results["nll"] > 0
    assert 100 < results["peak_rss_mb"] < 24 * 1024  # MiB; a JAX process holds > 100 MiB
    # ctr with K = 6, r = 0.9: 5 iterations at C = 200, then the full N.
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["iter"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(set(r) >= METRIC_KEYS for r in rows)
    assert [r["batch_size"] for r in rows][:5] == [200] * 5
    assert rows[-1]["batch_size"] == results["n_train"]
    assert "test_accuracy" in rows[2] and "test_accuracy" in rows[5]
    grads = 8 * 4 * (5 * 200 + results["n_train"])  # J * (S + 1) * sum M_k
    assert results["example_grads"] == grads == rows[-1]["example_grads"]
    assert not (out / "posterior.npz").exists()
    assert not {"ood", "shift", "selective"} & set(results)  # evaluation.* is off by default


@pytest.mark.slow
def test_save_posterior(run_cli, tmp_path):
    import numpy as np

    out = tmp_path / "run"
    proc = run_cli(*TINY, "save_posterior=true", "model=linear", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr
    with np.load(out / "posterior.npz", allow_pickle=False) as post:
        assert post["particles"].shape == (8, 64 * 10 + 10)
        assert post["log_weights"].shape == (8,)


@pytest.mark.slow
def test_two_seed_multirun_gives_each_job_its_own_results(run_cli, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", *TINY, "seed=0,1", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr
    r0 = json.loads((sweep / "0" / "results.json").read_text())
    r1 = json.loads((sweep / "1" / "results.json").read_text())
    assert (r0["seed"], r1["seed"]) == (0, 1)
    assert r0["nll"] != r1["nll"]


@pytest.mark.slow
def test_same_seed_gives_identical_results(run_cli, tmp_path):
    runs = []
    for name in ("a", "b"):
        proc = run_cli(*TINY, "model=linear", f"hydra.run.dir={tmp_path / name}")
        assert proc.returncode == 0, proc.stderr
        res = json.loads((tmp_path / name / "results.json").read_text())
        runs.append({k: res[k] for k in ("accuracy", "nll", "ece", "brier", "ess_final")})
    assert runs[0] == runs[1]


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("smc.num_particles=1", "smc.num_particles=1"),
        ("smc.num_iterations=0", "smc.num_iterations=0"),
        ("schedule.refine_at=1.5", "schedule.refine_at=1.5"),
        ("proposal.step_size=0", "proposal.step_size=0"),
        ("schedule.batch_size=0", "schedule.batch_size=0"),
        ("smc.resampler=magic", "smc.resampler=magic"),
        ("schedule=foo", "schedule=foo"),
        ("method=foo", "method=foo"),
        ("smc.num_particles=abc", "smc.num_particles"),
        ("smc.no_such_key=3", "smc.no_such_key"),
        ("dataset=npz", "dataset.path"),
    ],
)
def test_bad_config_is_one_line_exit_2_and_writes_nothing(run_cli, tmp_path, override, needle):
    out = tmp_path / "run"
    proc = run_cli(override, "logger=none", f"hydra.run.dir={out}")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0] and "Traceback" not in proc.stderr
    assert not out.exists()


def test_bad_value_in_a_sweep_is_caught_before_any_job(run_cli, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "smc.num_particles=8,1", "logger=none", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 2
    assert "smc.num_particles=1" in proc.stderr
    assert not sweep.exists()


@pytest.mark.slow
def test_batch_size_above_n_is_refused_without_results(run_cli, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("schedule.batch_size=100000", "logger=none", f"hydra.run.dir={out}")
    assert proc.returncode == 2
    assert "schedule.batch_size=100000" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (out / "results.json").exists()


@pytest.mark.slow
def test_likelihood_must_match_the_dataset(run_cli, tmp_path):
    proc = run_cli("likelihood=gaussian", "logger=none", f"hydra.run.dir={tmp_path / 'r'}")
    assert proc.returncode == 2
    assert "likelihood=gaussian" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_regression_run(run_cli, tmp_path):
    out = tmp_path / "run"
    proc = run_cli(
        "dataset=synthetic_regression",
        "model=linear",
        "likelihood=gaussian",
        "likelihood.noise_std=0.5",
        "smc.path=minibatch",
        "schedule=full",
        "proposal.step_size=0.01",
        "smc.num_particles=64",
        "smc.num_iterations=60",
        "logger=none",
        f"hydra.run.dir={out}",
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads((out / "results.json").read_text())
    # The data's noise is 0.5: a converged posterior predicts with RMSE close to it.
    assert res["rmse"] < 0.65 and "accuracy" not in res


@pytest.mark.slow
def test_sda_with_adapted_step_size_stops_early_and_reports_iterations(run_cli, tmp_path):
    out = tmp_path / "run"
    proc = run_cli(
        "smc.path=minibatch", "smc.num_particles=8", "smc.num_iterations=60", "logger=none",
        "log_every=4", "schedule=sda", "schedule.batch_size=400", "schedule.window=2",
        "schedule.entropy_tol=0.5", "proposal.adapt_step_size=true", "eval_every=4",
        f"hydra.run.dir={out}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    rows = read_jsonl(out / "metrics.jsonl")
    assert results["status"] == "finished" and results["schedule"] == "sda"
    assert results["iterations"] == len(rows) == rows[-1]["iter"] < 60
    assert [r["iter"] for r in rows] == list(range(1, len(rows) + 1))
    assert rows[-1]["batch_size"] == results["n_train"]  # it stopped on the full data
    sizes = [r["batch_size"] for r in rows]
    assert sizes == sorted(sizes) and sizes[0] == 400
    assert results["example_grads"] == rows[-1]["example_grads"] == 8 * 4 * sum(sizes)
    assert results["adapt_step_size"] and results["step_size"] != 0.002
    assert "test_accuracy" in rows[3]
    # the scheduled path also gives the reliability diagram its bins and picture
    assert sum(results["reliability"]["bin_count"]) == results["n_test"]
    assert (out / "reliability.png").stat().st_size > 0


@pytest.mark.slow
def test_default_run_is_the_exact_sampler(run_cli, tmp_path):
    """What `make run` runs, on a smaller cloud and training set: nested data annealing by the
    automated schedule to the posterior, Metropolis-adjusted moves, final sweeps pooled."""
    out = tmp_path / "run"
    proc = run_cli(
        "smc.num_particles=8",
        "smc.final_sweeps=2",
        "dataset.n_train=300",
        "logger=none",
        f"hydra.run.dir={out}",
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert set(results) >= RESULT_KEYS
    assert (results["path"], results["schedule"], results["correction"]) == (
        "nested",
        "automated",
        "mh",
    )
    assert results["final_target"] == "posterior" and results["status"] == "finished"
    assert results["num_draws"] == 8 * 3 and results["log_evidence"] < 0
    rows = read_jsonl(out / "metrics.jsonl")
    sizes = [r["batch_size"] for r in rows]
    # growing prefixes: at most C = 100 rows first (fewer where the weights allow no more)
    assert sizes[0] <= 100 and sizes[-1] == 300 and sizes == sorted(sizes)
    assert rows[-1]["sweep"] == 2 and rows[-1]["example_grads"] == results["example_grads"]
