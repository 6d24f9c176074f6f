"""The installed `bnn-bench` finds its configs from a wheel in a fresh venv outside the repo."""

import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)


def test_wheel_in_a_fresh_venv_finds_its_configs(tmp_path):
    wheels = tmp_path / "wheels"
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(REPO)]
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("bnn_bench-*.whl")

    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", "--without-pip", str(venv)]).returncode == 0
    py = venv / "bin" / "python"
    purelib = Path(
        _run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
        ).stdout.strip()
    )
    # The dependencies come from this environment (no network here); bnn_bench from the wheel only.
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (purelib / "deps.pth").write_text("\n".join(deps) + "\n")
    installed = _run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
         "-q", str(wheel)]
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(WANDB_MODE="disabled", WANDB_SILENT="true")
    where = _run([str(py), "-c", "import bnn_bench; print(bnn_bench.__file__)"], cwd=work, env=env)
    assert str(purelib) in where.stdout, where.stdout + where.stderr

    script = venv / "bin" / "bnn-bench"
    assert script.is_file()
    out = work / "run"
    result = _run(
        [str(script), "logger=none", "smc.num_iterations=3", "smc.num_particles=4",
         "schedule.batch_size=50", f"hydra.run.dir={out}"],
        cwd=work,
        env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "results.json").is_file()
