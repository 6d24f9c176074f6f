"""Hardware set-up: pinned cores, particles sharded across devices, the compilation cache."""

import json
import os

import pytest
from conftest import cli_env

from bnn_bench.hardware import pin_cores

TINY = [
    "smc.path=minibatch",
    "model=linear",
    "smc.num_particles=8",
    "smc.num_iterations=12",
    "schedule.batch_size=200",
    "logger=none",
    "progress=false",
]


def results(directory):
    return json.loads((directory / "results.json").read_text())


def test_pin_cores_picks_a_block_per_job():
    before = os.sched_getaffinity(0)
    cores = sorted(before)
    try:
        assert pin_cores(1, job_num=0) == cores[:1] and os.sched_getaffinity(0) == set(cores[:1])
        os.sched_setaffinity(0, before)
        assert pin_cores(1, job_num=len(cores) + 1) == [cores[1 % len(cores)]]
        os.sched_setaffinity(0, before)
        assert pin_cores(len(cores) + 5, job_num=3) == cores  # more than there are: all
    finally:
        os.sched_setaffinity(0, before)


@pytest.mark.slow
@pytest.mark.parametrize(
    "path",
    [
        [],  # the fixed-schedule loop
        ["schedule=sda", "proposal.adapt_step_size=true"],  # the scheduled (adaptive) loop
        # the exact sampler (resampling and the ESS bisection read the whole cloud)
        ["smc.path=nested", "schedule=automated", "smc.final_sweeps=2", "proposal.num_steps=2"],
    ],
    ids=["fixed", "scheduled", "exact"],
)
def test_two_host_devices_give_the_results_of_one(tmp_path, run_cli, path):
    # XLA's forced host device count splits the CPU into 2 devices; J=8 particles become 2 x 4.
    env = cli_env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    got = {}
    for devices in (1, 2):
        out = tmp_path / f"d{devices}"
        keys = {p.split("=")[0] for p in path}
        base = [a for a in TINY if a.split("=")[0] not in keys]
        args = (*base, *path, f"hardware.devices={devices}", f"hydra.run.dir={out}")
        proc = run_cli(*args, env=env)
        assert proc.returncode == 0, proc.stderr
        got[devices] = results(out)
    assert got[2]["devices"] == 2
    for key in ("accuracy", "nll", "ece", "ess_final"):
        assert got[2][key] == pytest.approx(got[1][key], rel=1e-4, abs=1e-5), key
    assert got[2]["n_resample"] == got[1]["n_resample"]

    too_many = run_cli(*TINY, "hardware.devices=3", f"hydra.run.dir={tmp_path / 'x'}", env=env)
    assert too_many.returncode == 2
    assert "hardware.devices=3 is not allowed; this machine has 2 cpu device(s)" in too_many.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "path",
    [
        ["schedule=sda"],  # per-example terms for sda's noise estimate
        ["smc.path=nested", "schedule=automated", "smc.final_sweeps=2", "proposal.num_steps=2"],
    ],
    ids=["minibatch", "exact"],
)
def test_data_chunks_give_the_results_of_the_whole_batch(tmp_path, run_cli, path):
    # Every batch (subset), the full one included, split into gradient (and, on the exact path,
    # reweighting) chunks of at most 150 rows.
    got = {}
    keys = {p.split("=")[0] for p in path}
    base = [a for a in TINY if a.split("=")[0] not in keys]
    for chunk in ("null", "150"):
        out = tmp_path / chunk
        args = (*base, *path, f"hardware.data_chunk={chunk}", f"hydra.run.dir={out}")
        proc = run_cli(*args)
        assert proc.returncode == 0, proc.stderr
        got[chunk] = results(out)
    for key in ("accuracy", "nll", "ece", "ess_final", "iterations"):
        assert got["150"][key] == pytest.approx(got["null"][key], rel=1e-3, abs=1e-4), key


@pytest.mark.slow
def test_two_job_joblib_sweep_pins_each_job_to_its_own_core(tmp_path, run_cli):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "hardware.cores_per_job=1",
        *TINY,
        "seed=0,1",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr
    jobs = [results(sweep / str(i)) for i in (0, 1)]
    assert [j["seed"] for j in jobs] == [0, 1]
    assert all(len(j["cores"]) == 1 for j in jobs)
    if len(os.sched_getaffinity(0)) >= 2:
        assert jobs[0]["cores"] != jobs[1]["cores"]


@pytest.mark.slow
def test_a_second_run_reuses_the_compilation_cache(tmp_path, run_cli):
    cache = tmp_path / "cache"
    first = run_cli(*TINY, f"hardware.compilation_cache={cache}", f"hydra.run.dir={tmp_path / 'a'}")
    assert first.returncode == 0, first.stderr
    entries = set(os.listdir(cache))
    assert any("step" in name for name in entries)  # the SMC step was compiled and stored
    second = run_cli(
        *TINY, f"hardware.compilation_cache={cache}", f"hydra.run.dir={tmp_path / 'b'}"
    )
    assert second.returncode == 0, second.stderr
    # Nothing the first run stored is compiled again. A tiny jit (threefry_fold_in, floor, ...)
    # may be stored by the second run only: whether it took the 0.2 s minimum to be cached
    # depends on the machine's load (since the cache is set before JAX starts, every jit is
    # a candidate). The SMC step is never among them.
    new = set(os.listdir(cache)) - entries
    assert entries <= set(os.listdir(cache)) and not [n for n in new if "step" in n], new
    assert results(tmp_path / "b")["nll"] == results(tmp_path / "a")["nll"]


@pytest.mark.slow
def test_ensemble_members_split_across_two_devices_give_the_results_of_one(tmp_path, run_cli):
    env = cli_env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    ens = ["method=ensemble", "ensemble.num_members=4", "ensemble.num_epochs=3", "logger=none"]
    got = {}
    for devices in (1, 2):
        out = tmp_path / f"d{devices}"
        proc = run_cli(*ens, f"hardware.devices={devices}", f"hydra.run.dir={out}", env=env)
        assert proc.returncode == 0, proc.stderr
        got[devices] = results(out)
    assert (got[1]["devices"], got[2]["devices"]) == (1, 2)
    for key in ("accuracy", "nll", "ece"):
        assert got[2][key] == pytest.approx(got[1][key], rel=1e-4, abs=1e-5), key
    odd = run_cli(*ens, "ensemble.num_members=3", "hardware.devices=2", env=env)
    assert odd.returncode == 2 and "ensemble.num_members=3" in odd.stderr
