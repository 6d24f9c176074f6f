"""Fidelity of the exact SMC sampler on the default digits MLP against a NUTS reference.

Builds the default target (dataset, model, prior and split from the composed default config, so
the test set is the reference's), runs inference/smc/exact.py with the settings given on the
command line, and prints one JSON line: accuracy, NLL, ECE, total variation and agreement with
the reference's predictive, example-gradients, iterations and seconds.

    python scripts/exact_smc_digits.py --path nested --schedule ctr --particles 64 \\
        --mcmc-steps 5 --num-steps 10 --step-size 0.05

TV = mean over test points of 0.5 * sum_k |p - q|; agreement = mean(argmax p == argmax q).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from hydra import compose, initialize_config_dir

from bnn_bench import metrics, reference
from bnn_bench.build import load_data
from bnn_bench.build import posterior as build_posterior
from bnn_bench.config import register_configs
from bnn_bench.evaluate import particle_outputs
from bnn_bench.inference.smc import exact, moves, schedules

REFERENCE = "digits_mlp"  # a path, or the name of a shipped reference (bnn_bench.reference)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--path", default="nested", choices=exact.PATHS)
    p.add_argument("--schedule", default="ctr")
    p.add_argument("--particles", type=int, default=64)
    p.add_argument("--iterations", type=int, default=20, help="K of a fixed schedule; the cap")
    p.add_argument("--batch-size", type=int, default=500, help="C")
    p.add_argument("--refine-at", type=float, default=0.9)
    p.add_argument("--growth", type=float, default=2.0)
    p.add_argument("--mcmc-steps", type=int, default=5)
    p.add_argument("--num-steps", type=int, default=10, help="S leapfrog steps")
    p.add_argument("--step-size", type=float, default=0.05)
    p.add_argument("--target-accept", type=float, default=0.65)
    p.add_argument("--mass", default="identity")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference", default=REFERENCE)
    p.add_argument("--save", default=None, help="write the predictive probabilities here (npz)")
    p.add_argument(
        "--final-sweeps",
        type=int,
        default=0,
        help="after the path ends, this many more sweeps of the moves on the posterior; the "
        "predictive is then averaged over the clouds after each (TV printed per sweep count)",
    )
    a = p.parse_args()

    register_configs()
    import os

    with initialize_config_dir(config_dir=os.path.abspath("conf"), version_base=None):
        cfg = compose("config", overrides=["logger=none"])
    data = load_data(cfg)
    posterior = build_posterior(cfg, data)
    n = len(data.y_train)
    perm = np.random.default_rng(a.seed).permutation(n)
    x = jnp.asarray(data.x_train[perm])
    y = jnp.asarray(data.y_train[perm])

    max_iter = 10_000
    if a.path == "tempered":
        plan = exact.PathPlan("tempered", n, max_iter)
    elif a.schedule == "automated":
        plan = exact.PathPlan(
            "nested", n, max_iter, automated=True, growth=a.growth, first_size=a.batch_size
        )
    else:
        sizes = schedules.batch_sizes(
            a.schedule,
            num_data=n,
            num_iterations=a.iterations,
            batch_size=a.batch_size,
            refine_at=a.refine_at,
        )
        plan = exact.PathPlan("nested", n, max_iter, sizes=tuple(int(s) for s in sizes))
    move = moves.MoveSettings(a.num_steps, a.mcmc_steps, True, a.target_accept, 1.0, a.mass)
    config = exact.ExactConfig(move, a.threshold, "systematic")
    key_init, key_run = jax.random.split(jax.random.key(a.seed))
    state = exact.init(key_init, posterior.prior_std, a.particles, a.step_size)
    records = []
    t0 = time.perf_counter()
    state, status, counts = exact.run(
        key_run,
        state,
        x,
        y,
        log_prior=posterior.log_prior,
        log_likelihood=posterior.log_likelihood,
        plan=plan,
        config=config,
        bucket_sizes=exact.buckets(n, a.batch_size),
        num_particles=a.particles,
        callback=lambda r, _: records.append(r),
    )
    seconds = time.perf_counter() - t0

    logp = particle_outputs(posterior, state.particles, data.x_test)
    log_probs = metrics.predictive_log_probs(logp, state.log_weights)
    out = metrics.classification_metrics(log_probs, jnp.asarray(data.y_test))
    probs = np.exp(np.asarray(log_probs))
    out.update(
        status=status,
        final_target=exact.final_target(state, n),
        log_evidence=float(state.log_evidence),
        seconds=round(seconds, 1),
        accept_last=records[-1]["accept_mean"],
        step_size_first=records[0]["step_size"],
        step_size_last=records[-1]["step_size"],
        **counts,
    )
    # example-gradients spent at each subset size (bridge steps included), in rows of the target
    spent: dict[int, int] = {}
    before = 0
    for r in records:
        spent[r["batch_size"]] = spent.get(r["batch_size"], 0) + r["example_grads"] - before
        before = r["example_grads"]
    out["example_grads_by_rows"] = spent
    out["iterations_by_rows"] = {
        m: sum(r["batch_size"] == m for r in records) for m in sorted(spent)
    }
    if a.reference:
        ref_file = np.load(reference.resolve(a.reference))
        ref = ref_file["probs"]
        out["tv"] = float(np.mean(0.5 * np.abs(probs - ref).sum(1)))
        out["agreement"] = float(np.mean(probs.argmax(1) == ref.argmax(1)))
        out["ref_example_grads"] = int(json.loads(str(ref_file["diagnostics"]))["example_grads"])
    if a.final_sweeps and a.reference:
        # exact.final_sweep, as smc.final_sweeps runs it; TV of the predictive averaged over the
        # clouds so far, and of the last cloud alone, after every sweep
        total, curve, st = probs * 1.0, {}, state
        t1 = time.perf_counter()
        for s_i in range(a.final_sweeps):
            st, info = exact.final_sweep(
                jax.random.fold_in(key_run, 2**31 - 1),
                st,
                x,
                y,
                jnp.asarray(s_i, jnp.uint32),
                log_prior=posterior.log_prior,
                log_likelihood=posterior.log_likelihood,
                config=config,
            )
            lp = particle_outputs(posterior, st.particles, data.x_test)
            pr = np.exp(np.asarray(metrics.predictive_log_probs(lp, st.log_weights)))
            total = total + pr
            avg = total / (s_i + 2)
            curve[s_i + 1] = [
                round(float(np.mean(0.5 * np.abs(avg - ref).sum(1))), 4),
                round(float(np.mean(0.5 * np.abs(pr - ref).sum(1))), 4),
                round(float(info.accept), 3),
            ]
        out["sweeps_tv_mean_tv_last_accept"] = curve
        out["sweep_seconds"] = round(time.perf_counter() - t1, 1)
        out["sweep_example_grads"] = (
            a.particles * n * moves.gradient_evaluations(move) * (a.final_sweeps)
        )
    if a.save:
        np.savez(a.save, probs=probs)
    out = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}
    print(json.dumps({"args": vars(a), **out}))


if __name__ == "__main__":
    main()
