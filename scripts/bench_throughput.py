"""Particle-example gradient throughput of the SMC move, and the machine's matmul rate.

    python scripts/bench_throughput.py [--json FILE] [--models lenet5 cnn] [--particles 1 8 16]
                                       [--batches 500 5000] [--repeats 3] [--chunk N]

For each model, number of particles J and batch size M it times one value-and-gradient of the
batch log-target (the quantity a leapfrog step needs) for every particle, along three paths:
  single      one particle (the rate per particle that the others are compared with);
  naive_vmap  jax.vmap over the J particles' parameter vectors;
  batched     the sampler's own path: map_particles with the particle map that
              hardware.particle_map=auto picks on this platform (and --chunk particles at a time).
Rates are particle-example gradients per second (J * M / seconds), the median over --repeats
timed calls after a warm-up call that compiles. It prints a table and, with --json, writes
{"matmul_gflops": float, "records": [{"model", "num_particles", "batch_size", "path", "rate"}],
 "skipped": [{"model", "num_particles", "batch_size", "path", "reason"}]}.
A configuration that runs out of memory (the naive vmap of the CNN at J=16 and batch 5,000 asks
for 25.6 GB) is printed as such, listed under "skipped", and the grid goes on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bnn_bench.inference.mapping import map_particles
from bnn_bench.models import build_model
from bnn_bench.posterior import make_log_target, make_posterior


def median_seconds(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def rate_or_none(fn, args, repeats: int, examples: int) -> float | None:
    """Particle-example gradients per second, or None when the device runs out of memory."""
    try:
        return examples / median_seconds(fn, args, repeats)
    except jax.errors.JaxRuntimeError as err:
        if "RESOURCE_EXHAUSTED" not in str(err):
            raise
        return None


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    seconds = median_seconds(jax.jit(jnp.matmul), (a, b), repeats)
    return 2 * n**3 / seconds / 1e9


def gradient_paths(
    model_name: str, batch_size: int, particle_map: str, chunk: int | None, dtype: str
):
    """The three jitted functions (single, naive_vmap, batched) and a data/particle factory."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch_size, 28, 28, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, batch_size), jnp.int32)
    post = make_posterior(
        build_model(model_name, 10), x[:1], prior_scale="fan_in", prior_std=1.0, compute_dtype=dtype
    )
    log_target = make_log_target(post, 60_000)
    mask = jnp.ones(batch_size, bool)
    m = jnp.asarray(batch_size, jnp.int32)

    def vg(theta):
        return jax.value_and_grad(log_target)(theta, x, y, mask, m)

    single = jax.jit(vg)
    naive = jax.jit(jax.vmap(vg))
    batched = jax.jit(
        lambda th: map_particles(vg, th, particle_map=particle_map, particle_chunk=chunk)
    )

    def particles(j):
        return jax.random.normal(jax.random.key(j), (j, post.dim)) * post.prior_std

    return single, naive, batched, particles, post.dim


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the records to this file")
    parser.add_argument("--models", nargs="+", default=["lenet5", "cnn"])
    parser.add_argument("--particles", nargs="+", type=int, default=[1, 8, 16])
    parser.add_argument("--batches", nargs="+", type=int, default=[500, 5000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=None, help="particles at a time (batched)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bf16"])
    args = parser.parse_args(argv)

    on_cpu = jax.default_backend() == "cpu"
    particle_map = "unroll" if on_cpu else "vmap"  # what hardware.particle_map=auto picks
    gflops = matmul_gflops()
    print(
        f"matmul float32: {gflops:.0f} GFLOP/s ({jax.default_backend()}, {jax.device_count()} dev)"
    )
    print(f"batched path: particle_map={particle_map}, chunk={args.chunk}, dtype={args.dtype}")
    records, skipped = [], []
    header = f"{'model':<7} {'J':>3} {'batch':>6} {'path':<11} {'rate':>10} {'vs single':>10}"
    print(header)
    for model_name in args.models:
        for batch in args.batches:
            single, naive, batched, particles, dim = gradient_paths(
                model_name, batch, particle_map, args.chunk, args.dtype
            )
            single_rate = rate_or_none(single, (particles(1)[0],), args.repeats, batch)
            for j in args.particles:
                rates = {"single": single_rate}
                if j > 1:
                    th = particles(j)
                    rates["naive_vmap"] = rate_or_none(naive, (th,), args.repeats, j * batch)
                    rates["batched"] = rate_or_none(batched, (th,), args.repeats, j * batch)
                for path, rate in rates.items():
                    where = {"model": model_name, "num_particles": j, "batch_size": batch}
                    if rate is None:
                        print(f"{model_name:<7} {j:>3} {batch:>6} {path:<11} {'out of memory':>21}")
                        skipped.append({**where, "path": path, "reason": "out of memory"})
                        continue
                    ratio = f"{rate / single_rate:>10.2f}" if single_rate else f"{'-':>10}"
                    print(f"{model_name:<7} {j:>3} {batch:>6} {path:<11} {rate:>10.0f} {ratio}")
                    records.append({**where, "path": path, "rate": rate, "dtype": args.dtype})
                sys.stdout.flush()
    if args.json:
        out = {"matmul_gflops": gflops, "records": records, "skipped": skipped}
        args.json.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
