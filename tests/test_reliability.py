"""Runs that survive: kill and resume, SIGTERM, divergence, bad input through the real CLI."""

import json
import signal
import subprocess
import time

import numpy as np
import pytest
from conftest import CLI, REPO, cli_env, read_jsonl

from bnn_bench.config import check_targets
from bnn_bench.data import write_idx
from bnn_bench.errors import ConfigError

# Long enough (thousands of cheap full-batch iterations) that a kill lands mid-run.
LONG = [
    "smc.path=minibatch",
    "model=linear",
    "schedule=full",
    "smc.num_particles=8",
    "smc.num_iterations=4000",
    "checkpoint_every=500",
    "log_every=50",
    "logger=none",
    "progress=false",
]
COMPARED = ("accuracy", "nll", "ece", "brier", "ess_final", "n_resample", "iterations")


def results(directory):
    return json.loads((directory / "results.json").read_text())


def start(out, *extra):
    return subprocess.Popen(
        [*CLI, *LONG, *extra, f"hydra.run.dir={out}"],
        cwd=REPO,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path, proc, timeout=240):
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, f"run ended before {path.name} appeared: {proc.stderr.read()}"
        assert time.time() - t0 < timeout, f"no {path.name} after {timeout} s"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = subprocess.run(
        [*CLI, *LONG, f"hydra.run.dir={out}"], cwd=REPO, env=cli_env(), capture_output=True
    )
    assert proc.returncode == 0, proc.stderr
    return results(out)


def assert_same_results(got, want):
    assert got["status"] == "finished"
    assert {k: got[k] for k in COMPARED} == {k: want[k] for k in COMPARED}
    assert got["example_grads"] == want["example_grads"]


@pytest.mark.slow
def test_sigkill_then_resume_ends_as_if_never_killed(tmp_path, reference, run_cli):
    out = tmp_path / "run"
    proc = start(out)
    wait_for(out / "checkpoint.npz", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "results.json").exists(), "the run finished before it could be killed"
    rows_before = read_jsonl(out / "metrics.jsonl")

    resumed = run_cli(*LONG, "resume=true", f"hydra.run.dir={out}")
    assert resumed.returncode == 0, resumed.stderr
    assert "resume: continuing from iteration" in resumed.stderr
    assert_same_results(results(out), reference)
    # metrics.jsonl holds every iteration exactly once, the killed run's rows up to its checkpoint
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["iter"] for r in rows] == list(range(1, 4001))
    assert rows[: len(rows_before)] == rows_before[: len(rows_before)]


@pytest.mark.slow
def test_sigterm_checkpoints_then_resume_finishes(tmp_path, reference, run_cli):
    out = tmp_path / "run"
    proc = start(out, "checkpoint_every=0")  # no periodic checkpoints: SIGTERM's own
    wait_for(out / "metrics.jsonl", proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "interrupted by SIGTERM at iteration" in lines[0], stderr
    assert "resume=true" in lines[0]
    assert results(out)["status"] == "interrupted"
    assert (out / "checkpoint.npz").exists()

    resumed = run_cli(*LONG, "checkpoint_every=0", "resume=true", f"hydra.run.dir={out}")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_results(results(out), reference)


@pytest.mark.slow
def test_a_used_directory_and_a_changed_config_are_refused(tmp_path, run_cli):
    out = tmp_path / "run"
    tiny = ["model=linear", "smc.num_particles=4", "smc.num_iterations=4", "checkpoint_every=2"]
    first = run_cli(*tiny, "logger=none", f"hydra.run.dir={out}")
    assert first.returncode == 0, first.stderr
    kept = (out / "results.json").read_text()

    again = run_cli(*tiny, "logger=none", f"hydra.run.dir={out}")
    assert again.returncode == 2 and "already holds a run" in again.stderr
    changed = run_cli(*tiny, "seed=1", "resume=true", "logger=none", f"hydra.run.dir={out}")
    assert changed.returncode == 2
    assert len(changed.stderr.strip().splitlines()) == 1
    assert "seed=1 (checkpoint: 0)" in changed.stderr and "Traceback" not in changed.stderr
    assert (out / "results.json").read_text() == kept  # nothing written is lost


@pytest.mark.slow
def test_divergence_stops_with_one_line_and_status_diverged(tmp_path, run_cli):
    out = tmp_path / "run"
    # the minibatch path's unadjusted moves blow up at h = 1000 (the exact path's MH step
    # rejects them and h adapts down)
    proc = run_cli(
        "smc.path=minibatch",
        "proposal.step_size=1000",
        "logger=none",
        "progress=false",
        f"hydra.run.dir={out}",
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "every particle diverged by iteration 1" in lines[0]
    assert "smaller proposal.step_size" in lines[0]
    res = results(out)
    assert res["status"] == "diverged" and "diverged" in res["error"]


# ---------------------------------------------------------------------------------------------
# Bad input: every row is one line on stderr, a non-zero exit, no traceback, no results.json
# ---------------------------------------------------------------------------------------------


def npz(tmp_path, **arrays):
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return [f"dataset.path={path}", "dataset=npz"]


def idx_dir(tmp_path, *, truncate=False, magic=None):
    rng = np.random.default_rng(0)
    d = tmp_path / "mnist"
    d.mkdir()
    for prefix, n in (("train", 30), ("t10k", 10)):
        write_idx(d / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), np.uint8))
        write_idx(d / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n, np.uint8))
    images = d / "train-images-idx3-ubyte"
    raw = images.read_bytes()
    if truncate:
        images.write_bytes(raw[:-100])
    if magic is not None:
        images.write_bytes(magic + raw[4:])
    return ["dataset=mnist", f"dataset.root={d}", "model=linear", "schedule.batch_size=10"]


ONES = np.ones((6, 2))
LABELS = np.array([0, 1, 0, 1, 0, 1])
BAD_INPUTS = {
    "unknown option": (lambda t: ["model=resnet1000"], "model=resnet1000 is not an option"),
    "unknown group": (lambda t: ["optimizer=adam"], "optimizer"),
    "unknown key": (lambda t: ["smc.particles=8"], "smc.particles"),
    "added key": (lambda t: ["+optimizer=adam"], "optimizer: unknown key"),
    "wrong type": (lambda t: ["smc.num_particles=ten"], "smc.num_particles"),
    "out of range": (lambda t: ["smc.resample_threshold=2"], "smc.resample_threshold=2"),
    "foreign _target_": (lambda t: ["+model._target_=os.system"], "model._target_"),
    "npz missing": (lambda t: ["dataset=npz", f"dataset.path={t}/none.npz"], "none.npz"),
    "npz without y": (lambda t: npz(t, x=ONES), "has no array 'y'"),
    "npz lengths": (lambda t: npz(t, x=ONES, y=LABELS[:4]), "x has 6 rows but y has 4"),
    "npz NaN": (lambda t: npz(t, x=ONES * np.nan, y=LABELS), "NaN or Inf"),
    "npz Inf": (lambda t: npz(t, x=ONES * np.inf, y=LABELS), "NaN or Inf"),
    "npz labels": (lambda t: npz(t, x=ONES, y=LABELS - 1), "labels outside 0..K-1"),
    "idx truncated": (lambda t: idx_dir(t, truncate=True), "train-images-idx3-ubyte"),
    "idx magic": (lambda t: idx_dir(t, magic=b"\x12\x34\x08\x03"), "train-images-idx3-ubyte"),
}


@pytest.mark.slow
@pytest.mark.parametrize("row", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_writes_no_results(tmp_path, run_cli, row):
    make_args, needle = BAD_INPUTS[row]
    out = tmp_path / "run"
    # a short run, should a row ever be accepted by mistake
    short = ["smc.num_iterations=3", "logger=none", "progress=false", f"hydra.run.dir={out}"]
    proc = run_cli(*make_args(tmp_path), *short)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnn-bench: error:"), proc.stderr
    assert needle in lines[0] and "Traceback" not in proc.stderr
    assert not (out / "results.json").exists()


def test_an_output_directory_that_cannot_be_made_is_one_line(tmp_path, run_cli):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory would go")
    proc = run_cli("logger=none", f"hydra.run.dir={blocker / 'run'}")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(blocker / "run") in lines[0], proc.stderr
    assert "is not a directory" in lines[0] and "Traceback" not in proc.stderr


def test_foreign_targets_are_refused_anywhere_in_a_config():
    check_targets({"model": {"_target_": "bnn_bench.models.build_model"}})
    with pytest.raises(ConfigError, match="a.0._target_=subprocess.call is not allowed"):
        check_targets({"a": [{"_target_": "subprocess.call"}]})


@pytest.mark.slow
def test_wandb_online_without_network_goes_offline_and_keeps_the_key_secret(tmp_path, run_cli):
    secret = "0123456789abcdef0123456789abcdef01234567"
    env = cli_env(
        WANDB_MODE=None,
        WANDB_API_KEY=secret,
        WANDB_BASE_URL="http://127.0.0.1:9",  # nothing listens there: no network
        WANDB_INIT_TIMEOUT="10",
    )
    out = tmp_path / "run"
    args = ["model=linear", "smc.num_particles=4", "smc.num_iterations=3", "logger.mode=online"]
    proc = run_cli(*args, "progress=false", f"hydra.run.dir={out}", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "logging offline" in proc.stderr
    assert results(out)["status"] == "finished"
    assert secret not in proc.stderr + proc.stdout
    for path in out.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_no_pickle_in_the_package():
    package = REPO / "bnn_bench"
    for path in package.rglob("*.py"):
        text = path.read_text()
        assert "allow_pickle=True" not in text and "import pickle" not in text, path


def sigterm_then_resume(tmp_path, run_cli, args):
    """An uninterrupted run, and a run stopped by SIGTERM mid-way then resumed: both results."""
    ref = tmp_path / "ref"
    proc = run_cli(*args, f"hydra.run.dir={ref}")
    assert proc.returncode == 0, proc.stderr

    out = tmp_path / "run"
    job = subprocess.Popen(
        [*CLI, *args, f"hydra.run.dir={out}"],
        cwd=REPO,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(out / "metrics.jsonl", job)
    job.send_signal(signal.SIGTERM)
    _, stderr = job.communicate(timeout=120)
    assert job.returncode == 143, stderr
    assert results(out)["status"] == "interrupted" and (out / "checkpoint.npz").exists()

    resumed = run_cli(*args, "resume=true", f"hydra.run.dir={out}")
    assert resumed.returncode == 0, resumed.stderr
    return results(out), results(ref), read_jsonl(out / "metrics.jsonl")


VI_LONG = [
    "method=vi",
    "model=linear",
    "vi.num_iterations=3000",
    "vi.batch_size=50",
    "vi.num_samples=2",
    "vi.num_predictive_samples=4",
    "checkpoint_every=0",
    "log_every=50",
    "logger=none",
    "progress=false",
]


@pytest.mark.slow
def test_vi_sigterm_then_resume_ends_as_if_never_stopped(tmp_path, run_cli):
    got, want, rows = sigterm_then_resume(tmp_path, run_cli, VI_LONG)
    keys = ("accuracy", "nll", "ece", "neg_elbo", "score_loss", "iterations", "example_grads")
    assert {k: got[k] for k in keys} == {k: want[k] for k in keys}
    assert [r["iter"] for r in rows] == list(range(1, 3001))


ADAPTIVE_LONG = [
    "smc.path=minibatch",
    "model=linear",
    "schedule=ctr_adaptive",
    "schedule.batch_size=100",
    "proposal.adapt_step_size=true",
    "smc.num_particles=8",
    "smc.num_iterations=3000",
    "checkpoint_every=0",
    "log_every=50",
    "logger=none",
    "progress=false",
]


@pytest.mark.slow
def test_adaptive_schedule_sigterm_then_resume_ends_as_if_never_stopped(tmp_path, run_cli):
    # The schedule state and the adapted step size live on the device and in the checkpoint.
    got, want, rows = sigterm_then_resume(tmp_path, run_cli, ADAPTIVE_LONG)
    keys = (*COMPARED, "example_grads", "step_size")
    assert {k: got[k] for k in keys} == {k: want[k] for k in keys}
    assert [r["iter"] for r in rows] == list(range(1, want["iterations"] + 1))
