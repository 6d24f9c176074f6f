"""What evaluation.* adds to a run's final evaluation, in seconds (compilation included).

    python scripts/uncertainty_cost.py [OVERRIDES...]

Composes the config as bnn-bench would (the overrides name the evaluation, the method's particle
count, the dataset), draws the particles from the prior (the cost does not depend on their
values), evaluates the test set once without evaluation.* (compiling the test pass, as every
run does), then times a warm test pass without it and the first pass with it, and prints both.
"""

from __future__ import annotations

import sys
import time

from hydra import compose, initialize_config_dir


def main(argv: list[str]) -> None:
    import jax
    import jax.numpy as jnp

    from bnn_bench import build
    from bnn_bench.inference.smc import sampler
    from bnn_bench.preflight import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        on = compose(config_name="config", overrides=argv)
        off = compose(
            config_name="config",
            overrides=[o for o in argv if not o.startswith("evaluation.")],
        )
    data = build.load_data(on)
    posterior = build.posterior(on, data)
    j = on.smc.num_particles if on.method.name == "smc" else on.vi.num_predictive_samples
    state = sampler.init(jax.random.key(0), posterior.prior_std, posterior.log_prior, j)
    particles, log_weights = state.particles, jnp.zeros(j)
    plain, full = build.evaluator(off, data, posterior), build.evaluator(on, data, posterior)
    plain(particles, log_weights, reliability=True)  # compiles the test pass
    t0 = time.perf_counter()
    plain(particles, log_weights, reliability=True)
    t1 = time.perf_counter()
    result = full(particles, log_weights, reliability=True)
    t2 = time.perf_counter()
    print(f"particles={j} n_test={len(data.y_test)} keys={sorted(result)}")
    print(f"test pass {t1 - t0:.3f} s; with evaluation.* {t2 - t1:.3f} s (first call)")


if __name__ == "__main__":
    main(sys.argv[1:])
