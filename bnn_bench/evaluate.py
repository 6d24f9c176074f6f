"""Posterior-predictive evaluation of weighted particles (or equally weighted samples).

p(y|x) = sum_j W_j p(y|x, theta_j), in log space; test data is streamed in chunks and particles in
`particle_chunk` groups so memory stays bounded in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from bnn_bench import metrics, uncertainty
from bnn_bench.inference.mapping import map_particles
from bnn_bench.posterior import Posterior

# Draws per jitted evaluation call (host-side groups; the last group may be smaller). Unrolled
# draws (CNNs on CPU) are each traced into the graph, so their group is small: compile time and
# memory grow with it; vmapped draws share one trace.
DRAWS_PER_CALL = {"unroll": 16, "vmap": 256}


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
    """Per-particle log-probs (J, n, K) or regression means (J, n) over x, in data chunks of
    `eval_chunk` rows and, from the host, groups of at most DRAWS_PER_CALL[particle_map] draws
    per jitted call: a pooled cloud (smc.budget's final sweeps, SG-MCMC's or NUTS's draws) can
    hold far more draws than the run's particles, and one call over all of them held every draw's
    activations at once (560 CNN draws on 2,000 images asked for 28 GB)."""
    categorical = posterior.likelihood == "categorical"
    group = DRAWS_PER_CALL[particle_map]
    rows = []
    for j in range(0, particles.shape[0], group):
        outs = [
            _chunk_outputs(
                posterior.apply,
                particles[j : j + group],
                jnp.asarray(x[i : i + eval_chunk]),
                categorical=categorical,
                particle_chunk=particle_chunk,
                particle_map=particle_map,
            )
            for i in range(0, len(x), eval_chunk)
        ]
        rows.append(jnp.concatenate(outs, axis=1))
    return rows[0] if len(rows) == 1 else jnp.concatenate(rows, axis=0)


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
    observe=None,
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

    `observe(per_particle)` (classification), if given, sees each test chunk's per-particle
    log-probs (J, chunk, K) in order (the uncertainty evaluation reuses them).
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
            if observe is not None:
                observe(per_particle)
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


# --- beyond the test set: OOD detection, shift, selective prediction (evaluation.*) -------------


@dataclass(frozen=True)
class UncertaintyPlan:
    """What `evaluation.*` asks for beyond the test set (build.uncertainty_plan makes it).

    `ood`: InputSets (data/ood.py); `shift`: (kind, level, transform(x, start)) triples, kind
    "rotation" or a corruption and level its angle or severity (data/shift.py); `coverages`:
    the selective-prediction coverages (empty: none).
    """

    num_classes: int
    ood: tuple = ()
    shift: tuple = ()
    coverages: tuple[float, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.ood or self.shift or self.coverages)


class ScoreStream:
    """Accumulates uncertainty.predictive_scores chunk by chunk (the test pass's observer);
    the predictive's log-probs (n, K) only with `keep_log_probs`."""

    def __init__(self, log_weights, keep_log_probs: bool = False):
        self.log_weights, self.keep = log_weights, keep_log_probs
        self.parts: dict[str, list] = {}

    def __call__(self, per_particle, rows: int | None = None):
        scores = uncertainty.predictive_scores(per_particle, self.log_weights)
        if not self.keep:
            scores.pop("log_probs")
        for name, value in scores.items():
            self.parts.setdefault(name, []).append(np.asarray(value)[:rows])

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: np.concatenate(parts) for name, parts in self.parts.items()}


def _stream(posterior, particles, chunks, scores: ScoreStream, *, size: int, **mapping) -> None:
    """Feed every chunk (padded to `size` rows, so one compiled shape serves every set)."""
    for x in chunks:
        rows = len(x)
        if rows < size:
            x = np.concatenate([x, np.zeros((size - rows, *x.shape[1:]), x.dtype)])
        per_particle = particle_outputs(posterior, particles, x, eval_chunk=size, **mapping)
        scores(per_particle, rows)


def _means(scores: dict[str, np.ndarray]) -> dict[str, float]:
    return {f"mean_{name}": float(np.mean(scores[name])) for name in uncertainty.SCORES}


def uncertainty_results(
    posterior: Posterior,
    particles: jax.Array,
    log_weights: jax.Array,
    x: np.ndarray,
    y: np.ndarray,
    plan: UncertaintyPlan,
    test_scores: dict[str, np.ndarray],
    *,
    eval_chunk: int = 2000,
    particle_chunk: int | None = None,
    particle_map: str = "vmap",
    num_bins: int = 15,
) -> dict:
    """results.json's `ood`, `shift` and `selective` of a classifier, each only when asked.

    `test_scores` are the test set's scores from its own pass (a `ScoreStream` given to
    `evaluate` as `observe`), so the test set is not run again. Every other set is streamed in
    chunks of min(eval_chunk, n_test) rows (padded, so that one compiled shape serves every
    set): memory is bounded whatever a set's size, only its per-input scores (or, for a shifted
    test set, its (n, K) predictive) being kept.
    """
    mapping = {"particle_chunk": particle_chunk, "particle_map": particle_map}
    size = min(eval_chunk, len(x))
    num_classes = plan.num_classes
    out: dict = {}
    if plan.ood:
        ood = {
            "test": {
                "n": len(x),
                "entropy_histogram": uncertainty.entropy_histogram(
                    test_scores["entropy"], num_classes
                ),
                "histogram_max": float(np.log(num_classes)),
                **_means(test_scores),
            }
        }
        for s in plan.ood:
            scores = ScoreStream(log_weights)
            _stream(posterior, particles, s.chunks(size), scores, size=size, **mapping)
            arrays = scores.arrays()
            ood[s.name] = {"n": s.n}
            for name in uncertainty.SCORES:
                ood[s.name][name] = uncertainty.detection_metrics(
                    uncertainty.ood_score(name, test_scores),
                    uncertainty.ood_score(name, arrays),
                )
            ood[s.name]["entropy_histogram"] = uncertainty.entropy_histogram(
                arrays["entropy"], num_classes
            )
            ood[s.name].update(_means(arrays))
        out["ood"] = ood
    if plan.shift:
        shift: dict = {}
        labels = jnp.asarray(y)
        for kind, level, transform in plan.shift:
            scores = ScoreStream(log_weights, keep_log_probs=True)
            chunks = (transform(x[i : i + size], i) for i in range(0, len(x), size))
            _stream(posterior, particles, chunks, scores, size=size, **mapping)
            log_probs = jnp.asarray(scores.arrays()["log_probs"])
            result = metrics.classification_metrics(log_probs, labels, num_bins=num_bins)
            shift.setdefault(kind, {})[f"{level:g}"] = result
        out["shift"] = shift
    if plan.coverages:
        correct = test_scores["predicted"] == np.asarray(y)
        out["selective"] = uncertainty.selective_metrics(
            test_scores["max_prob"], correct, plan.coverages
        )
    return out
