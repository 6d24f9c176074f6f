"""Uncertainty scores, OOD detection and selective metrics, OOD sets and shifts (issue 16)."""

import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from bnn_bench import uncertainty
from bnn_bench.data import load_dataset, ood, shift
from bnn_bench.errors import DataError


def log_probs(probs):
    return np.log(np.asarray(probs, np.float64))


# --- scores --------------------------------------------------------------------------------------


def test_mutual_information_is_zero_for_identical_particles_and_positive_when_they_disagree():
    p = [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]
    same = log_probs([p, p, p])  # (J=3, n=2, K=3)
    s = uncertainty.predictive_scores(same, np.zeros(3))
    assert np.allclose(s["mutual_information"], 0.0, atol=1e-6)
    h = -np.sum(np.asarray(p) * np.log(p), axis=1)
    assert np.allclose(s["entropy"], h, atol=1e-6)
    assert np.allclose(s["max_prob"], [0.7, 0.8], atol=1e-6)

    disagree = log_probs([[[0.98, 0.01, 0.01]], [[0.01, 0.98, 0.01]]])
    d = uncertainty.predictive_scores(disagree, np.zeros(2))
    mean = np.array([0.495, 0.495, 0.01])
    expected = -np.sum(mean * np.log(mean)) - (
        -np.sum([0.98, 0.01, 0.01] * np.log([0.98, 0.01, 0.01]))
    )
    assert d["mutual_information"][0] > 0.5
    assert np.isclose(d["mutual_information"][0], expected, atol=1e-5)


def test_mutual_information_uses_the_weights_and_ignores_dropped_particles():
    a, b = [[0.9, 0.1]], [[0.1, 0.9]]
    lp = log_probs([a, b])
    # all the weight on one particle: no disagreement left
    one = uncertainty.predictive_scores(lp, np.array([0.0, -np.inf]))
    assert np.allclose(one["mutual_information"], 0.0, atol=1e-6)
    assert np.allclose(one["max_prob"], 0.9, atol=1e-6)
    nan_dropped = np.stack([lp[0], np.full_like(lp[1], np.nan)])
    kept = uncertainty.predictive_scores(nan_dropped, np.array([0.0, -np.inf]))
    assert np.all(np.isfinite(kept["mutual_information"]))
    assert np.allclose(kept["entropy"], one["entropy"])
    both = uncertainty.predictive_scores(lp, np.zeros(2))
    assert both["mutual_information"][0] > 0.3


# --- detection -----------------------------------------------------------------------------------


def test_detection_metrics_match_scikit_learn_and_a_hand_count():
    in_score, out_score = np.array([0.1, 0.2, 0.3]), np.array([0.25, 0.4])
    m = uncertainty.detection_metrics(in_score, out_score)
    assert m["auroc"] == pytest.approx(5 / 6)  # 5 of the 6 (out, in) pairs are ordered right
    # precision at the two positives, ranked 1st (0.4) and 3rd (0.25): (1 + 2/3) / 2
    assert m["aupr"] == pytest.approx((1 + 2 / 3) / 2)
    # TPR 95% needs both OOD inputs, so threshold 0.25: one of three in-distribution above
    assert m["fpr95"] == pytest.approx(1 / 3)

    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 200), rng.normal(0.7, 1, 150)
    labels = np.r_[np.zeros(200), np.ones(150)]
    got = uncertainty.detection_metrics(a, b)
    assert got["auroc"] == pytest.approx(roc_auc_score(labels, np.r_[a, b]))
    assert got["aupr"] == pytest.approx(average_precision_score(labels, np.r_[a, b]))
    fpr, tpr, _ = roc_curve(labels, np.r_[a, b])
    assert got["fpr95"] == pytest.approx(fpr[tpr >= 0.95].min())
    # OOD is the positive class: swapping the roles turns AUROC into 1 - AUROC
    assert uncertainty.detection_metrics(b, a)["auroc"] == pytest.approx(1 - got["auroc"])


def test_max_prob_detector_is_one_minus_the_confidence():
    scores = {"max_prob": np.array([0.9, 0.5])}
    assert np.allclose(uncertainty.ood_score("max_prob", scores), [0.1, 0.5])


# --- selective prediction ------------------------------------------------------------------------


def test_selective_accuracy_and_aurc_on_a_hand_example():
    confidence = np.array([0.6, 0.9, 0.7, 0.8])
    correct = np.array([1, 1, 1, 0])  # ranked: 0.9 right, 0.8 wrong, 0.7 right, 0.6 right
    risk = uncertainty.risk_coverage(confidence, correct)
    assert np.allclose(risk, [0, 1 / 2, 1 / 3, 1 / 4])
    m = uncertainty.selective_metrics(confidence, correct, (0.5, 0.8, 0.9))
    assert m["accuracy_at_50"] == pytest.approx(0.5)
    assert m["accuracy_at_80"] == pytest.approx(0.75)  # ceil(3.2) = 4 inputs
    assert m["accuracy_at_90"] == pytest.approx(0.75)
    assert m["aurc"] == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    # a confidence that ranks the error last has the smallest possible AURC
    best = uncertainty.selective_metrics(np.array([4, 3, 2, 1]), np.array([1, 1, 1, 0]), (0.5,))
    assert best["aurc"] < m["aurc"] and best["accuracy_at_50"] == 1.0


# --- OOD sets ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_digits_statistics_are_the_loaders(digits):
    from sklearn.datasets import load_digits

    stats = ood.input_statistics(digits)
    raw = (load_digits().images / 16.0).astype(np.float32)
    from bnn_bench.data.datasets import _split

    xtr = _split(raw, np.zeros(len(raw)), 0.2, "digits")[0]
    assert stats["x_mean"] == pytest.approx(xtr.mean(dtype=np.float64), rel=1e-5)
    assert stats["x_std"] == pytest.approx(xtr.std(dtype=np.float64), rel=1e-5)
    # the test inputs are the normalised raw test pixels
    xte = _split(raw, np.zeros(len(raw)), 0.2, "digits")[2]
    assert np.allclose(ood.normalise(xte, stats).reshape(len(xte), -1), digits.x_test, atol=1e-5)


@pytest.mark.parametrize("name", ["sample_patches", "uniform_noise", "gaussian_noise"])
def test_builtin_sets_are_normalised_images_of_the_input_size(digits, name):
    stats = ood.input_statistics(digits)
    s = ood.ood_set(name, digits, stats)
    chunks = list(s.chunks(100))
    x = np.concatenate(chunks)
    assert s.n == len(digits.x_test) == len(x) and x.shape[1:] == digits.input_shape
    assert [len(c) for c in chunks[:-1]] == [100] * (len(chunks) - 1)
    raw = x * stats["x_std"] + stats["x_mean"]  # back in pixel units: within [0, 1]
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
    assert np.array_equal(x, np.concatenate(list(s.chunks(100))))  # the same every time
    assert np.array_equal(x, np.concatenate(list(s.chunks(37))))  # whatever the chunking
    assert not np.allclose(x, digits.x_test[: len(x)])


def test_digits28_is_mnist_sized_and_refused_for_digits(digits):
    fake = type(digits)(
        "fashion_mnist",
        np.zeros((4, 28, 28, 1), np.float32) - 0.5,
        np.zeros(4, np.int32),
        np.zeros((3, 28, 28, 1), np.float32),
        np.zeros(3, np.int32),
        "classification",
        10,
    )
    fake = type(digits)(
        **{**fake.__dict__, "x_train": np.r_[fake.x_train, np.ones_like(fake.x_train)]}
    )
    stats = ood.input_statistics(fake)  # min -0.5, max 1: std 2/3, mean 1/3
    assert stats["x_std"] == pytest.approx(2 / 3) and stats["x_mean"] == pytest.approx(1 / 3)
    s = ood.ood_set("digits28", fake, stats)
    x = next(s.chunks(50))
    assert s.n == 1797 and x.shape == (50, 28, 28, 1)
    raw = x * stats["x_std"] + stats["x_mean"]
    assert np.allclose(raw[:, :4], 0, atol=1e-6) and raw.max() > 0.9  # padded like MNIST
    with pytest.raises(
        Exception, match="evaluation.ood=digits28 is not allowed with dataset=digits"
    ):
        ood.ood_set("digits28", digits, ood.input_statistics(digits))


def test_an_ood_npz_is_streamed_from_the_file_in_source_units(tmp_path, digits):
    from sklearn.datasets import load_digits

    raw = load_digits().images[:30]  # 0..16, as digits' source
    path = tmp_path / "ood.npz"
    np.savez(path, x=raw)
    stats = ood.input_statistics(digits)
    s = ood.ood_set(str(path), digits, stats)
    x = np.concatenate(list(s.chunks(7)))
    assert s.n == 30
    assert np.allclose(x, ood.normalise(raw / 16.0, stats).reshape(30, -1), atol=1e-6)


def test_an_ood_npz_of_the_wrong_shape_is_one_line_naming_file_and_shape(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.zeros((5, 28, 28)))
    with pytest.raises(DataError) as err:
        ood.check_ood_file(str(path), (8, 8))
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "(n, 8, 8)" in msg and "(5, 28, 28)" in msg
    np.savez(path, images=np.zeros((5, 8, 8)))
    with pytest.raises(DataError, match="has no array 'x'"):
        ood.check_ood_file(str(path), (8, 8))
    for ok in (np.zeros((5, 8, 8)), np.zeros((5, 64)), np.zeros((5, 8, 8, 1), np.uint8)):
        np.savez(path, x=ok)
        ood.check_ood_file(str(path), (8, 8))


# --- shift ---------------------------------------------------------------------------------------


def test_rotation_by_zero_is_the_test_set_and_by_90_is_a_quarter_turn(digits):
    stats = ood.input_statistics(digits)
    fill = ood.background(stats)
    t0 = shift.shift_transform("rotation", 0.0, (8, 8, 1), stats, fill)
    assert np.array_equal(t0(digits.x_test, 0), digits.x_test)
    t90 = shift.shift_transform("rotation", 90.0, (8, 8, 1), stats, fill)
    images = digits.x_test.reshape(-1, 8, 8)
    assert np.allclose(t90(digits.x_test, 0).reshape(-1, 8, 8), np.rot90(images, 1, axes=(1, 2)))
    t30 = shift.shift_transform("rotation", 30.0, (8, 8, 1), stats, fill)
    r30 = t30(digits.x_test, 0)
    assert not np.allclose(r30, digits.x_test)
    raw = r30 * stats["x_std"] + stats["x_mean"]
    assert raw.min() >= -1e-5  # the corners are filled with background, not below it


def test_corruptions_grow_with_severity_and_stay_in_pixel_range():
    rng = np.random.default_rng(0)
    raw = rng.uniform(0, 1, (20, 28, 28, 1))
    for name in shift.CORRUPTIONS:
        dist = []
        for severity in shift.SEVERITIES:
            out = shift.corrupt(raw, name, severity)
            assert out.shape == raw.shape and out.min() >= 0 and out.max() <= 1
            dist.append(np.abs(out - raw).mean())
        assert np.all(np.diff(dist) > 0), (name, dist)
    contrast = shift.corrupt(raw, "contrast", 5)
    assert contrast.std() < 0.1 * raw.std()


# --- through the CLI -----------------------------------------------------------------------------

TINY = [
    "smc.path=minibatch",
    "smc.num_particles=8",
    "smc.num_iterations=4",
    "logger=none",
    "progress=false",
]
TINY_VI = ["method=vi", "vi.num_iterations=4", "vi.num_predictive_samples=4", *TINY[3:]]
EVALUATION = [
    "evaluation.ood=[uniform_noise,sample_patches]",
    "evaluation.shift.rotations=[0,45]",
    "evaluation.shift.corruptions=[contrast]",
    "evaluation.shift.severities=[1,5]",
    "evaluation.selective=true",
]


def one_line_refusal(run_cli, tmp_path, *overrides):
    out = tmp_path / "run"
    proc = run_cli(*overrides, "logger=none", f"hydra.run.dir={out}")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists()  # refused before any work
    return lines[0]


def test_an_ood_npz_of_the_wrong_shape_is_refused_before_any_work(run_cli, tmp_path):
    bad = tmp_path / "fashion_like.npz"
    np.savez(bad, x=np.zeros((10, 28, 28), np.uint8))
    line = one_line_refusal(run_cli, tmp_path, f"evaluation.ood=[{bad}]")
    assert str(bad) in line and "(n, 8, 8)" in line and "(10, 28, 28)" in line


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("evaluation.ood=[svhn]", "evaluation.ood=svhn"),
        ("evaluation.ood=[digits28]", "evaluation.ood=digits28"),  # digits' own test inputs
        ("evaluation.shift.corruptions=[fog]", "evaluation.shift.corruptions=fog"),
        ("evaluation.shift.severities=[6]", "evaluation.shift.severities=6"),
        ("evaluation.coverages=[0]", "evaluation.coverages=0"),
    ],
)
def test_bad_evaluation_values_are_one_line_naming_the_key(run_cli, tmp_path, override, needle):
    assert needle in one_line_refusal(run_cli, tmp_path, override)


@pytest.mark.slow
@pytest.mark.parametrize("method", [TINY, TINY_VI], ids=["smc", "vi"])
def test_every_method_gets_ood_shift_and_selective_in_results(run_cli, tmp_path, method):
    out = tmp_path / "run"
    at_evaluations = ["eval_every=2", "evaluation.at_evaluations=true"]
    proc = run_cli(*method, *EVALUATION, *at_evaluations, f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr
    r = json.loads((out / "results.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evaluated = [row for row in rows if "test_accuracy" in row]
    assert [row["iter"] for row in evaluated] == [2, 4]
    assert all(set(row["test_ood"]) == set(r["ood"]) for row in evaluated)
    assert evaluated[-1]["test_selective"] == r["selective"]
    assert set(r["ood"]) == {"test", "uniform_noise", "sample_patches"}
    for name in ("uniform_noise", "sample_patches"):
        for score in uncertainty.SCORES:
            assert set(r["ood"][name][score]) == {"auroc", "aupr", "fpr95"}
            assert 0 <= r["ood"][name][score]["auroc"] <= 1
        assert sum(r["ood"][name]["entropy_histogram"]) == r["ood"][name]["n"]
    assert sum(r["ood"]["test"]["entropy_histogram"]) == r["n_test"]
    clean = r["shift"]["rotation"]["0"]  # rotated by 0: the test set itself
    assert clean["accuracy"] == r["accuracy"] and clean["nll"] == pytest.approx(r["nll"])
    assert set(r["shift"]) == {"rotation", "contrast"} and set(r["shift"]["contrast"]) == {"1", "5"}
    assert set(r["selective"]) == {"accuracy_at_50", "accuracy_at_80", "accuracy_at_90", "aurc"}


# --- report and plots ----------------------------------------------------------------------------


def fake_results(seed: int, method: str, auroc: float) -> dict:
    detection = {"auroc": auroc, "aupr": 0.5, "fpr95": 0.5}
    return {
        "method": method,
        "algorithm": "score_prox",
        "schedule": "ctr",
        "proposal": "hmc",
        "seed": seed,
        "status": "finished",
        "accuracy": 0.9,
        "runtime_s": 1.0,
        "ood": {
            "test": {"n": 4, "entropy_histogram": [3, 1, 0], "histogram_max": 2.3},
            "uniform_noise": {
                "n": 4,
                "entropy": detection,
                "mutual_information": {**detection, "auroc": auroc / 2},
                "max_prob": detection,
                "entropy_histogram": [0, 1, 3],
            },
        },
        "shift": {"rotation": {"0": {"accuracy": 0.9, "ece": 0.1}, "90": {"accuracy": 0.3}}},
        "selective": {"aurc": 0.05, "accuracy_at_50": 1.0},
    }


def test_report_has_uncertainty_columns_and_plots(tmp_path):
    from bnn_bench import plots, report

    for i, (method, seed, auroc) in enumerate([("smc", 0, 0.8), ("smc", 1, 0.9), ("vi", 0, 0.6)]):
        job = tmp_path / str(i)
        job.mkdir()
        (job / "results.json").write_text(json.dumps(fake_results(seed, method, auroc)))
    out = report.report(tmp_path)
    text = (tmp_path / "table.md").read_text()
    section = text[text.index("## Uncertainty") :]
    assert "AUROC entropy uniform_noise" in section and "AUROC MI uniform_noise" in section
    assert "AURC" in section and "accuracy rot 90" in section
    assert "0.850 ± 0.071" in section  # smc's two seeds: mean and sample std of 0.8, 0.9
    assert "| 0.600 | 0.300 |" in section  # vi's one seed: entropy and MI AUROC
    assert tmp_path / "accuracy_vs_shift.png" in out["files"]
    assert (tmp_path / "accuracy_vs_shift.png").stat().st_size > 0
    written = plots.run_plots(tmp_path / "0")
    assert tmp_path / "0" / "entropy_histogram.png" in written


def test_report_without_evaluation_has_no_uncertainty_section(tmp_path):
    from bnn_bench import report

    plain = {
        k: v
        for k, v in fake_results(0, "smc", 0.8).items()
        if k not in ("ood", "shift", "selective")
    }
    (tmp_path / "results.json").write_text(json.dumps(plain))
    out = report.report(tmp_path)
    assert "## Uncertainty" not in (tmp_path / "table.md").read_text()
    assert not (tmp_path / "accuracy_vs_shift.png").exists() and len(out["files"]) >= 2


@pytest.mark.slow
def test_the_evaluation_does_not_depend_on_the_chunk_size():
    """Streaming in chunks (and padding the last one) gives the numbers of one whole pass."""
    import jax
    import jax.numpy as jnp
    from hydra import compose, initialize_config_dir

    from bnn_bench import build
    from bnn_bench.inference.smc import sampler
    from bnn_bench.preflight import CONFIG_DIR

    overrides = [
        "evaluation.ood=[uniform_noise,sample_patches]",
        "evaluation.shift.rotations=[0,30]",
        "evaluation.shift.corruptions=[gaussian_noise]",
        "evaluation.shift.severities=[3]",
        "evaluation.selective=true",
    ]
    results = []
    for chunk in (2000, 64):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(
                config_name="config", overrides=[*overrides, f"hardware.eval_chunk={chunk}"]
            )
        data = build.load_data(cfg)
        post = build.posterior(cfg, data)
        state = sampler.init(jax.random.key(0), post.prior_std, post.log_prior, 4)
        log_weights = jnp.array([0.0, -1.0, -np.inf, 0.5])  # one dropped particle
        results.append(build.evaluator(cfg, data, post)(state.particles, log_weights, True))
    whole, chunked = results
    for name in ("uniform_noise", "sample_patches"):
        for score in uncertainty.SCORES:
            assert chunked["ood"][name][score] == pytest.approx(whole["ood"][name][score], abs=1e-6)
        assert chunked["ood"][name]["entropy_histogram"] == whole["ood"][name]["entropy_histogram"]
    for kind, levels in whole["shift"].items():
        for level, m in levels.items():
            assert chunked["shift"][kind][level] == pytest.approx(m, abs=1e-5)
    assert chunked["selective"] == pytest.approx(whole["selective"], abs=1e-9)
    assert whole["shift"]["rotation"]["0"]["accuracy"] == whole["accuracy"]


@pytest.mark.slow
def test_hmc_scores_its_kept_draws_on_the_ood_and_shifted_sets(run_cli, tmp_path):
    out = tmp_path / "run"
    tiny_hmc = ["method=hmc", "hmc.num_chains=2", "hmc.num_warmup=30", "hmc.num_samples=12"]
    tiny_hmc += ["hmc.thin=2", "hmc.init_steps=50", "hmc.max_tree_depth=5"]
    proc = run_cli(*tiny_hmc, *EVALUATION, *TINY[3:], f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr
    r = json.loads((out / "results.json").read_text())
    assert set(r["ood"]) == {"test", "uniform_noise", "sample_patches"}
    assert sum(r["ood"]["test"]["entropy_histogram"]) == r["n_test"]
    # rotated by 0 is the test set: the same 12 draws give the run's own accuracy and NLL
    clean = r["shift"]["rotation"]["0"]
    assert clean["accuracy"] == pytest.approx(r["accuracy"]) and clean["nll"] == pytest.approx(
        r["nll"], rel=1e-4
    )
    assert set(r["selective"]) == {"accuracy_at_50", "accuracy_at_80", "accuracy_at_90", "aurc"}
