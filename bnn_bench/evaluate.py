"""Posterior-predictive evaluation of weighted particles (or equally weighted samples).

p(y|x) = sum_j W_j p(y|x, theta_j), in log space; test data is streamed in chunks and particles in
`particle_chunk` groups so memory stays bounded in both.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from bnn_bench import metrics
from bnn_bench.inference.mapping import map_particles
from bnn_bench.posterior import Posterior


@partial(jax.jit, static_argnames=("apply", "categorical", "particle_chunk", "particle_map"))
def _chunk_outputs(
    apply, particles, x, *, categorical: bool, particle_chunk: int | None, particle_map: str
):
    def one(theta):
        out = apply(theta, x)
        return jax.nn.log_softmax(out) if categorical else out[:, 0]

    return map_particles(one, particles, particle_map=particle_map, particle_chunk=particle_chunk)


def particle_outputs(
    posterior: Posterior,
    particles: jax.Array,
    x: np.ndarray,
    *,
    eval_chunk: int = 2000,
    particle_chunk: int | None = None,
    particle_map: str = "vmap",
):
    """Per-particle log-probs (J, n, K) or regression means (J, n) over x, in data chunks."""
    categorical = posterior.likelihood == "categorical"
    outs = [
        _chunk_outputs(
            posterior.apply,
            particles,
            jnp.asarray(x[i : i + eval_chunk]),
            categorical=categorical,
            particle_chunk=particle_chunk,
            particle_map=particle_map,
        )
        for i in range(0, len(x), eval_chunk)
    ]
    return jnp.concatenate(outs, axis=1)


def evaluate(
    posterior: Posterior,
    particles: jax.Array,
    log_weights: jax.Array,
    x: np.ndarray,
    y: np.ndarray,
    *,
    eval_chunk: int = 2000,
    particle_chunk: int | None = None,
    particle_map: str = "vmap",
    num_bins: int = 15,
    reliability: bool = False,
    target_shift: float = 0.0,
    target_scale: float = 1.0,
    reference=None,
) -> dict[str, float]:
    """Test metrics of the weighted predictive: accuracy/nll/ece/brier, or rmse/nll (regression).

    Regression targets standardised as y' = (y - target_shift) / target_scale are scored in the
    original units: means, targets and the noise std are mapped back before rmse and nll.

    With `reliability` (classification), also `reliability`: the per-bin confidences, accuracies
    and counts behind the ECE (metrics.reliability_summary), for the reliability diagram.
    With a `reference` (bnn_bench.reference.Reference), also agreement and total_variation
    (classification) or w2 (regression, in the original units) against its predictive.
    """
    if posterior.likelihood == "categorical":
        logp = []
        for i in range(0, len(x), eval_chunk):
            per_particle = particle_outputs(
                posterior,
                particles,
                x[i : i + eval_chunk],
                eval_chunk=eval_chunk,
                particle_chunk=particle_chunk,
                particle_map=particle_map,
            )
            logp.append(metrics.predictive_log_probs(per_particle, log_weights))
        log_probs, labels = jnp.concatenate(logp), jnp.asarray(y)
        result = metrics.classification_metrics(log_probs, labels, num_bins=num_bins)
        if reference is not None:
            result.update(metrics.fidelity(np.exp(np.asarray(log_probs, np.float64)), reference))
        if reliability:
            result["reliability"] = metrics.reliability_summary(log_probs, labels, num_bins)
        return result
    means = particle_outputs(
        posterior,
        particles,
        x,
        eval_chunk=eval_chunk,
        particle_chunk=particle_chunk,
        particle_map=particle_map,
    )
    means = means * target_scale + target_shift
    result = metrics.regression_metrics(
        means,
        log_weights,
        jnp.asarray(y) * target_scale + target_shift,
        posterior.noise_std * target_scale,
    )
    if reference is not None:
        weights = np.exp(np.asarray(metrics.normalise_log_weights(log_weights), np.float64))
        result.update(metrics.fidelity(np.asarray(means).T, reference, weights))
    return result
