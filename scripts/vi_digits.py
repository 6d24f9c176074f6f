"""VI on a configured data set against a reference predictive: accuracy, NLL, ECE, total variation.

Usage (from the repo root):
    python scripts/vi_digits.py --seeds 0 1 2 3 4 --reference digits_mlp \
        -- vi.algorithm=score_prox -- vi.algorithm=advi vi.learning_rate=0.01

Every group after a `--` is one set of Hydra overrides of the composed config (several groups
run one after another; method=vi is implied), so each run is the CLI's `bnn-bench method=vi ...`
with the same keys, split and seeds; the script keeps the data and the compiled step in one
process, and adds the total variation TV = mean_i 0.5 sum_k |p_ik - r_ik| and the argmax
agreement with the reference probabilities `probs` (n_test x K). One JSON line per seed on
stdout, then a summary line per group (means; *_se: standard errors over seeds).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bnn_bench import build, metrics  # noqa: E402
from bnn_bench import reference as ref_lib  # noqa: E402
from bnn_bench.config import register_configs, validate  # noqa: E402
from bnn_bench.evaluate import particle_outputs  # noqa: E402
from bnn_bench.inference.vi import ALGORITHMS, family, loop  # noqa: E402
from bnn_bench.posterior import make_log_target  # noqa: E402


def run_one(cfg, data, posterior, reference: np.ndarray | None) -> dict:
    vi = cfg.vi
    n = data.n_train
    config = build.vi_config(cfg, n)
    algorithm = ALGORITHMS[vi.algorithm]
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    key_init, key_run, key_pred = jax.random.split(jax.random.key(cfg.seed), 3)
    q0 = family.initial_gaussian(key_init, posterior.prior_std, vi.init_std, config.rank)
    records: list[dict] = []
    t0 = time.perf_counter()
    state, status = loop.run(
        key_run,
        algorithm,
        algorithm.init(q0, config),
        x,
        y,
        vi.num_iterations,
        log_target=make_log_target(posterior, n),
        config=config,
        callback=lambda record, _: records.append(record),
        sync_every=cfg.log_every,
    )
    runtime = time.perf_counter() - t0
    samples = family.sample(key_pred, state.q, vi.num_predictive_samples)
    per_sample = particle_outputs(posterior, samples, data.x_test)
    log_probs = metrics.predictive_log_probs(per_sample, jnp.zeros(len(samples)))
    result = metrics.classification_metrics(log_probs, jnp.asarray(data.y_test))
    tail = records[-max(1, len(records) // 10) :]
    result.update(
        seed=cfg.seed,
        status=status,
        runtime_s=runtime,
        **{
            k: float(np.mean([r[k] for r in tail]))
            for k in ("neg_elbo", "expected_log_lik", "kl_prior")
        },
    )
    chance = 1.0 / data.num_classes
    result["collapsed"] = bool(result["accuracy"] <= chance + 0.02)
    if reference is not None:
        p = np.exp(np.asarray(log_probs, np.float64))
        result["tv"] = float(np.mean(0.5 * np.abs(p - reference).sum(axis=1)))
        result["agreement"] = float(np.mean(p.argmax(1) == reference.argmax(1)))
    return result


def main(argv: list[str]) -> None:
    groups, current = [], None
    options = []
    for a in argv:
        if a == "--":
            current = []
            groups.append(current)
        elif current is None:
            options.append(a)
        else:
            current.append(a)
    argv, groups = options, groups or [[]]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--reference", default=None, help="a path or a shipped name")
    args = parser.parse_args(argv)
    reference = np.load(ref_lib.resolve(args.reference))["probs"] if args.reference else None
    register_configs()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        for overrides in groups:
            run_group(overrides, args.seeds, reference)


def run_group(overrides, seeds, reference) -> None:
    """All seeds of one override set, then its summary line."""
    rows = []
    for seed in seeds:
        cfg = compose("config", overrides=["method=vi", "logger=none", *overrides, f"seed={seed}"])
        validate(cfg)
        data = build.load_data(cfg)
        posterior = build.posterior(cfg, data)
        row = run_one(cfg, data, posterior, reference)
        rows.append(row)
        print(json.dumps({"overrides": overrides, **row}), flush=True)
    keys = ["accuracy", "nll", "ece", "neg_elbo", "expected_log_lik", "kl_prior", "runtime_s"]
    keys += ["tv", "agreement"] if reference is not None else []
    summary = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    summary.update(
        {
            f"{k}_se": float(np.std([r[k] for r in rows], ddof=1) / np.sqrt(len(rows)))
            if len(rows) > 1
            else 0.0
            for k in ("nll", "tv")
            if k in summary
        }
    )
    summary["collapsed"] = sum(r["collapsed"] for r in rows)
    print(json.dumps({"summary": overrides, "seeds": seeds, **summary}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
