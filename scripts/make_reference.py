"""Make a reference posterior predictive (reference.npz) with blackjax NUTS on a bnn-bench target.

    python scripts/make_reference.py --out ref.npz [--seed 0] [--num-chains 4] [--num-warmup 800]
        [--num-samples 1000] [--thin 4] [OVERRIDE ...]

The target is built exactly as `bnn-bench` builds it: the Hydra config composed from conf/ with
the given overrides (default: the default digits MLP), then run.load_data and
run.build_posterior. `--seed` seeds the chains only (the data split is fixed), so two seeds give
two independent references of the same target (their distance is the reference's noise floor).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from bnn_bench import metrics
from bnn_bench import reference as ref
from bnn_bench.inference import hmc


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from bnn_bench.preflight import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0, help="seeds the chains (not the data)")
    parser.add_argument("--algorithm", default="nuts", choices=hmc.ALGORITHMS)
    parser.add_argument("--num-chains", type=int, default=4)
    parser.add_argument("--num-warmup", type=int, default=800)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--thin", type=int, default=4)
    parser.add_argument("--init", default="map", choices=hmc.INITS)
    parser.add_argument("--init-steps", type=int, default=1000)
    parser.add_argument("--init-learning-rate", type=float, default=0.01)
    parser.add_argument("--target-accept", type=float, default=0.8)
    parser.add_argument("--max-tree-depth", type=int, default=10)
    parser.add_argument("--num-integration-steps", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=25, help="kept draws per jitted chunk")
    parser.add_argument(
        "--exact",
        type=int,
        default=0,
        metavar="S",
        help="model=linear, likelihood=gaussian: write S quantile draws of the closed-form "
        "Gaussian posterior predictive of f(x) instead of sampling",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the target")
    args = parser.parse_args(argv)

    from bnn_bench.build import load_data
    from bnn_bench.build import posterior as build_posterior

    jax.config.update("jax_platforms", "cpu")
    cfg = compose(list(args.overrides))
    data = load_data(cfg)
    posterior = build_posterior(cfg, data)
    if args.exact:
        exact_reference(args, cfg, data, posterior)
        return
    config = hmc.HMCConfig(
        algorithm=args.algorithm,
        num_chains=args.num_chains,
        num_warmup=args.num_warmup,
        num_samples=args.num_samples,
        thin=args.thin,
        target_accept=args.target_accept,
        max_tree_depth=args.max_tree_depth,
        num_integration_steps=args.num_integration_steps,
        init=args.init,
        init_steps=args.init_steps,
        init_learning_rate=args.init_learning_rate,
    )
    hmc.check_config(config)
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    x_test = jnp.asarray(data.x_test)
    log_density = hmc.full_data_log_density(posterior.log_prior, posterior.log_likelihood, x, y)
    classification = posterior.likelihood == "categorical"
    y_test = jnp.asarray(data.y_test)

    if classification:

        def observe(theta):
            logp = jax.nn.log_softmax(posterior.apply(theta, x_test))
            return logp, jnp.take_along_axis(logp, y_test[:, None], axis=1)[:, 0]

    else:

        def observe(theta):
            f = posterior.apply(theta, x_test)[:, 0]
            return f, f

    key_init, key_warm, key_run = jax.random.split(jax.random.key(args.seed), 3)
    t0 = time.perf_counter()
    positions = hmc.initial_positions(key_init, posterior.prior_std, log_density, config)
    positions.block_until_ready()
    t_init = time.perf_counter() - t0
    print(f"[make_reference] starts ({config.init}) in {t_init:.1f}s", file=sys.stderr)
    chains, warm = hmc.warmup(key_warm, log_density, positions, config)
    warm = jax.device_get(warm)
    t_warm = time.perf_counter() - t0
    warm_stats = hmc.summarise(warm, config.num_warmup)
    print(
        f"[make_reference] warmup done at {t_warm:.0f}s: step sizes "
        f"{np.round(np.asarray(chains.step_size), 5).tolist()}, {warm_stats}",
        file=sys.stderr,
    )
    prob_sum = None
    series = []  # per chunk (num_kept, C, n)
    total = {"info": None}

    def callback(done, ch, kept, info):
        nonlocal prob_sum
        out, fs = jax.device_get(kept)
        series.append(np.asarray(fs, np.float32))
        if classification:
            s = np.exp(np.asarray(out, np.float64)).sum(axis=(0, 1))
            prob_sum = s if prob_sum is None else prob_sum + s
        info = jax.device_get(info)
        total["info"] = info if total["info"] is None else jax.tree.map(np.add, total["info"], info)
        stats = hmc.summarise(info, fs.shape[0] * config.thin)
        print(
            f"[make_reference] {done}/{config.num_samples // config.thin} kept draws per chain, "
            f"{time.perf_counter() - t0:.0f}s: {stats}",
            file=sys.stderr,
        )
        return False

    chains, done, status = hmc.run_sampling(
        key_run,
        chains,
        log_density=log_density,
        observe=observe,
        config=config,
        chunk_kept=args.chunk,
        callback=callback,
    )
    runtime = time.perf_counter() - t0
    draws = np.concatenate(series).transpose(1, 0, 2)  # (C, S, n)
    diag = hmc.diagnostics(draws)
    sample_stats = hmc.summarise(total["info"], done * config.thin)
    leapfrogs = float(
        np.sum(warm.num_integration_steps) + np.sum(total["info"].num_integration_steps)
    )
    n = data.n_train
    example_grads = int(
        n * (leapfrogs + config.init_steps * config.num_chains * (config.init == "map"))
    )
    ident = ref.target_identity(cfg, data)
    record = {
        "command": "python scripts/make_reference.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "algorithm": config.algorithm,
        "num_chains": config.num_chains,
        "num_warmup": config.num_warmup,
        "num_samples": config.num_samples,
        "thin": config.thin,
        "init": config.init,
        "seed": args.seed,
        "runtime_s": runtime,
        "init_s": t_init,
        "warmup_s": t_warm - t_init,
        "example_grads": example_grads,
        "step_size": [float(s) for s in np.asarray(chains.step_size)],
        "warmup": warm_stats,
        **sample_stats,
        **diag,
    }
    if classification:
        probs = (prob_sum / (draws.shape[0] * draws.shape[1])).astype(np.float32)
        log_probs = np.log(np.maximum(probs, 1e-38))
        record.update(metrics.classification_metrics(log_probs, data.y_test))
        ref.write(args.out, ident, probs=probs, diagnostics=record)
    else:
        samples = draws.transpose(2, 0, 1).reshape(draws.shape[2], -1)
        samples = samples * data.y_std + data.y_mean  # original units, as metrics are reported
        ref.write(args.out, ident, samples=samples, diagnostics=record)
    print(json.dumps(record, indent=1), file=sys.stderr)
    print(f"[make_reference] wrote {args.out}", file=sys.stderr)


def linear_gaussian_predictive(posterior, x_train, y_train, x_test):
    """Closed-form posterior predictive of f(x) for a network that is affine in its weights
    (model=linear) under the Gaussian prior and likelihood: (mean, std) at each test point."""
    theta0 = jnp.zeros(posterior.dim)

    def features(x):  # f(x; theta) = f(x; 0) + J(x) theta exactly, for an affine network
        return np.asarray(jax.jacfwd(lambda t: posterior.apply(t, x)[:, 0])(theta0), np.float64)

    offset_tr = np.asarray(posterior.apply(theta0, x_train)[:, 0], np.float64)
    offset_te = np.asarray(posterior.apply(theta0, x_test)[:, 0], np.float64)
    j_tr, j_te = features(x_train), features(x_test)
    noise = posterior.noise_std
    prior_var = np.asarray(posterior.prior_std, np.float64) ** 2
    precision = j_tr.T @ j_tr / noise**2 + np.diag(1.0 / prior_var)
    cov = np.linalg.inv(precision)
    mean = cov @ j_tr.T @ (np.asarray(y_train, np.float64) - offset_tr) / noise**2
    f_mean = offset_te + j_te @ mean
    f_std = np.sqrt(np.einsum("ij,jk,ik->i", j_te, cov, j_te))
    return f_mean, f_std


def exact_reference(args, cfg, data, posterior) -> None:
    from scipy.stats import norm

    if cfg.model.name != "linear" or posterior.likelihood != "gaussian":
        raise SystemExit("make_reference: --exact needs model=linear and likelihood=gaussian")
    t0 = time.perf_counter()
    f_mean, f_std = linear_gaussian_predictive(posterior, data.x_train, data.y_train, data.x_test)
    u = (np.arange(args.exact) + 0.5) / args.exact
    samples = f_mean[:, None] + f_std[:, None] * norm.ppf(u)[None, :]
    samples = samples * data.y_std + data.y_mean
    record = {
        "command": "python scripts/make_reference.py " + " ".join(sys.argv[1:]),
        "algorithm": "exact",
        "num_samples": args.exact,
        "runtime_s": time.perf_counter() - t0,
        "f_mean": (f_mean * data.y_std + data.y_mean).tolist(),
        "f_std": (f_std * data.y_std).tolist(),
    }
    ref.write(args.out, ref.target_identity(cfg, data), samples=samples, diagnostics=record)
    print(f"[make_reference] wrote the exact predictive to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
