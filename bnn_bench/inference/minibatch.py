"""Minibatches drawn inside jitted steps: epochs of a fresh permutation, no host round-trip."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def epoch_batch(rng_key: jax.Array, step: jax.Array, num_data: int, batch_size: int):
    """Row indices (batch_size,) of minibatch `step` (0-based): epoch e = step // (N // B)
    shuffles the data with fold_in(rng_key, e) and step takes the next B rows of it, so every
    row is seen once per epoch (the N mod B rows left over are skipped in that epoch)."""
    per_epoch = max(num_data // batch_size, 1)
    epoch, offset = jnp.divmod(step, per_epoch)
    perm = jax.random.permutation(jax.random.fold_in(rng_key, epoch), num_data)
    return jax.lax.dynamic_slice_in_dim(perm, offset * batch_size, batch_size)
