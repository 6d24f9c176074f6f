"""bnn-bench-report for VI sweeps: --per-seed rows with neg_elbo's parts, collapsed seeds marked."""

import json

from bnn_bench.report import main, report


def write_job(root, name, seed, accuracy, **extra):
    d = root / name / str(seed)
    d.mkdir(parents=True)
    results = dict(
        method="vi",
        algorithm=name,
        seed=seed,
        status="finished",
        accuracy=accuracy,
        nll=0.5,
        ece=0.1,
        runtime_s=1.0,
        example_grads=400,
        neg_elbo=1500.0,
        expected_log_lik=-500.0,
        kl_prior=1000.0,
        num_classes=10,
        **extra,
    )
    (d / "results.json").write_text(json.dumps(results))


def test_per_seed_rows_mark_collapsed_seeds(tmp_path, capsys):
    for seed, acc in enumerate([0.96, 0.115, 0.95]):  # seed 1: within 2 points of chance (0.1)
        write_job(tmp_path, "gsm", seed, acc)
    write_job(tmp_path, "advi", 0, 0.13)  # 3 points above chance: not collapsed
    main([str(tmp_path), "--per-seed"])
    table = (tmp_path / "table.md").read_text()
    assert "| 3 (1 collapsed) |" in table  # the summary row says so instead of hiding it
    lines = [ln for ln in table.splitlines() if ln.startswith("| vi/gsm |")]
    assert [ln.split(" | ")[2] for ln in lines] == ["", "yes", ""]
    assert "KL(q || prior)" in table and "| 1000 |" in table and "| -500 |" in table
    advi = next(ln for ln in table.splitlines() if ln.startswith("| vi/advi |"))
    assert advi.split(" | ")[2] == ""
    assert "Per seed" in capsys.readouterr().out


def test_without_per_seed_there_are_no_seed_rows(tmp_path):
    write_job(tmp_path, "gsm", 0, 0.9)
    report(tmp_path)
    assert "Per seed" not in (tmp_path / "table.md").read_text()
