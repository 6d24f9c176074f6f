"""dataset.standardize (inputs, regression targets), dataset=diabetes, original-unit metrics."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from bnn_bench.data import load_dataset
from bnn_bench.errors import ConfigError
from bnn_bench.evaluate import evaluate
from bnn_bench.models import Linear
from bnn_bench.posterior import make_posterior
from tests.conftest import cli


@pytest.fixture
def tabular(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(loc=[5.0, -3.0], scale=[2.0, 10.0], size=(50, 2))
    path = tmp_path / "lin.npz"
    np.savez(path, x=x, y=x @ [1.0, 0.5] + 7.0)
    return str(path)


def test_diabetes_defaults_standardise_inputs_and_targets():
    d = load_dataset("diabetes")
    assert (d.n_train, len(d.y_test), d.x_train.shape[1], d.task) == (354, 88, 10, "regression")
    np.testing.assert_allclose(d.x_train.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(d.x_train.std(0), 1, atol=1e-4)
    s = d.standardization
    assert (s["inputs"], s["targets"]) == ("per_feature", "standard")
    assert abs(float(d.y_train.mean())) < 1e-5 and d.y_std > 50  # disease progression, 25-346
    raw = load_dataset("diabetes", standardize_inputs="none", standardize_targets="none")
    np.testing.assert_allclose(d.y_test * d.y_std + d.y_mean, raw.y_test, rtol=1e-5)
    np.testing.assert_allclose(raw.x_train.mean(0), s["x_mean"], rtol=1e-5)
    assert raw.y_mean == 0 and raw.y_std == 1


def test_input_modes(tabular):
    auto = load_dataset("npz", path=tabular)  # tabular npz: per_feature by default
    assert auto.standardization["inputs"] == "per_feature"
    np.testing.assert_allclose(auto.x_train.std(0), 1, atol=1e-5)
    none = load_dataset("npz", path=tabular, standardize_inputs="none")
    assert none.standardization == {"inputs": "none", "targets": "none"}
    assert abs(float(none.x_train[:, 0].mean()) - 5) < 1  # the user's x, untouched
    glob = load_dataset("npz", path=tabular, standardize_inputs="global")
    assert isinstance(glob.standardization["x_mean"], float)
    assert abs(float(glob.x_train.mean())) < 1e-5 and abs(float(glob.x_train.std()) - 1) < 1e-5
    assert float(glob.x_train[:, 1].std()) > 2 * float(glob.x_train[:, 0].std())  # one scale
    digits = load_dataset("digits")
    assert digits.standardization["inputs"] == "global"
    assert load_dataset("synthetic_regression").standardization["inputs"] == "none"


def test_refusals(tabular):
    with pytest.raises(ConfigError, match="dataset.standardize.targets=standard is only for"):
        load_dataset("digits", standardize_targets="standard")
    with pytest.raises(ConfigError, match="dataset.standardize.inputs=zscore"):
        load_dataset("npz", path=tabular, standardize_inputs="zscore")


def test_metrics_in_original_units():
    """A predictor exact up to a constant 1 (standardised units) has RMSE 1 * y_std."""
    x = np.linspace(-1, 1, 20, dtype=np.float32)[:, None]
    post = make_posterior(Linear(1), jnp.asarray(x), likelihood="gaussian", noise_std=0.5)
    theta = jnp.zeros((1, post.dim))  # predicts 0 everywhere
    y = np.ones(20, np.float32)  # standardised targets
    std = evaluate(post, theta, jnp.zeros(1), x, y)
    orig = evaluate(post, theta, jnp.zeros(1), x, y, target_shift=100.0, target_scale=30.0)
    assert std["rmse"] == pytest.approx(1.0) and orig["rmse"] == pytest.approx(30.0)
    assert orig["nll"] == pytest.approx(std["nll"] + np.log(30.0), rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    "method",
    [
        ["smc.num_particles=4", "smc.num_iterations=3", "schedule=full", "smc.final_sweeps=1"],
        ["smc.path=minibatch", "smc.num_particles=4", "smc.num_iterations=3", "schedule=full"],
        ["method=ensemble", "ensemble.num_members=2", "ensemble.num_epochs=2"],
    ],
    ids=["smc_exact", "smc_minibatch", "ensemble"],
)
def test_cli_reports_the_standardisation(tmp_path, method):
    out = tmp_path / "run"
    r = cli(
        "dataset=diabetes",
        "likelihood=gaussian",
        *method,
        "logger=none",
        "progress=false",
        "save_posterior=true",
        f"hydra.run.dir={out}",
    )
    assert r.returncode == 0, r.stderr
    results = json.loads((out / "results.json").read_text())
    s = results["standardization"]
    assert (s["inputs"], s["targets"]) == ("per_feature", "standard") and len(s["x_mean"]) == 10
    assert results["rmse"] > 20  # original units (the targets' sd is about 77)
    with np.load(out / "posterior.npz") as z:
        assert float(z["y_std"]) == pytest.approx(s["y_std"]) and z["x_mean"].shape == (10,)
