"""Applying a per-particle function across the particle axis (shared by move and evaluation)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

PARTICLE_MAPS = ("vmap", "unroll")


def map_particles(
    fn: Callable, args, *, particle_map: str = "vmap", particle_chunk: int | None = None
):
    """Apply `fn` to every particle's slice of `args` (a pytree with leading axis J); stack results.

    "vmap" vectorises over particles, `particle_chunk` at a time (lax.map over chunks bounds
    memory; None: all at once). "unroll" traces `fn` once per particle: XLA's CPU convolutions are
    slower when vmapped over per-particle kernels or run inside a loop body, so for convolutional
    models on CPU the unrolled graph is faster, at the price of compile time growing with J
    (docs/performance.md has the measurements). With a `particle_chunk`, "unroll" runs a loop
    (lax.map) over chunks of `particle_chunk` particles, each chunk unrolled, so that only one
    chunk's activations are alive at a time.
    """
    num = jax.tree.leaves(args)[0].shape[0]
    if particle_map == "unroll":
        if particle_chunk is None or particle_chunk >= num:
            return _unrolled(fn, args, num)
        full = num - num % particle_chunk
        chunks = jax.tree.map(lambda a: a[:full].reshape(-1, particle_chunk, *a.shape[1:]), args)
        looped = jax.lax.map(lambda c: _unrolled(fn, c, particle_chunk), chunks)
        looped = jax.tree.map(lambda a: a.reshape(full, *a.shape[2:]), looped)
        if full == num:
            return looped
        tail = _unrolled(fn, jax.tree.map(lambda a: a[full:], args), num - full)
        return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), looped, tail)
    if particle_map != "vmap":
        raise ValueError(f"particle_map must be one of {PARTICLE_MAPS}, got {particle_map!r}")
    if particle_chunk is None or particle_chunk >= num:
        return jax.vmap(fn)(args)
    return jax.lax.map(fn, args, batch_size=particle_chunk)


def _unrolled(fn: Callable, args, num: int):
    outs = [fn(jax.tree.map(lambda a, j=j: a[j], args)) for j in range(num)]
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *outs)
