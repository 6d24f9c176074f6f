"""method=hmc (a tiny reference through the CLI), method=ensemble and method=sgmcmc, and
reference=PATH on every method: fidelity in results.json and metrics.jsonl, mismatch refusal."""

import json

import numpy as np
import pytest
from conftest import cli, read_jsonl
from test_reliability import sigterm_then_resume

from bnn_bench import reference as ref

SMALL = [
    "dataset.n_train=200",
    "dataset.n_test=40",
    "model.hidden=[8]",
    "logger=none",
    "progress=false",
]
TINY_HMC = [
    "method=hmc",
    "hmc.num_chains=2",
    "hmc.num_warmup=30",
    "hmc.num_samples=12",
    "hmc.thin=2",
    "hmc.init_steps=50",
    "hmc.max_tree_depth=5",
]


def results(directory):
    return json.loads((directory / "results.json").read_text())


@pytest.fixture(scope="module")
def tiny_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("hmc") / "run"
    r = cli(*SMALL, *TINY_HMC, "save_posterior=true", "eval_every=8", f"hydra.run.dir={out}")
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.slow
def test_tiny_reference_run_is_complete(tiny_reference):
    res = results(tiny_reference)
    assert res["method"] == "hmc" and res["status"] == "finished"
    for key in (
        "rhat_max",
        "rhat_median",
        "ess_min",
        "ess_bulk_min",
        "tree_depth_mean",
        "step_size",
        "divergences",
        "warmup_divergences",
        "accuracy",
        "nll",
        "ece",
    ):
        assert res[key] is not None and np.isfinite(res[key]), key
    assert res["n_draws"] == 2 * 6 and res["iterations"] == 12 and res["num_diagnosed"] > 0
    assert res["example_grads"] > 200 * (2 * 30 + 2 * 12)  # at least one leapfrog a transition
    r = ref.read(tiny_reference / "reference.npz")
    assert r.probs.shape == (40, 10) and np.allclose(r.probs.sum(1), 1, atol=1e-4)
    assert r.identity["n_test"] == "40" and r.identity["model"] == "mlp hidden=[8]"
    assert r.diagnostics["rhat_max"] == res["rhat_max"]
    with np.load(tiny_reference / "reference.npz") as z:
        assert z["particles"].shape == (12, res["n_params"])
    rows = read_jsonl(tiny_reference / "metrics.jsonl")
    assert [row["iter"] for row in rows] == list(range(1, 13))
    assert all("tree_depth" in row and "divergences" in row for row in rows)
    assert "test_accuracy" in rows[7] and "rhat_max" in rows[7]  # 4 draws a chain there


@pytest.mark.slow
@pytest.mark.parametrize(
    "method",
    [
        ["method=ensemble", "ensemble.num_members=2", "ensemble.num_epochs=3"],
        ["method=sgmcmc", "sgmcmc.num_iterations=200", "sgmcmc.burn_in=100", "sgmcmc.thin=10"],
        ["method=smc", "smc.num_particles=4", "smc.num_iterations=3", "schedule=full"],
    ],
)
def test_reference_on_any_method(tmp_path, run_cli, tiny_reference, method):
    out = tmp_path / "run"
    r = run_cli(
        *SMALL,
        *method,
        f"reference={tiny_reference / 'reference.npz'}",
        "eval_every=1",
        f"hydra.run.dir={out}",
    )
    assert r.returncode == 0, r.stderr
    res = results(out)
    assert 0 <= res["agreement"] <= 1 and 0 <= res["total_variation"] <= 1
    assert res["example_grads"] > 0 and res["runtime_s"] > 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert "test_agreement" in rows[0] and "test_total_variation" in rows[-1]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "field"),
    [
        ("model.hidden=[16]", "model differs"),
        ("dataset.n_test=30", "n_test differs"),
        ("prior.std=1.0", "prior differs"),
    ],
)
def test_a_mismatching_reference_is_refused_before_any_work(
    tmp_path, run_cli, tiny_reference, change, field
):
    out = tmp_path / "run"
    args = [a for a in SMALL if a.split("=")[0] != change.split("=")[0]]
    r = run_cli(
        *args,
        change,
        "method=ensemble",
        f"reference={tiny_reference / 'reference.npz'}",
        f"hydra.run.dir={out}",
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and field in lines[0] and "reference" in lines[0], r.stderr
    assert not (out / "results.json").exists() and not (out / "metrics.jsonl").exists()


@pytest.mark.slow
def test_the_shipped_digits_reference(tmp_path, run_cli):
    out = tmp_path / "run"
    r = run_cli(
        "method=ensemble",
        "ensemble.num_members=2",
        "ensemble.num_epochs=5",
        "reference=digits_mlp",
        "logger=none",
        "progress=false",
        f"hydra.run.dir={out}",
    )
    assert r.returncode == 0, r.stderr
    res = results(out)
    assert res["agreement"] > 0.9 and res["total_variation"] < 0.3


@pytest.mark.slow
def test_hmc_sigterm_then_resume_ends_as_if_never_stopped(tmp_path, run_cli):
    args = [
        *SMALL,
        *TINY_HMC,
        "hmc.num_samples=1000",
        "hmc.thin=5",
        "hmc.max_tree_depth=6",
        "checkpoint_every=0",
        "log_every=20",
    ]
    got, want, rows = sigterm_then_resume(tmp_path, run_cli, args)
    keys = ("accuracy", "nll", "rhat_max", "divergences", "iterations", "example_grads")
    assert {k: got[k] for k in keys} == {k: want[k] for k in keys}
    assert [r["iter"] for r in rows] == list(range(1, 1001))
