"""bnn-bench-report lists every job of a sweep (issue 17, item 5), from the sweep's own record.

A job that failed before writing results.json, one that never started, a results.json of the
wrong shape, non-object lines in metrics.jsonl and an unwritable output directory: each is
listed or answered in one line, and the report exits 1 whenever a job did not finish.
"""

import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml
from conftest import CLI, REPO, cli_env

from bnn_bench import report

REPORT = [sys.executable, "-m", "bnn_bench.report"]


def finished(seed, schedule="full", **extra):
    return dict(
        method="smc",
        experiment="e",
        schedule=schedule,
        proposal="hmc",
        seed=seed,
        accuracy=0.8,
        nll=0.5,
        ece=0.05,
        runtime_s=10.0,
        example_grads=100,
        status="finished",
        **extra,
    )


def write_record(root, task, params=None, subdir="${hydra.job.num}"):
    """A multirun.yaml as Hydra writes it (the parts the report reads)."""
    root.mkdir(parents=True, exist_ok=True)
    hydra = {
        "sweep": {"dir": str(root), "subdir": subdir},
        "sweeper": {
            "_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
            "max_batch_size": None,
            "params": params,
        },
        "overrides": {"hydra": [f"hydra.sweep.dir={root}"], "task": task},
    }
    (root / "multirun.yaml").write_text(yaml.safe_dump({"hydra": hydra, "seed": 0}))


def start_job(directory, overrides, schedule="full", seed=0, method="smc"):
    """What Hydra writes into a job directory when the job starts."""
    (directory / ".hydra").mkdir(parents=True)
    (directory / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    cfg = {"method": {"name": method}, "schedule": {"name": schedule}, "seed": seed}
    cfg |= {"proposal": {"name": "hmc", "adapt_step_size": False, "mass": "identity"}}
    cfg |= {"experiment": "e"}
    (directory / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))


def write_checkpoint_meta(path, iteration):
    meta = np.frombuffer(json.dumps({"iteration": iteration}).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, leaf_0=np.zeros(3), __meta__=meta)
    path.write_bytes(buf.getvalue())


def run_report(*args):
    return subprocess.run([*REPORT, *map(str, args)], capture_output=True, text=True, cwd=REPO)


def test_every_job_of_the_record_is_listed_with_why_it_did_not_finish(tmp_path):
    sweep = tmp_path / "sweep"
    # the preset's sweeper params come first, then the command line's overrides (Hydra's order)
    write_record(sweep, ["experiment=e", "progress=false"], params={"seed": "0,1,2,3"})
    jobs = [["seed=0", "experiment=e", "progress=False"]]
    jobs += [[f"seed={s}", "experiment=e", "progress=False"] for s in (1, 2, 3)]
    start_job(sweep / "0", jobs[0])
    (sweep / "0" / "results.json").write_text(json.dumps(finished(0)))
    start_job(sweep / "1", jobs[1], seed=1)  # killed at iteration 7, checkpoint at 5
    rows = "".join(json.dumps({"iter": k, "ess": 3.0}) + "\n" for k in range(1, 8))
    (sweep / "1" / "metrics.jsonl").write_text(rows + '{"iter": 8, "ess')
    write_checkpoint_meta(sweep / "1" / "checkpoint.npz", 5)
    start_job(sweep / "2", jobs[2], seed=2)  # failed before its first iteration
    # job 3 never started: no directory at all

    out = report.report(sweep)
    by_dir = {j.directory: j for j in out["jobs"]}
    assert sorted(by_dir) == ["0", "1", "2", "3"]
    assert [j.directory for j in out["not_finished"]] == ["1", "2", "3"]
    assert by_dir["1"].status == "no results"
    assert "iteration 7" in by_dir["1"].results["error"]
    assert "checkpoint.npz at iteration 5" in by_dir["1"].results["error"]
    assert "resume=true" in by_dir["1"].results["error"]
    assert "before its first iteration" in by_dir["2"].results["error"]
    assert by_dir["3"].status == "not started" and "seed=3" in by_dir["3"].results["error"]
    # jobs 1 and 2 count in their row (from .hydra/config.yaml); job 3 is listed only
    (row,) = out["rows"]
    assert (len(row.jobs), len(row.not_finished)) == (1, 2)
    md = (sweep / "table.md").read_text()
    assert "## Jobs that did not finish (3)" in md and "every job finished" not in md

    proc = run_report(sweep)
    assert proc.returncode == 1, proc.stderr
    assert "3 of 4 job(s) did not finish" in proc.stderr and "Traceback" not in proc.stderr


def test_jobs_are_matched_by_their_overrides_under_a_custom_subdir(tmp_path):
    sweep = tmp_path / "sweep"
    write_record(sweep, ["seed=0,1", "schedule=full,ctr"], subdir="${hydra.job.override_dirname}")
    start_job(sweep / "a", ["seed=1", "schedule=full"], seed=1)
    (sweep / "a" / "results.json").write_text(json.dumps(finished(1)))
    out = report.report(sweep)
    missing = sorted(j.results["error"].split("(job ")[1][:1] for j in out["not_finished"])
    assert missing == ["0", "1", "3"]  # job 2 (seed=1 schedule=full) is the one that ran


def test_a_finished_sweep_exits_0_and_a_damaged_record_is_listed(tmp_path):
    sweep = tmp_path / "sweep"
    write_record(sweep, ["seed=0,1"])
    for seed in (0, 1):
        start_job(sweep / str(seed), [f"seed={seed}"], seed=seed)
        (sweep / str(seed) / "results.json").write_text(json.dumps(finished(seed)))
    proc = run_report(sweep)
    assert proc.returncode == 0, proc.stderr
    assert "None: every job finished." in (sweep / "table.md").read_text()
    (sweep / "multirun.yaml").write_text("hydra: [unclosed")
    proc = run_report(sweep)
    assert proc.returncode == 1 and "unreadable sweep record" in proc.stdout, proc.stderr


@pytest.mark.parametrize(
    "content",
    [
        "[1, 2, 3]",
        '"finished"',
        json.dumps({**finished(0), "status": ["finished"]}),
        json.dumps({**finished(0), "seed": {"a": 1}}),
        json.dumps({**finished(0), "accuracy": "high"}),
        json.dumps({**finished(0), "runtime_s": True}),
        json.dumps({**finished(0), "method": 3}),
        b"\xff\xfe not utf-8",
    ],
)
def test_results_json_of_the_wrong_shape_is_a_listed_failure(tmp_path, content):
    write_job = tmp_path / "0"
    write_job.mkdir()
    (write_job / "results.json").write_text(json.dumps(finished(1)))
    bad = tmp_path / "1"
    bad.mkdir()
    data = content if isinstance(content, bytes) else content.encode()
    (bad / "results.json").write_bytes(data)
    proc = run_report(tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    md = (tmp_path / "table.md").read_text()
    assert "| 1 | failed |" in md and "unreadable results.json" in md


def test_non_object_lines_in_metrics_jsonl_are_skipped(tmp_path):
    vi = dict(finished(0), method="vi", algorithm="advi", neg_elbo=5.0)
    for name in ("0", "1"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(vi))
    lines = ["[1, 2]", '"text"', "3", "null", json.dumps({"neg_elbo": 4.0, "time_s": "late"})]
    lines.append(json.dumps({"neg_elbo": 3.0, "time_s": 1.0}))
    (tmp_path / "0" / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "1" / "metrics.jsonl").write_bytes(b"\xff\xfe\n")
    proc = run_report(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "neg_elbo_vs_time.png").exists()


def test_an_unwritable_output_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "results.json").write_text(json.dumps(finished(0)))
    (tmp_path / "table.md").mkdir()  # a file cannot replace it (unwritable even for root)
    proc = run_report(tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("bnn-bench-report: error: cannot write into")
    out = tmp_path / "elsewhere"
    out.mkdir()
    assert run_report(tmp_path, "--out", out).returncode == 0
    assert (out / "table.md").exists()

    def refuse(directory):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(report, "check_writable_dir", refuse)
    with pytest.raises(report.ReportError, match="not writable .*--out DIR"):
        report.report(tmp_path)
    if os.geteuid() != 0:  # a read-only directory, where permissions apply
        shutil.rmtree(tmp_path / "table.md")
        tmp_path.chmod(0o555)
        try:
            proc = run_report(tmp_path)
            assert proc.returncode == 2 and "is not writable" in proc.stderr
        finally:
            tmp_path.chmod(0o755)


@pytest.mark.slow
def test_a_real_sweep_with_a_lost_and_an_unstarted_job(tmp_path):
    """Hydra's own multirun.yaml and job directories: job 1 loses its results, job 2's
    directory goes; the report names both, from the record, and exits 1."""
    sweep = tmp_path / "sweep"
    args = ["-m", "smc.path=minibatch", "schedule=ctr", "model=linear", "smc.num_particles=4"]
    args += ["smc.num_iterations=3", "seed=0,1,2"]
    args += ["logger=none", "progress=false", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run([*CLI, *args], cwd=REPO, env=cli_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert run_report(sweep).returncode == 0
    (sweep / "1" / "results.json").unlink()
    shutil.rmtree(sweep / "2")
    proc = run_report(sweep)
    assert proc.returncode == 1, proc.stderr
    md = (sweep / "table.md").read_text()
    assert "| 1 | no results | smc/ctr/hmc | 1 |" in md
    assert "| 2 | not started |" in md and "seed=2" in md
