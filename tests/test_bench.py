"""The throughput benchmark runs and writes the documented JSON (speed targets are not tested)."""

import json
import subprocess
import sys

from conftest import REPO


def test_bench_throughput_writes_its_records(tmp_path):
    out = tmp_path / "bench.json"
    args = ["--models", "lenet5", "--particles", "1", "2", "--batches", "32", "--repeats", "1"]
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_throughput.py"), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["matmul_gflops"] > 0
    paths = {(r["num_particles"], r["path"]) for r in data["records"]}
    assert paths == {(1, "single"), (2, "single"), (2, "naive_vmap"), (2, "batched")}
    for r in data["records"]:
        assert set(r) == {"model", "num_particles", "batch_size", "path", "rate", "dtype"}
        assert r["model"] == "lenet5" and r["batch_size"] == 32 and r["rate"] > 0
    assert "naive_vmap" in proc.stdout  # the printed table
