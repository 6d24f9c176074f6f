"""Predictive metrics from (weighted) per-particle predictions: accuracy, NLL, ECE, Brier, RMSE.

ECE is top-label, with `num_bins` equal-width confidence bins on [0, 1] and the L1 norm:
sum over bins of (fraction of examples in the bin) * |accuracy - mean confidence|.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp


def normalise_log_weights(log_weights: jax.Array) -> jax.Array:
    """log W_j = log w_j - logsumexp(log w); -inf entries stay -inf."""
    return log_weights - logsumexp(log_weights)


def predictive_log_probs(log_probs: jax.Array, log_weights: jax.Array) -> jax.Array:
    """log sum_j W_j p_j(y|x) from per-particle log-probs (J, n, K) and log-weights (J,)."""
    log_w = normalise_log_weights(log_weights)
    return logsumexp(log_probs + log_w[:, None, None], axis=0)


def ess(log_weights: jax.Array) -> jax.Array:
    """Effective sample size 1 / sum_j W_j^2 (0 when every weight is zero)."""
    w = jax.nn.softmax(log_weights)
    return jnp.where(jnp.all(jnp.isneginf(log_weights)), 0.0, 1.0 / jnp.sum(w**2))


def reliability_bins(log_probs: jax.Array, labels: jax.Array, num_bins: int = 15) -> dict:
    """Per-bin count, accuracy and mean confidence of the top label (NaN for empty bins)."""
    probs = np.exp(np.asarray(log_probs, np.float64))
    labels = np.asarray(labels)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    bins = np.minimum((conf * num_bins).astype(np.int64), num_bins - 1)
    count = np.bincount(bins, minlength=num_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(bins, weights=correct, minlength=num_bins) / count
        mean_conf = np.bincount(bins, weights=conf, minlength=num_bins) / count
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    return {
        "bin_lower": edges[:-1],
        "bin_upper": edges[1:],
        "count": count,
        "accuracy": acc,
        "confidence": mean_conf,
    }


def expected_calibration_error(bins: dict) -> float:
    """L1 ECE from `reliability_bins`: sum_b (n_b / n) |acc_b - conf_b|."""
    count = bins["count"]
    gap = np.where(count > 0, np.abs(bins["accuracy"] - bins["confidence"]), 0.0)
    return float(np.sum(count / count.sum() * np.nan_to_num(gap)))


def classification_metrics(
    log_probs: jax.Array, labels: jax.Array, num_bins: int = 15
) -> dict[str, float]:
    """accuracy, nll, ece and brier of predictive log-probs (n, K) against integer labels."""
    log_probs = np.asarray(log_probs, np.float64)
    labels = np.asarray(labels).astype(np.int64)
    probs = np.exp(log_probs)
    onehot = np.eye(probs.shape[1])[labels]
    return {
        "accuracy": float(np.mean(probs.argmax(axis=1) == labels)),
        "nll": float(-np.mean(log_probs[np.arange(len(labels)), labels])),
        "ece": expected_calibration_error(reliability_bins(log_probs, labels, num_bins)),
        "brier": float(np.mean(np.sum((probs - onehot) ** 2, axis=1))),
    }


def regression_metrics(
    means: jax.Array, log_weights: jax.Array, targets: jax.Array, noise_std: float
) -> dict[str, float]:
    """RMSE of the weighted predictive mean and NLL of the mixture sum_j W_j N(y; mu_j, s^2)."""
    log_w = np.asarray(normalise_log_weights(jnp.asarray(log_weights)), np.float64)
    means = np.asarray(means, np.float64)
    y = np.asarray(targets, np.float64)
    w = np.exp(log_w)
    pred = np.sum(w[:, None] * means, axis=0)
    log_norm = -0.5 * np.log(2 * np.pi * noise_std**2)
    log_pdf = log_norm - 0.5 * ((y[None, :] - means) / noise_std) ** 2
    finite = np.isfinite(log_w)
    mix = np.asarray(logsumexp(jnp.asarray(log_pdf[finite] + log_w[finite, None]), axis=0))
    return {"rmse": float(np.sqrt(np.mean((pred - y) ** 2))), "nll": float(-np.mean(mix))}
