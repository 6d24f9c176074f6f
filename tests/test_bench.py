"""The throughput benchmark runs and writes the documented JSON (speed targets are not tested)."""

import importlib.util
import json
import subprocess
import sys

import jax
import pytest
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
    assert data["skipped"] == []
    assert "naive_vmap" in proc.stdout  # the printed table


def test_a_configuration_out_of_memory_is_skipped_not_fatal():
    spec = importlib.util.spec_from_file_location("bench", REPO / "scripts" / "bench_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def out_of_memory(_):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 25589985072")

    def other_failure(_):
        raise jax.errors.JaxRuntimeError("INVALID_ARGUMENT: shapes")

    assert bench.rate_or_none(out_of_memory, (0,), 1, 100) is None
    with pytest.raises(jax.errors.JaxRuntimeError, match="INVALID_ARGUMENT"):
        bench.rate_or_none(other_failure, (0,), 1, 100)
    assert bench.rate_or_none(lambda a: jax.numpy.ones(3) * a, (2.0,), 1, 100) > 0


def test_paired_diff_pairs_runs_by_seed(tmp_path):
    spec = importlib.util.spec_from_file_location("paired", REPO / "scripts" / "paired_diff.py")
    paired = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(paired)
    for name, accs in (("a", (0.7, 0.8, 0.5)), ("b", (0.6, 0.6, 0.9))):
        for seed, acc in enumerate(accs):
            run = tmp_path / name / f"run{seed}"
            run.mkdir(parents=True)
            results = {"seed": seed, "accuracy": acc, "nll": 1.0 + seed, "status": "finished"}
            (run / "results.json").write_text(json.dumps(results))
    # seed 2 only in b: unpaired, left out
    (tmp_path / "a" / "run2" / "results.json").unlink()
    lines = paired.rows(
        paired.by_seed(tmp_path / "a"), paired.by_seed(tmp_path / "b"), ["test_error", "nll"]
    )
    assert lines[0].startswith("seeds: 0, 1 (n = 2)")
    err = next(line for line in lines if line.startswith("| test_error"))
    cells = [c.strip() for c in err.strip("|").split("|")]
    # d = (0.3 - 0.4, 0.2 - 0.4) = (-0.1, -0.2): mean -0.15, se = std / sqrt(2) = 0.05
    assert float(cells[3]) == pytest.approx(-0.15) and float(cells[4]) == pytest.approx(0.05)
    nll = next(line for line in lines if line.startswith("| nll"))
    assert float(nll.strip("|").split("|")[3]) == pytest.approx(0.0)


def test_label_table_pools_seeds_per_label_and_draws_their_reliability(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("label", REPO / "scripts" / "label_table.py")
    label = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(label)
    bins = {"bin_confidence": [0.3, 0.8], "bin_accuracy": [0.2, 0.9], "bin_count": [3, 5]}
    for name, accs in (("small", (0.6, 0.8)), ("large", (0.7,))):
        for seed, acc in enumerate(accs):
            run = tmp_path / name / str(seed)
            run.mkdir(parents=True)
            results = {
                "seed": seed,
                "status": "finished",
                "accuracy": acc,
                "nll": 1.0,
                "ece": 0.1,
                "example_grads": 1000 * (seed + 1),
                "runtime_s": 10.0,
                "reliability": bins,
            }
            (run / "results.json").write_text(json.dumps(results))
    assert label.main([str(tmp_path), "large", "small", "absent"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2].startswith("| large | 1 (0) | 0.700 |")
    # mean and sample std over the seeds; example-gradients averaged
    assert out[3].startswith("| small | 2 (0,1) | 0.700 ± 0.141 |") and "| 1.5e+03 |" in out[3]
    assert (tmp_path / "reliability.png").stat().st_size > 0
