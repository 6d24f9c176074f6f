"""The exact SMC sampler through the real CLI: smc.path, results.json and metrics.jsonl keys."""

import json

import pytest
from conftest import read_jsonl

TINY = [
    "smc.num_particles=8",
    "smc.num_iterations=4",
    "smc.num_mcmc_steps=1",
    "smc.final_sweeps=0",
    "proposal.num_steps=2",
    "proposal.step_size=0.05",
    "proposal.adapt_step_size=true",
    "dataset.n_train=200",
    "schedule.batch_size=50",
    "logger=none",
    "log_every=3",
]


@pytest.mark.slow
def test_nested_constant_run_reports_evidence_and_its_final_target(run_cli, tmp_path):
    out = tmp_path / "run"
    proc = run_cli(*TINY, "smc.path=nested", "schedule=constant", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["path"] == "nested" and results["correction"] == "mh"
    assert results["final_target"] == "posterior of the first 50 of 200 rows"
    assert results["log_evidence"] < 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["iter"] for r in rows] == list(range(1, results["iterations"] + 1))
    assert all(
        {"log_evidence", "lambda", "accept_mean", "step_size", "ess"} <= set(r) for r in rows
    )
    assert rows[-1]["log_evidence"] == pytest.approx(results["log_evidence"])
    assert {r["batch_size"] for r in rows} == {50}
    # constant: the bridge from the prior to 50 rows, then 3 more moves at those rows
    assert results["iterations"] == results["n_bridge"] + 4
    # every gradient (of every round of moves: a round accepting too little is retried) and
    # every reweighting forward pass, row-weighted
    rounds = sum(r["move_rounds"] for r in rows)
    assert rounds >= results["iterations"]
    grads = results["num_particles"] * 50 * (1 * 2 + 1) * rounds
    forward = results["num_particles"] * 50 * (results["n_bridge"] + 1)
    assert results["example_grads"] == grads + forward
    assert "lambda" in proc.stderr and "distinct" in proc.stderr  # the progress line
    assert results["distinct_particles"] <= results["num_particles"]


@pytest.mark.slow
def test_tempered_run_ends_at_the_posterior(run_cli, tmp_path):
    out = tmp_path / "run"
    # a tempered run chooses its temperatures and ends at the posterior (TINY's K = 4 is no cap)
    proc = run_cli(*TINY, "smc.path=tempered", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["final_target"] == "posterior" and results["path"] == "tempered"
    rows = read_jsonl(out / "metrics.jsonl")
    assert rows[-1]["lambda"] == 1.0 and all(r["batch_size"] == 200 for r in rows)
    assert results["iterations"] > 4


@pytest.mark.parametrize(
    "args, key",
    [
        (["smc.path=minibatch", "proposal.correction=mh"], "proposal.correction"),
        (["smc.path=nested", "proposal.correction=none"], "proposal.correction"),
        (["smc.path=nested", "schedule=ctr_adaptive", "schedule.signal=noise"], "signal=noise"),
        (["smc.path=tempered", "proposal.max_retries=-1"], "proposal.max_retries"),
        (["smc.path=minibatch", "proposal.max_retries=2"], "proposal.max_retries"),
        (["smc.path=sideways"], "smc.path"),
        (["smc.path=minibatch", "smc.final_sweeps=2"], "smc.final_sweeps"),
        (["smc.final_sweeps=-1"], "smc.final_sweeps"),
        (["smc.path=tempered", "smc.num_mcmc_steps=0"], "smc.num_mcmc_steps"),
    ],
)
def test_path_settings_are_checked(run_cli, tmp_path, args, key):
    proc = run_cli(*args, "logger=none", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode != 0
    assert key in proc.stderr


@pytest.mark.slow
def test_final_sweeps_are_counted_and_pooled(run_cli, tmp_path):
    out = tmp_path / "run"
    proc = run_cli(
        *(a for a in TINY if not a.startswith("smc.final_sweeps")),
        "smc.path=nested",
        "schedule=constant",
        "smc.final_sweeps=3",
        f"hydra.run.dir={out}",
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["final_sweeps"] == 3 and results["num_draws"] == 8 * 4
    rows = read_jsonl(out / "metrics.jsonl")
    sweeps = [r for r in rows if "sweep" in r]
    assert [r["sweep"] for r in sweeps] == [1, 2, 3]
    path_rows = [r for r in rows if "sweep" not in r]
    per_sweep = 8 * 50 * (1 * 2 + 1)  # J * rows of the final target * gradients per particle
    rounds = sum(r["move_rounds"] for r in sweeps)  # retried rounds count too
    assert results["example_grads"] == path_rows[-1]["example_grads"] + rounds * per_sweep
    assert sweeps[-1]["example_grads"] == results["example_grads"]


@pytest.mark.slow
def test_nested_sda_grows_the_subset_when_the_cloud_settles(run_cli, tmp_path):
    out = tmp_path / "run"
    proc = run_cli(
        *(a for a in TINY if not a.startswith("smc.num_iterations")),
        "smc.num_iterations=30",
        "smc.path=nested",
        "schedule=sda",
        "schedule.window=1",
        "schedule.entropy_tol=100",  # settled at every second completed target
        f"hydra.run.dir={out}",
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert (results["path"], results["schedule"]) == ("nested", "sda")
    assert results["final_target"] == "posterior"
    rows = read_jsonl(out / "metrics.jsonl")
    done = [r["batch_size"] for r in rows if r["lambda"] == 1.0]
    assert done == [50, 50, 100, 100, 200, 200], done


@pytest.mark.slow
def test_chees_on_the_exact_path_counts_its_jittered_steps(run_cli, tmp_path):
    out = tmp_path / "run"
    proc = run_cli(
        *TINY, "smc.path=nested", "schedule=constant", "proposal=chees", f"hydra.run.dir={out}"
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["proposal"] == "chees" and results["trajectory_length"] > 0
    rows = read_jsonl(out / "metrics.jsonl")
    # every round of every iteration: J * 50 rows * (1 MH step * its leapfrog steps + 1)
    grads = sum(8 * 50 * (r["leapfrog_steps"] + 1) * r["move_rounds"] for r in rows)
    forward = 8 * 50 * (results["n_bridge"] + 1)
    assert results["example_grads"] == grads + forward


@pytest.mark.slow
def test_budget_adds_final_sweeps_until_it_is_spent(run_cli, tmp_path):
    base = [a for a in TINY if not a.startswith("smc.final_sweeps")]
    base += ["smc.path=nested", "schedule=constant"]
    out = tmp_path / "spent"
    proc = run_cli(*base, "smc.budget=30000", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    rows = read_jsonl(out / "metrics.jsonl")
    sweeps = [r for r in rows if "sweep" in r]
    path_grads = [r for r in rows if "sweep" not in r][-1]["example_grads"]
    assert results["path_example_grads"] == path_grads < 30000
    # the first sweep that reaches the budget is the last one
    assert sweeps[-2]["example_grads"] < 30000 <= sweeps[-1]["example_grads"]
    assert results["example_grads"] == sweeps[-1]["example_grads"]
    assert results["final_sweeps"] == len(sweeps) >= 2
    assert results["num_draws"] == 8 * (1 + len(sweeps))
    assert results["budget"] == 30000 and results["budget_exceeded"] is False
    # a budget the path alone exceeds: it still ends at its target, no sweeps, and says so
    out = tmp_path / "exceeded"
    proc = run_cli(*base, "smc.budget=100", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["budget_exceeded"] is True and results["final_sweeps"] == 0
    assert results["final_target"] == "posterior of the first 50 of 200 rows"
    assert "smc.budget" in proc.stderr


@pytest.mark.slow
def test_budget_on_minibatch_chooses_the_smallest_k_that_spends_it(run_cli, tmp_path):
    from bnn_bench.inference.smc import schedules

    out = tmp_path / "run"
    args = ["smc.path=minibatch", "schedule=ctr", "schedule.refine_at=0.5", "proposal.num_steps=2"]
    proc = run_cli(
        *args,
        "smc.num_particles=4",
        "smc.num_iterations=null",
        "smc.budget=20000",
        "dataset.n_train=200",
        "schedule.batch_size=50",
        "logger=none",
        f"hydra.run.dir={out}",
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    k = results["iterations"]

    def cost(k):  # J * M_k * (S + 1), summed
        sizes = schedules.batch_sizes(
            "ctr", num_data=200, num_iterations=k, batch_size=50, refine_at=0.5
        )
        return 4 * 3 * int(sizes.sum())

    assert results["example_grads"] == cost(k) >= 20000 > cost(k - 1)
    assert results["budget"] == 20000


@pytest.mark.parametrize(
    "args, key",
    [
        (
            ["smc.path=minibatch", "schedule=ctr", "smc.num_iterations=80", "smc.budget=1000"],
            "smc.num_iterations=null",
        ),
        (
            ["smc.path=minibatch", "smc.num_iterations=null", "smc.budget=1000"],
            "schedule=automated",
        ),
        (
            ["smc.path=minibatch", "schedule=ctr", "proposal=chees"]
            + ["smc.num_iterations=null", "smc.budget=1000"],
            "proposal=chees",
        ),
        (["smc.budget=0"], "smc.budget"),
    ],
)
def test_budget_settings_are_checked(run_cli, tmp_path, args, key):
    proc = run_cli(*args, "logger=none", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode != 0
    assert key in proc.stderr and "Traceback" not in proc.stderr
