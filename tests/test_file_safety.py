"""Files are written safely (issue 17, items 1 and 5): a temporary file in the target's directory,
renamed into place, with the umask's mode; no probe or write follows a link planted in a run
directory."""

import os
import subprocess

import numpy as np
import pytest
from conftest import CLI, REPO, cli_env

from bnn_bench import checkpoint
from bnn_bench.errors import DataError
from bnn_bench.tracking import (
    MetricsFile,
    atomic_write_bytes,
    check_writable_dir,
    write_json,
    write_posterior,
)


@pytest.fixture
def umask():
    """Set a umask for the test and restore the previous one."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield os.umask
    os.umask(previous)


def mode(path):
    return os.stat(path).st_mode & 0o777


@pytest.mark.parametrize("mask", [0o002, 0o022, 0o077])
def test_files_get_the_mode_the_umask_gives(tmp_path, umask, mask):
    umask(mask)
    write_json(tmp_path / "results.json", {"status": "finished"})
    write_posterior(tmp_path / "posterior.npz", np.zeros((2, 3)), np.zeros(2))
    checkpoint.save(tmp_path / "checkpoint.npz", {"a": np.zeros(3)}, {"iteration": 1})
    MetricsFile(tmp_path / "metrics.jsonl").close()
    for name in ("results.json", "posterior.npz", "checkpoint.npz", "metrics.jsonl"):
        assert mode(tmp_path / name) == 0o666 & ~mask, name
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint.npz",
        "metrics.jsonl",
        "posterior.npz",
        "results.json",
    ]  # no temporary file left behind


def test_a_link_planted_at_a_file_name_is_replaced_never_followed(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    run = tmp_path / "run"
    run.mkdir()
    for name in ("results.json", "checkpoint.npz", "posterior.npz"):
        (run / name).symlink_to(precious)
    write_json(run / "results.json", {"status": "finished"})
    write_posterior(run / "posterior.npz", np.zeros((2, 3)), np.zeros(2))
    checkpoint.save(run / "checkpoint.npz", {"a": np.zeros(3)}, {"iteration": 1})
    assert precious.read_text() == "keep me"
    assert not any((run / n).is_symlink() for n in ("results.json", "posterior.npz"))
    (run / "metrics.jsonl").symlink_to(precious)
    with pytest.raises(DataError, match="metrics.jsonl is a symbolic link"):
        MetricsFile(run / "metrics.jsonl")
    assert precious.read_text() == "keep me"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    target.write_text("old")

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        atomic_write_bytes(target, b"new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == [target.name]


def test_the_writability_probe_touches_nothing_already_there(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    for name in (".write_test", ".write-probe.tmp"):
        (tmp_path / name).symlink_to(precious)
    check_writable_dir(tmp_path)
    assert precious.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".write-probe.tmp",
        ".write_test",
        "precious.txt",
    ]
    with pytest.raises(OSError):
        check_writable_dir(tmp_path / "missing")


@pytest.mark.slow
def test_a_run_writes_its_files_with_the_umask_and_follows_no_planted_link(tmp_path):
    """The issue's cases through the CLI: the old probe name planted as a link to a file
    outside the run, and umask 002: every file the run writes is 0664, the link's target kept."""
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".write_test").symlink_to(precious)
    args = ["model=linear", "smc.num_particles=4", "smc.num_iterations=4", "checkpoint_every=2"]
    args += ["save_posterior=true", "logger=none", "progress=false", f"hydra.run.dir={run}"]
    proc = subprocess.run(
        [*CLI, *args],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        preexec_fn=lambda: os.umask(0o002),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert precious.read_text() == "keep me"
    for name in ("results.json", "checkpoint.npz", "posterior.npz", "metrics.jsonl"):
        assert mode(run / name) == 0o664, name
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
