"""Metric functions against values computed by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnn_bench import metrics

NEG_INF = -np.inf


def logp(probs):
    """float32 log-probabilities, as the models produce them."""
    with np.errstate(divide="ignore"):
        return jnp.log(jnp.asarray(probs, jnp.float32))


# ---------------------------------------------------------------------------- ess


@pytest.mark.parametrize(
    ("log_weights", "expected"),
    [
        (np.zeros(7), 7.0),  # uniform: J
        ([0.0, NEG_INF, NEG_INF, NEG_INF], 1.0),  # one-hot
        (np.log([0.5, 0.25, 0.25]), 1 / (0.25 + 0.0625 + 0.0625)),  # 2.6667
        (np.log([0.5, 0.25, 0.25]) + 123.4, 1 / (0.25 + 0.0625 + 0.0625)),  # unnormalised
        ([np.log(2.0), 0.0, 0.0, NEG_INF], 1 / (0.25 + 0.0625 + 0.0625)),  # a zero weight
        ([NEG_INF, NEG_INF, NEG_INF], 0.0),  # all dropped
    ],
)
def test_ess_by_hand(log_weights, expected):
    lw = jnp.asarray(log_weights, jnp.float32)
    assert float(metrics.ess(lw)) == pytest.approx(expected, rel=1e-5)
    assert float(jax.jit(metrics.ess)(lw)) == pytest.approx(expected, rel=1e-5)


def test_ess_large_offsets_do_not_overflow():
    lw = jnp.array([1e4, 1e4, 1e4 - 1e3], jnp.float32)  # exp(1e4) overflows
    assert float(jax.jit(metrics.ess)(lw)) == pytest.approx(2.0, rel=1e-5)


# ---------------------------------------------------------------------------- predictive


PARTICLES = np.array([[[0.9, 0.1], [0.2, 0.8]], [[0.5, 0.5], [0.6, 0.4]]])  # J=2, n=2, K=2


def test_predictive_averages_equally_weighted_particles():
    mix = np.exp(metrics.predictive_log_probs(logp(PARTICLES), jnp.zeros(2)))
    np.testing.assert_allclose(mix, [[0.7, 0.3], [0.4, 0.6]], rtol=1e-6)


def test_predictive_weights_and_ignores_dropped_particles():
    # Weights 1/4, 3/4 given unnormalised: 0.25 * 0.9 + 0.75 * 0.5 = 0.6, etc.
    lw = jnp.log(jnp.array([1.0, 3.0]))
    mix = np.exp(metrics.predictive_log_probs(logp(PARTICLES), lw))
    np.testing.assert_allclose(mix, [[0.6, 0.4], [0.5, 0.5]], rtol=1e-6)
    only_second = metrics.predictive_log_probs(logp(PARTICLES), jnp.array([NEG_INF, 3.0]))
    np.testing.assert_allclose(np.exp(only_second), PARTICLES[1], rtol=1e-6)
    # A dropped particle is ignored even when its predictions are garbage.
    garbage = logp(PARTICLES).at[0].set(jnp.nan)
    only_second = metrics.predictive_log_probs(garbage, jnp.array([NEG_INF, 3.0]))
    np.testing.assert_allclose(np.exp(only_second), PARTICLES[1], rtol=1e-6)


def test_predictive_large_log_weights_do_not_overflow():
    for offset in (1e4, -1e4):
        lw = jnp.array([offset, offset], jnp.float32)  # exp(+-1e4) over/underflows
        mix = np.exp(metrics.predictive_log_probs(logp(PARTICLES), lw))
        np.testing.assert_allclose(mix, [[0.7, 0.3], [0.4, 0.6]], rtol=1e-5)


# ---------------------------------------------------------------------------- classification


def test_classification_metrics_by_hand():
    # Top-label confidences 0.9 (right), 0.6 (wrong), 0.8 (right), 0.55 (right).
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.55, 0.45]])
    labels = np.array([0, 1, 1, 0])
    m = metrics.classification_metrics(logp(probs), jnp.asarray(labels))
    # accuracy = 3/4.
    assert m["accuracy"] == pytest.approx(0.75)
    # nll = -(log 0.9 + log 0.4 + log 0.8 + log 0.55) / 4
    #     = (0.1053605 + 0.9162907 + 0.2231436 + 0.5978370) / 4 = 0.4606580.
    assert m["nll"] == pytest.approx(0.4606580, rel=1e-5)
    # brier = (2*0.1^2 + 2*0.6^2 + 2*0.2^2 + 2*0.45^2) / 4 = (0.02 + 0.72 + 0.08 + 0.405) / 4
    #       = 1.225 / 4 = 0.30625.
    assert m["brier"] == pytest.approx(0.30625, rel=1e-5)
    # 15 bins of width 1/15, bin = min(floor(15 c), 14): 0.55 -> 8 (8.25), 0.6 -> 9 (exactly 9,
    # an inner edge, goes up), 0.8 -> 12 (exactly 12), 0.9 -> 13 (13.5); one example per bin:
    # ece = (|1 - 0.55| + |0 - 0.6| + |1 - 0.8| + |1 - 0.9|) / 4 = 1.35 / 4 = 0.3375.
    assert m["ece"] == pytest.approx(0.3375, rel=1e-5)
    # With 2 bins all four fall in [0.5, 1]: acc 0.75, mean conf 2.85 / 4 = 0.7125, so
    # ece = |0.75 - 0.7125| = 0.0375.
    m2 = metrics.classification_metrics(logp(probs), jnp.asarray(labels), num_bins=2)
    assert m2["ece"] == pytest.approx(0.0375, rel=1e-4)
    assert {k: m2[k] for k in ("accuracy", "nll", "brier")} == pytest.approx(
        {k: m[k] for k in ("accuracy", "nll", "brier")}
    )
    assert all(isinstance(v, float) for v in m.values())


def test_ece_is_zero_when_calibrated():
    # Ten examples at confidence 0.7 of which seven are right, ten at 0.9 with nine right.
    probs = np.concatenate([np.tile([0.7, 0.3], (10, 1)), np.tile([0.1, 0.9], (10, 1))])
    labels = np.array([0] * 7 + [1] * 3 + [1] * 9 + [0])
    m = metrics.classification_metrics(logp(probs), labels)
    assert m["ece"] == pytest.approx(0.0, abs=1e-6)
    assert m["accuracy"] == pytest.approx(0.8)


def test_reliability_bins_edges_and_empty_bins():
    # 4 bins [0, .25), [.25, .5), [.5, .75), [.75, 1]; 0.5 and 0.75 are exact in float32.
    probs = np.array([[1.0, 0.0, 0.0], [0.0, 0.75, 0.25], [0.5, 0.25, 0.25], [0.25, 0.5, 0.25]])
    labels = np.array([0, 2, 0, 0])
    bins = metrics.reliability_bins(logp(probs), labels, num_bins=4)
    np.testing.assert_allclose(bins["bin_lower"], [0.0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(bins["bin_upper"], [0.25, 0.5, 0.75, 1.0])
    # 1.0 -> last bin; 0.75 (edge) -> bin 3; 0.5 (edge), twice -> bin 2; nothing below 0.5.
    np.testing.assert_array_equal(bins["count"], [0, 0, 2, 2])
    np.testing.assert_allclose(bins["accuracy"][2:], [0.5, 0.5])  # bin 3: 1.0 right, 0.75 wrong
    np.testing.assert_allclose(bins["confidence"][2:], [0.5, 0.875])
    assert np.isnan(bins["accuracy"][:2]).all() and np.isnan(bins["confidence"][:2]).all()
    # ece = 2/4 * |0.5 - 0.5| + 2/4 * |0.5 - 0.875| = 0.1875, consistent with the bins.
    assert metrics.expected_calibration_error(bins) == pytest.approx(0.1875)
    m = metrics.classification_metrics(logp(probs), labels, num_bins=4)
    assert m["ece"] == pytest.approx(0.1875, rel=1e-6)


def test_confidence_bins_edges():
    conf = jnp.array([0.0, 0.1, 0.25, 0.5, 0.75, 0.999, 1.0])
    np.testing.assert_array_equal(metrics.confidence_bins(conf, 4), [0, 0, 1, 2, 3, 3, 3])


def test_classification_on_predictive_of_particles():
    # Predictive of PARTICLES with equal weights: [[0.7, 0.3], [0.4, 0.6]], labels [0, 0].
    logp_mix = metrics.predictive_log_probs(logp(PARTICLES), jnp.zeros(2))
    m = metrics.classification_metrics(logp_mix, jnp.array([0, 0]))
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["nll"] == pytest.approx(-(np.log(0.7) + np.log(0.4)) / 2, rel=1e-5)
    assert m["brier"] == pytest.approx((2 * 0.3**2 + 2 * 0.6**2) / 2, rel=1e-5)


# ---------------------------------------------------------------------------- regression


def _normal_logpdf(y, mu, sigma):
    return -0.5 * np.log(2 * np.pi * sigma**2) - 0.5 * ((y - mu) / sigma) ** 2


def test_regression_metrics_against_direct_computation():
    rng = np.random.default_rng(0)
    J, n, noise = 5, 40, 0.3
    means = rng.normal(size=(J, n))
    y = rng.normal(size=n)
    log_w = rng.normal(size=J) + 50.0  # unnormalised
    m = metrics.regression_metrics(
        jnp.asarray(means, jnp.float32), jnp.asarray(log_w, jnp.float32), jnp.asarray(y), noise
    )
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    pred = w @ means
    rmse = np.sqrt(np.mean((pred - y) ** 2))
    mix = np.sum(w[:, None] * np.exp(_normal_logpdf(y[None], means, noise)), axis=0)
    assert m["rmse"] == pytest.approx(rmse, rel=1e-5)
    assert m["nll"] == pytest.approx(-np.mean(np.log(mix)), rel=1e-5)
    assert all(isinstance(v, float) for v in m.values())


def test_regression_metrics_small_by_hand_and_dropped_particles():
    means = np.array([[0.0, 1.0], [2.0, 1.0], [np.nan, np.nan]])  # J=3 (last dropped), n=2
    y = np.array([1.0, 0.0])
    log_w = np.array([np.log(0.25), np.log(0.75), NEG_INF])
    m = metrics.regression_metrics(jnp.asarray(means), jnp.asarray(log_w), jnp.asarray(y), 0.5)
    # pred = [0.25*0 + 0.75*2, 1] = [1.5, 1]; rmse = sqrt((0.5^2 + 1^2) / 2) = sqrt(0.625).
    assert m["rmse"] == pytest.approx(np.sqrt(0.625), rel=1e-6)
    # Example 1: |y - mu| = 1 for both particles; example 2: |y - mu| = 1 for both. So the
    # mixture density is N(1; 0, 0.25) for each and nll = 0.5 log(2 pi 0.25) + 0.5 * 4.
    assert m["nll"] == pytest.approx(0.5 * np.log(2 * np.pi * 0.25) + 2.0, rel=1e-6)


# ---------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize("particle_map", ["vmap", "unroll"])
def test_many_draws_are_evaluated_in_groups_with_the_same_outputs(monkeypatch, particle_map):
    """A pooled cloud (final sweeps, SG-MCMC draws) is evaluated a group of draws per jitted
    call, so its memory does not grow with the number of draws; the outputs are each draw's."""
    from bnn_bench import evaluate
    from bnn_bench.models import MLP
    from bnn_bench.posterior import make_posterior

    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 3)).astype(np.float32)
    post = make_posterior(MLP((4,), 3), jnp.asarray(x), likelihood="categorical", prior_std=1.0)
    draws = post.sample_prior(jax.random.key(0), 11)
    one_by_one = np.stack(
        [
            np.asarray(jax.nn.log_softmax(post.apply(d, jnp.asarray(x[:12]))))
            for d in np.asarray(draws)
        ]
    )
    shapes = []
    real = evaluate._chunk_outputs
    monkeypatch.setattr(
        evaluate,
        "_chunk_outputs",
        lambda apply, p, *a, **k: shapes.append(p.shape[0]) or real(apply, p, *a, **k),
    )
    monkeypatch.setitem(evaluate.DRAWS_PER_CALL, particle_map, 4)
    out = evaluate.particle_outputs(post, draws, x[:12], eval_chunk=5, particle_map=particle_map)
    assert out.shape == (11, 12, 3)
    np.testing.assert_allclose(np.asarray(out), one_by_one, rtol=1e-5, atol=1e-6)
    assert max(shapes) == 4 and sum(shapes) == 11 * 3  # 3 groups (4, 4, 3) x 3 row chunks
