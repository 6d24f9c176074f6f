"""Data-annealing schedules: the batch size M_k for iterations k = 1..K, and the batch buckets.

The fixed schedules (full, constant, ctr, linear) are functions of k alone, so the whole sequence
is known before the run; buckets keep the number of compiled step functions at about
log2(N / C) + 2 whatever K is.
"""

from __future__ import annotations

import math

import numpy as np

SCHEDULES = ("full", "constant", "ctr", "linear")


def refine_start(num_iterations: int, refine_at: float) -> int:
    """Last iteration of the minibatch phase: floor(r K); iterations after it use the full data."""
    return int(math.floor(refine_at * num_iterations + 1e-9))


def batch_sizes(
    name: str,
    *,
    num_data: int,
    num_iterations: int,
    batch_size: int = 500,
    refine_at: float = 0.9,
    slope: float | None = None,
) -> np.ndarray:
    """M_k for k = 1..K (int64 array of length K) under schedule `name`."""
    k = np.arange(1, num_iterations + 1)
    n, c = num_data, min(batch_size, num_data)
    rk = refine_start(num_iterations, refine_at)
    if name == "full":
        sizes = np.full(num_iterations, n)
    elif name == "constant":
        sizes = np.full(num_iterations, c)
    elif name == "ctr":
        sizes = np.where(k <= rk, c, n)
    elif name == "linear":
        kappa = (n - c) / max(rk, 1) if slope is None else slope
        ramp = np.minimum(n, np.floor(c + kappa * (k - 1)))
        sizes = np.where(k <= rk, ramp, n)
    else:
        raise ValueError(f"unknown schedule {name!r}; choose one of: {', '.join(SCHEDULES)}")
    return sizes.astype(np.int64)


def buckets(num_data: int, batch_size: int) -> tuple[int, ...]:
    """Padded batch shapes: C, 2C, 4C, ... below N, then N."""
    sizes, b = [], min(batch_size, num_data)
    while b < num_data:
        sizes.append(b)
        b *= 2
    return (*sizes, num_data)


def bucket_for(size: int, bucket_sizes: tuple[int, ...]) -> int:
    """Smallest bucket that holds `size` rows."""
    for b in bucket_sizes:
        if b >= size:
            return b
    raise ValueError(f"batch size {size} exceeds the largest bucket {bucket_sizes[-1]}")
