"""Uncertainty scores of a weighted predictive, and what they are good for.

From per-particle log-probs log p_j(y|x) (J, n, K) and log-weights (J,):
- `max_prob`: max_k p(k|x) of the mixture p = sum_j W_j p_j (high: confident);
- `entropy`: H[p], the predictive entropy (total uncertainty);
- `mutual_information`: H[p] - sum_j W_j H[p_j], the disagreement between particles (the
  epistemic part; 0 when all particles predict alike, never negative up to rounding).
A particle with log-weight -inf is dropped (its predictions may be NaN), as in metrics.py.

Out-of-distribution detection (`detection_metrics`) treats the OOD inputs as the POSITIVE class
and a score that is larger on OOD inputs as the detector (entropy, mutual information, and
1 - max_prob): AUROC, AUPR (average precision) and the false-positive rate at 95% true-positive
rate, all from scikit-learn's metrics.

Selective prediction (`selective_metrics`) keeps the most confident (max_prob) fraction c of the
inputs: accuracy at each coverage c, and the area under the risk-coverage curve (AURC), the
mean over k = 1..n of the error rate of the k most confident inputs (ties broken by input order).
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

SCORES = ("max_prob", "entropy", "mutual_information")
# the entropy histogram's bins, as fractions of log K (the largest entropy of K classes)
HISTOGRAM_BINS = 20


def _entropy(log_probs: np.ndarray) -> np.ndarray:
    """H = -sum_k p_k log p_k over the last axis, with 0 log 0 = 0."""
    p = np.exp(log_probs)
    return -np.sum(np.where(p > 0, p * log_probs, 0.0), axis=-1)


def predictive_scores(log_probs, log_weights) -> dict[str, np.ndarray]:
    """Per-input scores (n,), the mixture's log-probs `log_probs` (n, K) and its `predicted`
    class.

    `log_probs` is (J, n, K) per-particle log-probabilities, `log_weights` (J,) unnormalised.
    Computed in float64 numpy on the host: a few array operations per chunk, with no program
    to compile (a jitted version cost more to compile than the whole evaluation to run).
    """
    log_w = np.asarray(log_weights, np.float64)
    keep = ~np.isneginf(log_w)  # dropped particles (-inf) are left out, NaN predictions too
    log_w = log_w[keep] - logsumexp(log_w[keep])
    log_probs = np.asarray(log_probs, np.float64)[keep]
    mix = logsumexp(log_probs + log_w[:, None, None], axis=0)
    entropy = _entropy(mix)
    expected = np.sum(np.exp(log_w)[:, None] * _entropy(log_probs), axis=0)
    return {
        "log_probs": mix,
        "predicted": np.argmax(mix, axis=-1),
        "max_prob": np.exp(np.max(mix, axis=-1)),
        "entropy": entropy,
        # clipped at 0: H[mean] >= mean H holds exactly, so a negative value is rounding only
        "mutual_information": np.maximum(entropy - expected, 0.0),
    }


def ood_score(name: str, scores: dict[str, np.ndarray]) -> np.ndarray:
    """The detector for score `name`: larger means more likely out of distribution."""
    if name == "max_prob":
        return 1.0 - np.asarray(scores["max_prob"], np.float64)
    return np.asarray(scores[name], np.float64)


def detection_metrics(in_score: np.ndarray, out_score: np.ndarray) -> dict[str, float]:
    """AUROC, AUPR and FPR at 95% TPR of a detector, OOD inputs being the positive class.

    `in_score`, `out_score`: the detector's values (larger: more OOD) on the in-distribution and
    the out-of-distribution inputs.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    in_score, out_score = np.asarray(in_score, np.float64), np.asarray(out_score, np.float64)
    labels = np.concatenate([np.zeros(len(in_score)), np.ones(len(out_score))])
    score = np.concatenate([in_score, out_score])
    fpr, tpr, _ = roc_curve(labels, score, drop_intermediate=False)
    return {
        "auroc": float(roc_auc_score(labels, score)),
        "aupr": float(average_precision_score(labels, score)),
        "fpr95": float(fpr[np.searchsorted(tpr, 0.95, side="left")]),
    }


def risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Error rate of the k most confident inputs, for k = 1..n (ties: the earlier input first)."""
    order = np.argsort(-np.asarray(confidence, np.float64), kind="stable")
    errors = 1.0 - np.asarray(correct, np.float64)[order]
    return np.cumsum(errors) / np.arange(1, len(errors) + 1)


def selective_metrics(
    confidence: np.ndarray, correct: np.ndarray, coverages: tuple[float, ...] | list[float]
) -> dict[str, float]:
    """`accuracy_at_<percent>` for each coverage in (0, 1] and `aurc`.

    The accuracy at coverage c is that of the ceil(c n) most confident inputs.
    """
    risk = risk_coverage(confidence, correct)
    n = len(risk)
    out = {}
    for c in coverages:
        k = max(1, int(np.ceil(round(c * n, 9))))
        out[f"accuracy_at_{round(100 * c):d}"] = float(1.0 - risk[k - 1])
    out["aurc"] = float(np.mean(risk))
    return out


def entropy_histogram(entropy: np.ndarray, num_classes: int) -> list[int]:
    """Counts of the entropies in HISTOGRAM_BINS equal bins of [0, log K]."""
    edges = np.linspace(0.0, np.log(num_classes), HISTOGRAM_BINS + 1)
    clipped = np.clip(np.asarray(entropy, np.float64), 0.0, np.log(num_classes))
    return [int(c) for c in np.histogram(clipped, bins=edges)[0]]
