"""Seconds per round of the exact sampler's MH moves on a network, two kernels side by side.

    python scripts/bench_exact_moves.py [--model cnn] [--rows 500] [--particles 8]
                                        [--mcmc-steps 1] [--num-steps 3] [--repeats 3]

One round moves every particle with `--mcmc-steps` Metropolis-adjusted HMC steps of
`--num-steps` leapfrogs on the posterior of the first `--rows` FashionMNIST training images, with
the particle map hardware.particle_map=auto picks on this platform (unroll for the CNN on CPU):
  blackjax  blackjax's HMC kernel (hmc.build_kernel()) for every particle, as the exact sampler
            called it before moves.hmc_step: its leapfrog steps in a loop, its MH steps in a scan;
  sampler   moves.mh_moves, what the exact sampler runs (moves.hmc_step under unroll: the same
            kernel with the leapfrog and MH steps unrolled in the trace).
Prints the median over --repeats timed calls after a warm-up call that compiles, for each, and
their ratio. docs/performance.md has the measurement.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp


def timed(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compiles
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--particles", type=int, default=8)
    parser.add_argument("--mcmc-steps", type=int, default=1)
    parser.add_argument("--num-steps", type=int, default=3)
    parser.add_argument("--step-size", type=float, default=0.004)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from pathlib import Path

    from blackjax.mcmc import hmc
    from hydra import compose, initialize_config_dir

    from bnn_bench import build, config
    from bnn_bench.inference.mapping import map_particles
    from bnn_bench.inference.smc import exact, moves

    overrides = [
        "dataset=fashion_mnist",
        f"model={args.model}",
        "prior.std=1.0",
        "prior.scale=fan_in",
        f"dataset.n_train={args.rows}",
        "dataset.n_test=10",
        "logger=none",
    ]
    config.register_configs()
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        cfg = compose("config", overrides=overrides)
    config.validate(cfg)
    data = build.load_data(cfg)
    posterior = build.posterior(cfg, data)
    mapping = build.particle_map(cfg)
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    weights = jnp.ones(x.shape[0])
    key = jax.random.key(0)
    particles = posterior.prior_std * jax.random.normal(key, (args.particles, posterior.dim))
    settings = moves.MoveSettings(args.num_steps, args.mcmc_steps, False, 0.65, 1.0, "identity")

    def target(x, y, w):
        return exact.log_density(posterior.log_prior, posterior.log_likelihood, x, y, w)

    @jax.jit
    def sampler(p, x, y, w, h):
        return moves.mh_moves(key, p, target(x, y, w), h, settings, particle_map=mapping)[0]

    @jax.jit
    def blackjax(p, x, y, w, h):
        logdensity, kernel = target(x, y, w), hmc.build_kernel()
        inverse_mass = jnp.ones(p.shape[1])

        def one(pair):
            k, theta = pair

            def body(state, k):
                return kernel(k, state, logdensity, h, inverse_mass, args.num_steps)[0], None

            state = hmc.init(theta, logdensity)
            keys = jax.random.split(k, args.mcmc_steps)
            return jax.lax.scan(body, state, keys)[0].position

        keys = jax.random.split(key, p.shape[0])
        return map_particles(one, (keys, p), particle_map=mapping)

    h = jnp.asarray(args.step_size)
    rows = {}
    for name, fn in (("blackjax", blackjax), ("sampler", sampler)):
        rows[name] = timed(lambda fn=fn: fn(particles, x, y, weights, h), args.repeats)
        print(f"{name:9s} {rows[name]:.2f} s per round ({mapping})", flush=True)
    print(f"ratio blackjax / sampler: {rows['blackjax'] / rows['sampler']:.2f}")


if __name__ == "__main__":
    main()
