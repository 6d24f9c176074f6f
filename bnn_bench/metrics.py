"""Predictive metrics from (weighted) per-particle predictions: accuracy, NLL, ECE, Brier, RMSE.

Particles carry unnormalised log-weights; a weight of -inf marks a dropped particle, which is
ignored everywhere (even if its predictions are NaN). ECE is top-label, with `num_bins`
equal-width confidence bins on [0, 1] and the L1 norm: sum over bins of (fraction of examples in
the bin) * |accuracy - mean confidence|. A confidence on an inner edge goes to the upper bin and a
confidence of 1 to the last bin: bin = min(floor(conf * num_bins), num_bins - 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.scipy.special import logsumexp


def normalise_log_weights(log_weights: Array) -> Array:
    """log W_j = log w_j - logsumexp(log w), so weights sum to one; -inf entries stay -inf.

    Shifts by the max first (log-softmax), so large equal offsets cancel exactly.
    """
    return jax.nn.log_softmax(jnp.asarray(log_weights))


def predictive_log_probs(log_probs: Array, log_weights: Array) -> Array:
    """log sum_j W_j p_j(y|x), (n, K), from per-particle log-probs (J, n, K) and log-weights (J,).

    Computed in log space so that large or tiny weights neither overflow nor underflow.
    """
    log_w = normalise_log_weights(log_weights)[:, None, None]
    terms = jnp.where(jnp.isneginf(log_w), -jnp.inf, jnp.asarray(log_probs) + log_w)
    return logsumexp(terms, axis=0)


def ess(log_weights: Array) -> Array:
    """Effective sample size 1 / sum_j W_j^2, to decide when to resample; 0 if all are -inf."""
    log_weights = jnp.asarray(log_weights)
    dead = jnp.all(jnp.isneginf(log_weights))
    safe = jnp.where(dead, jnp.zeros_like(log_weights), log_weights)  # keeps the NaN out
    # 1 / sum W^2 = (sum w)^2 / sum w^2, with w scaled so that its largest entry is 1.
    w = jnp.exp(safe - jnp.max(safe))
    value = jnp.sum(w) ** 2 / jnp.sum(w**2)
    return jnp.where(dead, jnp.zeros_like(value), value)


def confidence_bins(confidences: Array, num_bins: int = 15) -> Array:
    """Bin index min(floor(conf * num_bins), num_bins - 1) of each confidence in [0, 1]."""
    idx = jnp.floor(jnp.asarray(confidences) * num_bins).astype(jnp.int32)
    return jnp.clip(idx, 0, num_bins - 1)


def reliability_bins(log_probs: Array, labels: Array, num_bins: int = 15) -> dict[str, np.ndarray]:
    """Per-bin count, accuracy and mean top-label confidence, for ECE and reliability diagrams.

    Returns numpy arrays `bin_lower`, `bin_upper`, `count`, `accuracy`, `confidence` (the last
    two NaN for empty bins).
    """
    probs = jnp.exp(jnp.asarray(log_probs))
    conf = jnp.max(probs, axis=1)
    correct = (jnp.argmax(probs, axis=1) == jnp.asarray(labels)).astype(probs.dtype)
    bins = confidence_bins(conf, num_bins)
    count = np.asarray(jnp.bincount(bins, length=num_bins), np.float64)
    hits = np.asarray(jnp.bincount(bins, weights=correct, length=num_bins), np.float64)
    conf_sum = np.asarray(jnp.bincount(bins, weights=conf, length=num_bins), np.float64)
    nonempty = count > 0
    safe_count = np.where(nonempty, count, 1.0)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    return {
        "bin_lower": edges[:-1],
        "bin_upper": edges[1:],
        "count": count,
        "accuracy": np.where(nonempty, hits / safe_count, np.nan),
        "confidence": np.where(nonempty, conf_sum / safe_count, np.nan),
    }


def expected_calibration_error(bins: dict[str, np.ndarray]) -> float:
    """L1 ECE from `reliability_bins`: sum_b (n_b / n) |acc_b - conf_b|, empty bins count 0."""
    count = bins["count"]
    gap = np.where(count > 0, np.abs(bins["accuracy"] - bins["confidence"]), 0.0)
    return float(np.sum(count / count.sum() * gap))


def reliability_summary(
    log_probs: Array, labels: Array, num_bins: int = 15
) -> dict[str, list[float | None]]:
    """The reliability diagram's data, as results.json stores it: per-bin mean top-label
    confidence `bin_confidence`, accuracy `bin_accuracy` (None for empty bins) and `bin_count`,
    from the same bins as the ECE (`reliability_bins`)."""
    bins = reliability_bins(log_probs, jnp.asarray(labels).astype(jnp.int32), num_bins)

    def listed(values):
        return [float(v) if np.isfinite(v) else None for v in values]

    return {
        "bin_confidence": listed(bins["confidence"]),
        "bin_accuracy": listed(bins["accuracy"]),
        "bin_count": [int(c) for c in bins["count"]],
    }


def classification_metrics(log_probs: Array, labels: Array, num_bins: int = 15) -> dict[str, float]:
    """accuracy, nll, brier and ece of predictive log-probs (n, K) against integer labels (n,)."""
    log_probs = jnp.asarray(log_probs)
    labels = jnp.asarray(labels).astype(jnp.int32)
    probs = jnp.exp(log_probs)
    log_p_true = jnp.take_along_axis(log_probs, labels[:, None], axis=1)[:, 0]
    onehot = jax.nn.one_hot(labels, log_probs.shape[1], dtype=probs.dtype)
    return {
        "accuracy": float(jnp.mean(jnp.argmax(log_probs, axis=1) == labels)),
        "nll": float(-jnp.mean(log_p_true)),
        "brier": float(jnp.mean(jnp.sum((probs - onehot) ** 2, axis=1))),
        "ece": expected_calibration_error(reliability_bins(log_probs, labels, num_bins)),
    }


def regression_metrics(
    means: Array, log_weights: Array, targets: Array, noise_std: float
) -> dict[str, float]:
    """RMSE of the weighted predictive mean and NLL of the mixture sum_j W_j N(y; mu_j, s^2).

    `means` is (J, n), the per-particle mean f(x; theta_j); `targets` is (n,).
    """
    log_w = normalise_log_weights(log_weights)[:, None]
    dropped = jnp.isneginf(log_w)
    means = jnp.where(dropped, 0.0, jnp.asarray(means))  # dropped particles may hold NaN
    y = jnp.asarray(targets)[None, :]
    pred = jnp.sum(jnp.exp(log_w) * means, axis=0)
    log_pdf = -0.5 * jnp.log(2 * jnp.pi * noise_std**2) - 0.5 * ((y - means) / noise_std) ** 2
    log_mix = logsumexp(jnp.where(dropped, -jnp.inf, log_pdf + log_w), axis=0)
    return {
        "rmse": float(jnp.sqrt(jnp.mean((pred - y[0]) ** 2))),
        "nll": float(-jnp.mean(log_mix)),
    }


# --- fidelity: closeness of a predictive to a reference predictive ------------------------------


def agreement(probs: np.ndarray, reference_probs: np.ndarray) -> float:
    """Share of test points whose top class is the reference's top class (Izmailov et al. 2021).

    Both are (n, K) predictive probabilities (or log-probabilities: only the argmax is used).
    """
    a, b = np.asarray(probs), np.asarray(reference_probs)
    _same_shape(a, b)
    return float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1)))


def total_variation(probs: np.ndarray, reference_probs: np.ndarray) -> float:
    """Mean over test points of half the L1 distance between two (n, K) predictive distributions."""
    a, b = np.asarray(probs, np.float64), np.asarray(reference_probs, np.float64)
    _same_shape(a, b)
    return float(np.mean(0.5 * np.sum(np.abs(a - b), axis=1)))


def _same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"predictive shapes differ: {a.shape} vs reference {b.shape}")


def w2_gaussian(mean_a, std_a, mean_b, std_b):
    """Wasserstein-2 distance between 1-d Gaussians: sqrt((m_a - m_b)^2 + (s_a - s_b)^2)."""
    return np.sqrt((np.asarray(mean_a) - mean_b) ** 2 + (np.asarray(std_a) - std_b) ** 2)


def w2_samples(
    samples: np.ndarray,
    reference_samples: np.ndarray,
    weights: np.ndarray | None = None,
    reference_weights: np.ndarray | None = None,
) -> np.ndarray:
    """Exact 1-d Wasserstein-2 distance per row between two weighted empirical distributions.

    `samples` (n, S) and `reference_samples` (n, R): row i holds draws at test point i; the
    weights (S,) and (R,) (normalised here; None: equal) are shared by all rows. In 1-d the
    optimal coupling is monotone, so W2^2 = int_0^1 (F_a^-1(u) - F_b^-1(u))^2 du, which for two
    step quantile functions is a finite sum over the merged breakpoints of their cumulative
    weights. Returns the (n,) distances.
    """
    a, b = np.asarray(samples, np.float64), np.asarray(reference_samples, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"samples must be (n, S) and (n, R), got {a.shape} and {b.shape}")
    wa = _normalised(weights, a.shape[1])
    wb = _normalised(reference_weights, b.shape[1])
    out = np.empty(a.shape[0])
    for i in range(a.shape[0]):
        oa, ob = np.argsort(a[i]), np.argsort(b[i])
        ca, cb = np.cumsum(wa[oa]), np.cumsum(wb[ob])
        ca[-1] = cb[-1] = 1.0
        grid = np.union1d(ca, cb)
        widths = np.diff(grid, prepend=0.0)
        mid = grid - widths / 2
        qa = a[i][oa][np.minimum(np.searchsorted(ca, mid), len(ca) - 1)]
        qb = b[i][ob][np.minimum(np.searchsorted(cb, mid), len(cb) - 1)]
        out[i] = np.sqrt(np.sum(widths * (qa - qb) ** 2))
    return out


def _normalised(weights: np.ndarray | None, num: int) -> np.ndarray:
    if weights is None:
        return np.full(num, 1.0 / num)
    w = np.asarray(weights, np.float64)
    if w.shape != (num,) or np.any(w < 0) or not w.sum() > 0:
        raise ValueError(f"weights must be {num} non-negative numbers with a positive sum")
    return w / w.sum()


def fidelity(predictive: np.ndarray, reference, weights: np.ndarray | None = None) -> dict:
    """agreement and total_variation (classification: `predictive` (n, K) probabilities), or w2
    (regression: `predictive` (n, S) draws of f(x) with optional weights (S,)) against a
    reference (bnn_bench.reference.Reference)."""
    if reference.probs is not None:
        return {
            "agreement": agreement(predictive, reference.probs),
            "total_variation": total_variation(predictive, reference.probs),
        }
    return {"w2": float(np.mean(w2_samples(predictive, reference.samples, weights)))}
