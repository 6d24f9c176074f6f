"""bnn-bench-report on a synthetic sweep, the plots, the presets' sweeps, and a tiny real sweep."""

import json
import math
import statistics
import subprocess
import sys

import pytest
from conftest import REPO, cli_env

from bnn_bench import plots, report

REPORT = [sys.executable, "-m", "bnn_bench.report"]


def write_job(directory, metrics_rows=None, **results):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.json").write_text(json.dumps(results))
    if metrics_rows is not None:
        text = "".join(json.dumps(r) + "\n" for r in metrics_rows)
        (directory / "metrics.jsonl").write_text(text)


def smc(seed, schedule, accuracy, runtime, nll=0.5, ece=0.05, grads=1000, **extra):
    return dict(
        method="smc",
        experiment="synthetic_reduced",
        schedule=schedule,
        proposal=extra.pop("proposal", "hmc"),
        seed=seed,
        accuracy=accuracy,
        nll=nll,
        ece=ece,
        brier=0.1,
        runtime_s=runtime,
        example_grads=grads,
        status="finished",
        **extra,
    )


@pytest.fixture
def sweep(tmp_path):
    """full and ctr (hmc) x 3 seeds, full (langevin) x 2, VI advi x 2, one failed, one diverged."""
    d = tmp_path / "sweep"
    full = [(0.80, 100.0), (0.82, 120.0), (0.78, 90.0)]
    ctr = [(0.79, 20.0), (0.80, 30.0), (0.75, 15.0)]
    n = 0
    for seed, (acc, t) in enumerate(full):
        write_job(d / str(n), **smc(seed, "full", acc, t, grads=4000))
        n += 1
    for seed, (acc, t) in enumerate(ctr):
        write_job(d / str(n), **smc(seed, "ctr", acc, t, grads=800))
        n += 1
    for seed, t in enumerate((50.0, 40.0)):
        write_job(d / str(n), **smc(seed, "full", 0.7, t, proposal="langevin"))
        n += 1
    write_job(
        d / str(n),
        method="smc",
        experiment="synthetic_reduced",
        schedule="linear",
        proposal="hmc",
        seed=0,
        runtime_s=3.0,
        status="failed",
        error="ValueError: something broke | badly",
    )
    n += 1
    write_job(
        d / str(n),
        method="smc",
        experiment="synthetic_reduced",
        schedule="ctr",
        proposal="hmc",
        seed=3,
        runtime_s=4.0,
        status="diverged",
        error="every particle diverged by iteration 7",
    )
    n += 1
    for seed in (0, 1):
        rows = [
            {"iter": k, "neg_elbo": 1000.0 / k + seed, "time_s": 0.1 * k, "batch_size": 100}
            for k in range(1, 11)
        ]
        write_job(
            d / "vi" / str(seed),
            rows,
            method="vi",
            experiment="synthetic_reduced",
            algorithm="advi",
            seed=seed,
            accuracy=0.6 + 0.1 * seed,
            nll=1.0,
            ece=0.1,
            runtime_s=5.0,
            example_grads=400,
            neg_elbo=1000.0 + 100 * seed,
            status="finished",
        )
    return d


def test_report_tables_numbers_and_failed_jobs(sweep):
    out = report.report(sweep)
    rows = {(r.method, r.variant, r.proposal): r for r in out["rows"]}
    full, ctr = rows["smc", "full", "hmc"], rows["smc", "ctr", "hmc"]
    assert len(full.jobs) == 3 and len(ctr.jobs) == 3 and len(ctr.not_finished) == 1
    # mean and sample std by hand
    mean, std, n = ctr.stats["accuracy"]
    assert n == 3
    assert mean == pytest.approx((0.79 + 0.80 + 0.75) / 3)
    assert std == pytest.approx(statistics.stdev([0.79, 0.80, 0.75]))
    assert full.stats["runtime_s"][0] == pytest.approx(310 / 3)
    # speed-up: full's runtime / ctr's runtime, paired by seed: 100/20, 120/30, 90/15
    ratios = [5.0, 4.0, 6.0]
    assert ctr.speedup[0] == pytest.approx(5.0)
    assert ctr.speedup[1] == pytest.approx(statistics.stdev(ratios))
    assert full.speedup[:2] == pytest.approx((1.0, 0.0))
    # langevin rows compare with langevin's full only; VI has no speed-up; a seed alone: no std
    assert rows["smc", "full", "langevin"].speedup[0] == pytest.approx(1.0)
    assert rows["vi", "advi", ""].speedup is None
    assert rows["vi", "advi", ""].stats["accuracy"][0] == pytest.approx(0.65)
    assert rows["vi", "advi", ""].stats["neg_elbo"][0] == pytest.approx(1050.0)  # VI's own column
    assert "neg_elbo" not in rows["smc", "ctr", "hmc"].stats
    # the failed job's group has a row with no finished seed; both bad jobs are listed
    assert len(rows["smc", "linear", "hmc"].jobs) == 0
    assert {j.directory for j in out["not_finished"]} == {"8", "9"}

    md = (sweep / "table.md").read_text()
    assert "| synthetic_reduced | smc | ctr | hmc | 3 | 1 | 0.7800 ± 0.0265 |" in md
    assert "5.00 ± 1.00" in md  # ctr's speed-up
    assert "## Jobs that did not finish (2)" in md
    assert "| 8 | failed | smc/linear/hmc | 0 | ValueError: something broke \\| badly |" in md
    assert "| 9 | diverged | smc/ctr/hmc | 3 | every particle diverged by iteration 7 |" in md
    # rows in schedule order: full, ctr, linear; hmc before langevin
    order = [line.split(" | ")[2:4] for line in md.splitlines() if "| synthetic_reduced" in line]
    assert order[:4] == [["full", "hmc"], ["full", "langevin"], ["ctr", "hmc"], ["linear", "hmc"]]

    tex = (sweep / "table.tex").read_text()
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 2
    main = tex.split(r"\end{tabular}")[0]
    spec = main.split(r"\begin{tabular}{")[1].split("}")[0]
    body = [ln for ln in main.splitlines() if ln.endswith(r"\\")]
    assert len(body) == 1 + len(out["rows"])  # header + one line per row
    for line in body:  # every line has as many cells as the column spec says
        assert line.count(" & ") + 1 == len(spec)
    assert r"synthetic\_reduced" in tex and r"0.7800 $\pm$ 0.0265" in tex
    assert "ValueError: something broke | badly" in tex  # listed in LaTeX as well

    for name in ("accuracy_vs_runtime.png", "neg_elbo_vs_time.png"):
        png = sweep / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_tuned_proposals_get_their_own_rows_and_compare_with_the_fixed_full(tmp_path):
    for n, (schedule, adapt, mass, runtime, acc) in enumerate(
        [
            ("full", False, "identity", 100.0, 0.70),
            ("ctr", False, "identity", 20.0, 0.60),
            ("ctr", True, "identity", 25.0, 0.68),
            ("ctr", True, "diag", 50.0, 0.66),
        ]
    ):
        write_job(
            tmp_path / str(n),
            **smc(0, schedule, acc, runtime, adapt_step_size=adapt, mass=mass),
        )
    rows = report.report(tmp_path)["rows"]
    assert [(r.variant, r.proposal) for r in rows] == [
        ("full", "hmc"),
        ("ctr", "hmc"),
        ("ctr", "hmc+adapt"),
        ("ctr", "hmc+adapt+diag"),
    ]
    assert [r.stats["accuracy"][0] for r in rows] == pytest.approx([0.70, 0.60, 0.68, 0.66])
    # no full run with the adapted h: the speed-up is against the fixed-h full run
    assert [r.speedup[0] for r in rows] == pytest.approx([1.0, 5.0, 4.0, 2.0])


def test_report_cli_without_results_is_one_line_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    for target in (tmp_path / "empty", tmp_path / "missing"):
        proc = subprocess.run([*REPORT, str(target)], capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("bnn-bench-report: error: SWEEP_DIR=")
        assert not (target / "table.md").exists()


def test_unreadable_results_file_is_listed_not_dropped(tmp_path):
    write_job(tmp_path / "0", **smc(0, "full", 0.8, 10.0))
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "results.json").write_text('{"method": "smc", "acc')  # cut short
    out = report.report(tmp_path)
    assert [j.directory for j in out["not_finished"]] == ["1"]
    assert "unreadable results.json" in (tmp_path / "table.md").read_text()


def test_run_plots_from_files(tmp_path):
    rows = [
        {"iter": k, "batch_size": 100 if k < 9 else 1000, "ess": 8.0 - 0.5 * k, "time_s": k}
        for k in range(1, 11)
    ]
    bins = {
        "bin_confidence": [None] * 10 + [0.7, 0.75, 0.85, 0.9, 0.98],
        "bin_accuracy": [None] * 10 + [0.6, 0.7, 0.8, 0.92, 0.99],
        "bin_count": [0] * 10 + [5, 10, 20, 30, 35],
    }
    write_job(tmp_path, rows, **smc(0, "ctr", 0.9, 1.0, reliability=bins))
    written = plots.run_plots(tmp_path)
    assert sorted(p.name for p in written) == ["ess_batch.png", "reliability.png"]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_reliability_summary_matches_the_ece_bins():
    import numpy as np

    from bnn_bench import metrics

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 4)) * 2
    log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    labels = rng.integers(0, 4, size=500)
    s = metrics.reliability_summary(log_probs, labels)
    assert len(s["bin_count"]) == 15 and sum(s["bin_count"]) == 500
    conf, correct = np.exp(log_probs).max(1), log_probs.argmax(1) == labels
    b = np.minimum(np.floor(conf * 15).astype(int), 14)
    ece = 0.0
    for i in range(15):
        if s["bin_count"][i] == 0:
            assert s["bin_accuracy"][i] is None and s["bin_confidence"][i] is None
            continue
        assert s["bin_accuracy"][i] == pytest.approx(correct[b == i].mean())
        assert s["bin_confidence"][i] == pytest.approx(conf[b == i].mean(), rel=1e-5)
        ece += s["bin_count"][i] / 500 * abs(s["bin_accuracy"][i] - s["bin_confidence"][i])
    ece_metric = metrics.classification_metrics(log_probs, labels)["ece"]
    assert ece == pytest.approx(ece_metric, rel=1e-5)


@pytest.mark.parametrize(
    ("overrides", "jobs"),
    [
        (["experiment=paper_fmnist_cnn"], 6 * 2 * 5),
        (["experiment=paper_mnist_lenet5_reduced"], 6 * 2 * 5),
        (["experiment=paper_fmnist_cnn_reduced", "proposal=langevin", "schedule=full,ctr"], 10),
        (["experiment=paper_vi_fmnist"], 4 * 5),
        (["experiment=paper_vi_fmnist_reduced", "seed=0"], 4),
        (["experiment=smoke_sweep"], 4),
    ],
)
def test_presets_declare_their_sweeps(overrides, jobs):
    """The sweep a preset declares in hydra.sweeper.params, as the multirun preflight expands and
    validates it (a command-line key replaces the preset's sweep of that key, as in Hydra)."""
    from hydra import compose, initialize_config_dir

    from bnn_bench import config, preflight

    with initialize_config_dir(config_dir=preflight.CONFIG_DIR, version_base="1.3"):
        first = preflight.job_overrides(overrides, multirun=True)[0]
        expanded = preflight._with_sweeper_params(compose, overrides, first)
        assert len(expanded) == jobs
        assert len({tuple(sorted(j)) for j in expanded}) == jobs
        cfg = compose(config_name="config", overrides=expanded[-1])
        config.validate(cfg)
    assert cfg.experiment == overrides[0].split("=")[1]
    if "reduced" in cfg.experiment and cfg.method.name == "smc":
        assert cfg.dataset.n_train == 500 and cfg.smc.num_particles == 8
    if cfg.method.name == "smc" and cfg.experiment.startswith("paper"):
        assert (cfg.proposal.step_size, cfg.schedule.refine_at) == (0.002, 0.9)
        assert cfg.smc.resample_threshold == 0.5


@pytest.mark.slow
def test_tiny_preset_multirun_then_report(tmp_path):
    """`bnn-bench -m experiment=smoke_sweep` runs the preset's sweep (Hydra reads
    hydra.sweeper.params from the preset chosen on the command line), then the report."""
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [*REPORT[:2], "bnn_bench.cli", "-m", "experiment=smoke_sweep", f"hydra.sweep.dir={sweep}"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=cli_env(),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1", "2", "3"]
    seen = set()
    for job in jobs:
        results = json.loads((sweep / job / "results.json").read_text())
        seen.add((results["schedule"], results["seed"]))
        assert results["experiment"] == "smoke_sweep"
        rel = results["reliability"]
        assert sum(rel["bin_count"]) == results["n_test"] and len(rel["bin_count"]) == 15
        for name in ("ess_batch.png", "reliability.png"):
            assert (sweep / job / name).stat().st_size > 5000
    assert seen == {("full", 0), ("full", 1), ("ctr", 0), ("ctr", 1)}

    proc = subprocess.run([*REPORT, str(sweep)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    md = (sweep / "table.md").read_text()
    assert "| smoke_sweep | smc | full | hmc | 2 | 0 |" in md
    assert "| smoke_sweep | smc | ctr | hmc | 2 | 0 |" in md
    assert "None: every job finished." in md
    ctr = [ln for ln in md.splitlines() if "| ctr |" in ln][0]
    speedup = ctr.split(" | ")[-1].rstrip(" |")
    assert math.isfinite(float(speedup.split(" ± ")[0]))
    assert (sweep / "table.tex").read_text().count(r"\begin{tabular}") == 1
    assert (sweep / "accuracy_vs_runtime.png").stat().st_size > 5000


def test_wandb_run_logs_plots_as_images(tmp_path):
    """With W&B active, each PNG is logged as a wandb.Image under plots/<name>."""
    import wandb

    from bnn_bench.tracking import WandbRun

    logged = []

    class FakeRun:
        def log(self, data, step=None):
            logged.append(data)

    png = plots.neg_elbo_vs_time([("advi", [0.0, 1.0], [5.0, 4.0])], tmp_path / "curve.png")
    run = WandbRun(
        mode="disabled",
        project="p",
        entity=None,
        group=None,
        job_type=None,
        name=None,
        config={},
        out_dir=tmp_path,
    )
    run.images([png])  # disabled: nothing to log to
    run.run = FakeRun()
    run.images([png])
    assert len(logged) == 1 and set(logged[0]) == {"plots/curve"}
    assert isinstance(logged[0]["plots/curve"], wandb.Image)


def test_multirun_preflight_validates_the_declared_sweep(run_cli, tmp_path):
    """A bad value in hydra.sweeper.params (as a preset would declare it) is refused before any
    job runs: one line naming the key and value, exit 2, no sweep directory."""
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "-m",
        "experiment=smoke_sweep",
        "hydra.sweeper.params.schedule='full,no_such_schedule'",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "schedule=no_such_schedule" in lines[0], proc.stderr
    assert not sweep.exists()


def test_pooled_reliability_bins_weight_each_run_by_its_counts(tmp_path):
    a = {
        "bin_confidence": [0.2, None, 0.9],
        "bin_accuracy": [0.0, None, 1.0],
        "bin_count": [1, 0, 3],
    }
    b = {"bin_confidence": [0.4, 0.6, 0.8], "bin_accuracy": [1.0, 0.5, 0.5], "bin_count": [3, 2, 1]}
    pooled = plots.pool_bins([a, b])
    assert pooled["bin_count"] == [4, 2, 4]
    assert pooled["bin_confidence"] == pytest.approx([0.35, 0.6, 0.875])
    assert pooled["bin_accuracy"] == pytest.approx([0.75, 0.5, 0.875])
    empty = plots.pool_bins([a, a])
    assert empty["bin_confidence"][1] is None and empty["bin_count"][1] == 0
    png = plots.reliability_panel([("a", a), ("b", b), ("pooled", pooled)], tmp_path / "p.png")
    assert png.stat().st_size > 0
