"""Issue 17, items 1-3: a finished run is never modified without overwrite=true, a resume never
truncates before its checkpoint is proven whole, Ctrl-C is a clean stop, and the hardware keys
take effect before JAX starts (a missing platform is one line, exit 2)."""

import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
from conftest import CLI, REPO, cli_env

from bnn_bench import checkpoint, lifecycle, rundir
from bnn_bench.errors import ConfigError, DataError, RunInterrupted

TINY = [
    "smc.path=minibatch",
    "model=linear",
    "smc.num_particles=4",
    "logger=none",
    "progress=false",
]


def digest(directory):
    """Every file of a run directory (.hydra/ included) and its content hash."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def one_error_line(proc, code):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("bnn-bench: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


# --- item 1: the run directory ---------------------------------------------------------------


def real_checkpoints(path):
    """The run's Checkpoints for a checkpoint written with an empty config."""
    return checkpoint.Checkpoints(path, {}, 2)


def write_run(directory, status="finished", with_checkpoint=True):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.json").write_text(json.dumps({"status": status}))
    (directory / "metrics.jsonl").write_text('{"iter": 1}\n{"iter": 2}\n')
    if with_checkpoint:
        state = {"a": np.arange(6.0), "b": np.ones((2, 3), np.float32)}
        checkpoint.save(directory / "checkpoint.npz", state, {"iteration": 2})
    return real_checkpoints(directory / "checkpoint.npz")


def rewrite_zip(path, keep=lambda name: True, change=lambda name, data: data):
    members = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if keep(info.filename):
                members[info.filename] = change(info.filename, zf.read(info))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    path.write_bytes(buf.getvalue())


def flip_a_byte(path):
    """One flipped byte inside an array's data: the zip's CRC no longer matches."""
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("leaf_0.npy")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start + info.compress_size - 3] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("resume", [False, True])
@pytest.mark.parametrize("with_checkpoint", [False, True])
def test_a_finished_run_is_refused_unless_overwrite(tmp_path, resume, with_checkpoint):
    ckpts = write_run(tmp_path, with_checkpoint=with_checkpoint)
    before = digest(tmp_path)
    with pytest.raises(ConfigError, match="already holds a run|holds a finished run"):
        rundir.resume_point(tmp_path, ckpts, resume=resume)
    assert digest(tmp_path) == before
    rundir.resume_point(tmp_path, ckpts, resume=resume, overwrite=True)  # asked for by name


def test_an_unreadable_results_json_counts_as_finished(tmp_path):
    ckpts = write_run(tmp_path, with_checkpoint=False)
    (tmp_path / "results.json").write_text('{"status": "fini')
    with pytest.raises(ConfigError, match="results.json that cannot be read"):
        rundir.resume_point(tmp_path, ckpts, resume=True)


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (flip_a_byte, "fails its checksum|not a readable"),
        (lambda p: rewrite_zip(p, keep=lambda n: n != "leaf_1.npy"), "1 of its 2 arrays"),
        (lambda p: p.write_bytes(p.read_bytes()[:-40]), "not a readable"),
        (lambda p: rewrite_zip(p, change=lambda n, d: d[:20] if n == "leaf_0.npy" else d), "read"),
    ],
)
def test_a_damaged_checkpoint_is_refused_before_anything_is_truncated(tmp_path, damage, match):
    ckpts = write_run(tmp_path, status="interrupted")
    damage(tmp_path / "checkpoint.npz")
    before = digest(tmp_path)
    with pytest.raises(DataError, match=match):
        rundir.resume_point(tmp_path, ckpts, resume=True)
    assert digest(tmp_path) == before


def test_an_unfinished_run_resumes_or_starts_afresh(tmp_path):
    ckpts = write_run(tmp_path / "a", status="interrupted")
    assert rundir.resume_point(tmp_path / "a", ckpts, resume=True)["iteration"] == 2
    ckpts = write_run(tmp_path / "b", status="failed", with_checkpoint=False)
    assert rundir.resume_point(tmp_path / "b", ckpts, resume=True) is None  # afresh, said so
    with pytest.raises(ConfigError, match="already holds a run \\(results.json\\)"):
        rundir.resume_point(tmp_path / "b", ckpts, resume=False)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "metrics.jsonl").write_text('{"iter": 1}\n')  # killed before a checkpoint
    with pytest.raises(ConfigError, match="metrics.jsonl"):
        rundir.resume_point(tmp_path / "c", real_checkpoints(tmp_path / "c" / "x"), resume=False)


@pytest.mark.slow
def test_a_finished_run_is_never_modified_by_a_later_command(tmp_path, run_cli):
    """The issue's commands: a finished run without a checkpoint (7 < checkpoint_every), then
    one with a checkpoint, flipped or missing an array; every later command is refused in one
    line, exit 2, and leaves every file of the directory (.hydra/ too) as it was."""
    out = tmp_path / "run"
    args = [*TINY, "seed=1", "smc.num_iterations=7", f"hydra.run.dir={out}"]
    assert run_cli(*args).returncode == 0
    before = digest(out)
    for extra in (["resume=true"], [], ["resume=true", "seed=2"]):
        line = one_error_line(run_cli(*args, *extra), 2)
        assert str(out) in line
        assert digest(out) == before, extra
    assert run_cli(*args, "overwrite=true").returncode == 0  # by name, it may
    assert json.loads((out / "results.json").read_text())["status"] == "finished"

    out2 = tmp_path / "run2"
    args = [*TINY, "smc.num_iterations=4", "checkpoint_every=2", f"hydra.run.dir={out2}"]
    assert run_cli(*args).returncode == 0
    results = json.loads((out2 / "results.json").read_text())
    (out2 / "results.json").write_text(json.dumps({**results, "status": "failed"}))  # unfinished
    good = (out2 / "checkpoint.npz").read_bytes()
    for damage in (flip_a_byte, lambda p: rewrite_zip(p, keep=lambda n: n != "leaf_0.npy")):
        (out2 / "checkpoint.npz").write_bytes(good)
        damage(out2 / "checkpoint.npz")
        before = digest(out2)
        line = one_error_line(run_cli(*args, "resume=true"), 2)
        assert "checkpoint.npz" in line
        assert digest(out2) == before  # metrics.jsonl not truncated, results.json not replaced


# --- item 2: SIGINT and SIGTERM ----------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_loop_sets_stop_and_after_it_raises(tmp_path, signum):
    with lifecycle.stop_on_signals(tmp_path) as stop:
        os.kill(os.getpid(), signum)
        time.sleep(0.01)
        assert stop.is_set()  # the loop sees it at its next check; nothing raised here
    with lifecycle.stop_on_signals(tmp_path):
        lifecycle.loop_ended(7, tmp_path)
        with pytest.raises(RunInterrupted, match="during the final evaluation") as err:
            os.kill(os.getpid(), signum)
            for _ in range(100):  # the handler runs between bytecodes
                time.sleep(0.001)
    assert err.value.signum == signum and lifecycle.exit_code(signum) == 128 + signum
    assert signal.Signals(signum).name in str(err.value)
    with lifecycle.stop_on_signals(tmp_path):
        lifecycle.loop_ended(7, tmp_path)
        lifecycle.results_ready()
        os.kill(os.getpid(), signum)  # too late to matter: results are written
        time.sleep(0.01)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_a_signal_whose_exception_was_swallowed_still_interrupts(tmp_path):
    """JAX's compilation cache catches every exception while it reads an entry: a SIGTERM that
    lands there during the final evaluation must still stop the job when the results are in."""
    with lifecycle.stop_on_signals(tmp_path):
        lifecycle.loop_ended(3, tmp_path)
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100):
                time.sleep(0.001)
        except Exception:  # noqa: BLE001 - what the library did
            pass
        with pytest.raises(RunInterrupted, match="during the final evaluation"):
            lifecycle.results_ready()


def test_a_signal_just_before_the_loop_ended_still_interrupts(tmp_path):
    with lifecycle.stop_on_signals(tmp_path) as stop:
        stop.set()
        with pytest.raises(RunInterrupted, match="before the final evaluation"):
            lifecycle.loop_ended(5, tmp_path)


def _wait_for(path, proc, timeout=240):
    t0 = time.time()
    while not (path.exists() and path.stat().st_size > 0):
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() - t0 < timeout
        time.sleep(0.02)


@pytest.mark.slow
def test_ctrl_c_checkpoints_and_exits_130_in_one_line(tmp_path, run_cli):
    out = tmp_path / "run"
    args = [
        "smc.path=minibatch",
        "schedule=full",
        "smc.num_iterations=4000",
        "checkpoint_every=0",
        "log_every=50",
    ]
    args = [*TINY, *args, "smc.num_particles=8", f"hydra.run.dir={out}"]
    proc = subprocess.Popen(
        [*CLI, *args], cwd=REPO, env=cli_env(), stderr=subprocess.PIPE, text=True
    )
    _wait_for(out / "metrics.jsonl", proc)
    proc.send_signal(signal.SIGINT)
    stderr = proc.communicate(timeout=300)[1]
    lines = stderr.strip().splitlines()
    assert proc.returncode == 130, stderr
    assert len(lines) == 1 and "interrupted by SIGINT" in lines[0], stderr
    assert "KeyboardInterrupt" not in stderr and "Traceback" not in stderr
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "interrupted" and (out / "checkpoint.npz").exists()
    resumed = run_cli(*args, "resume=true")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "results.json").read_text())["iterations"] == 4000


# --- item 3: the backend -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("platform", ["gpu", "tpu"])
def test_a_platform_that_is_not_there_is_one_line_exit_2(tmp_path, run_cli, platform):
    import jax

    if platform in {d.platform for d in jax.devices()} or (
        platform == "gpu" and any(d.platform == "gpu" for d in jax.devices())
    ):
        pytest.skip(f"this machine has a {platform}")
    out = tmp_path / "run"
    line = one_error_line(
        run_cli(
            *TINY, "smc.num_iterations=2", f"hardware.platform={platform}", f"hydra.run.dir={out}"
        ),
        2,
    )
    assert f"hardware.platform={platform} is not available" in line
    assert not out.exists()  # before Hydra made the directory


def test_the_backend_starts_after_the_settings_not_before():
    """In a fresh process, preflight's set-up comes before blackjax's import starts JAX."""
    code = (
        "from bnn_bench import backend\n"
        "from omegaconf import OmegaConf\n"
        "h = OmegaConf.create({'platform': 'cpu', 'dtype': 'float64', 'compilation_cache': None,"
        " 'distributed': False})\n"
        "assert not backend.backend_started()\n"
        "backend.configure_backend(h)\n"
        "import blackjax, jax, jax.numpy as jnp\n"
        "assert jnp.ones(2).dtype == jnp.float64, jnp.ones(2).dtype\n"
        "h2 = OmegaConf.merge(h, {'dtype': 'float32'})\n"
        "try:\n"
        "    backend.configure_backend(h2)\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ConfigError hardware.x64=False is not allowed here")


UNROLLED_GRADS = (
    "import jax, jax.numpy as jnp\n"
    "def loss(w, x):\n"
    "    h = jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME',"
    " dimension_numbers=('NHWC', 'HWIO', 'NHWC'))\n"
    "    return jnp.sum(jnp.tanh(h) ** 2)\n"
    "def grads(ws, x):\n"
    "    return jnp.stack([jax.grad(loss)(ws[j], x) for j in range(8)])\n"
    "ws, x = jnp.ones((8, 3, 3, 1, 32)), jnp.ones((500, 28, 28, 1))\n"
    "c = jax.jit(grads).lower(ws, x).compile()\n"
    "print(backend.cpu_scheduler_in_effect(), c.memory_analysis().temp_size_in_bytes)\n"
)


def test_the_memory_scheduler_reaches_xla_and_bounds_unrolled_particles():
    """hardware.cpu_scheduler is set before the backend starts, so XLA compiles with it: eight
    unrolled per-particle gradients of a convolution need a fraction of the scratch memory that
    the concurrency scheduler gives them (it runs them side by side, each with its activations).
    A scheduler the user's XLA_FLAGS chose is kept."""

    def compiled(scheduler, env=None):
        code = (
            "from bnn_bench import backend\n"
            "from omegaconf import OmegaConf\n"
            "h = OmegaConf.create({'platform': 'cpu', 'dtype': 'float32',"
            " 'compilation_cache': None, 'distributed': False})\n"
            f"backend.configure_backend(h, {scheduler!r})\n" + UNROLLED_GRADS
        )
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "XLA_FLAGS": "", **(env or {})},
        )
        assert proc.returncode == 0, proc.stderr
        name, temp = proc.stdout.split()
        return name, int(temp)

    memory, concurrency = compiled("memory"), compiled("concurrency")
    assert (memory[0], concurrency[0]) == ("memory", "concurrency")
    assert memory[1] < 0.5 * concurrency[1], (memory, concurrency)
    flag = {"XLA_FLAGS": "--xla_cpu_enable_concurrency_optimized_scheduler=true"}
    assert compiled("memory", flag) == ("XLA_FLAGS", concurrency[1])


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_jax_distributed_in_a_two_process_local_run(tmp_path):
    port = _free_port()
    procs = []
    for pid in (0, 1):
        args = [*TINY, "smc.num_iterations=3", "hardware.distributed=true"]
        args += [f"hardware.coordinator_address=localhost:{port}", "hardware.num_processes=2"]
        args += [f"hardware.process_id={pid}", f"hydra.run.dir={tmp_path / str(pid)}"]
        procs.append(
            subprocess.Popen(
                [*CLI, *args], cwd=REPO, env=cli_env(), stderr=subprocess.PIPE, text=True
            )
        )
    for proc in procs:
        stderr = proc.communicate(timeout=300)[1]
        assert proc.returncode == 0, stderr
    for pid in (0, 1):
        results = json.loads((tmp_path / str(pid) / "results.json").read_text())
        assert results["status"] == "finished"
        assert (results["process_index"], results["process_count"]) == (pid, 2)


def test_importing_the_entry_layer_does_not_start_jax():
    """What the CLI imports before preflight applies hardware.* must not start the backend
    (blackjax starts it at import, so inference/ imports blackjax where it is used)."""
    code = (
        "import bnn_bench.cli, bnn_bench.run, bnn_bench.config, bnn_bench.methods\n"
        "import bnn_bench.inference.smc.sampler, bnn_bench.inference.smc.proposals\n"
        "from bnn_bench import backend\n"
        "print(backend.backend_started())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr


@pytest.mark.slow
def test_sigterm_during_the_final_evaluation_is_not_ignored(tmp_path):
    """A large test set makes the final evaluation last seconds: SIGTERM once the loop's last
    record is written interrupts it (before, the flag was set and nobody looked: exit 0)."""
    out = tmp_path / "run"
    args = ["dataset=synthetic_regression", "likelihood=gaussian", "dataset.n_test=3000000"]
    args += ["smc.num_iterations=3", "log_every=1", "schedule=full", "smc.num_particles=16"]
    args += [*TINY, "hardware.eval_chunk=1000", f"hydra.run.dir={out}"]
    proc = subprocess.Popen(
        [*CLI, *args], cwd=REPO, env=cli_env(), stderr=subprocess.PIPE, text=True
    )
    metrics = out / "metrics.jsonl"
    t0 = time.time()
    while not (metrics.exists() and '"iter": 3' in metrics.read_text()):
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() - t0 < 300
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=300)[1]
    lines = stderr.strip().splitlines()
    assert proc.returncode == 143, stderr
    assert len(lines) == 1 and "interrupted by SIGTERM" in lines[0], stderr
    assert "final evaluation" in lines[0]
    assert json.loads((out / "results.json").read_text())["status"] == "interrupted"
