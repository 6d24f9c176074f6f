"""Fidelity metrics (agreement, total variation, W2) and reference.npz, checked by hand."""

import numpy as np
import pytest
from scipy.stats import norm

from bnn_bench import metrics
from bnn_bench import reference as ref

A = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
B = np.array([[0.5, 0.4, 0.1], [0.2, 0.3, 0.5]])


def test_agreement_by_hand():
    # row 0: top class 0 in both; row 1: 1 vs 2
    assert metrics.agreement(A, B) == 0.5
    assert metrics.agreement(A, A) == 1.0
    assert metrics.agreement(np.log(A), B) == 0.5  # log-probabilities have the same argmax


def test_total_variation_by_hand():
    # row 0: (0.2 + 0.2 + 0) / 2 = 0.2; row 1: (0.1 + 0.3 + 0.2) / 2 = 0.3
    assert metrics.total_variation(A, B) == pytest.approx(0.25)
    assert metrics.total_variation(B, A) == pytest.approx(0.25)
    assert metrics.total_variation(A, A) == 0.0
    one_hot = np.array([[1.0, 0.0, 0.0]])
    assert metrics.total_variation(one_hot, one_hot[:, ::-1]) == 1.0


def test_shapes_must_match():
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.total_variation(A, B[:1])


@pytest.mark.parametrize(
    ("a", "b", "wa", "expected"),
    [
        ([0.0, 1.0], [0.0, 3.0], None, np.sqrt(2.0)),  # sorted pairs: (0-0)^2, (1-3)^2
        ([1.0, 0.0], [3.0, 0.0], None, np.sqrt(2.0)),  # order within a row does not matter
        ([0.0], [1.0, 3.0], None, np.sqrt(5.0)),  # 0.5 * 1 + 0.5 * 9
        ([0.0, 10.0], [0.0], [0.75, 0.25], 5.0),  # 0.25 * 100
        ([0.0, 1.0, 2.0], [0.0, 1.0, 2.0], None, 0.0),
        ([0.0, 2.0], [0.0, 1.0, 2.0], None, np.sqrt(1 / 3)),  # middle third: 0 vs 1
    ],
)
def test_w2_samples_by_hand(a, b, wa, expected):
    got = metrics.w2_samples(np.array([a]), np.array([b]), weights=wa)
    assert got[0] == pytest.approx(expected)


def test_w2_of_two_gaussians():
    """Quantile draws of N(1, 2^2) and N(-0.5, 0.5^2): W2 = sqrt(1.5^2 + 1.5^2)."""
    u_a, u_b = (np.arange(4000) + 0.5) / 4000, (np.arange(3000) + 0.5) / 3000
    a = 1.0 + 2.0 * norm.ppf(u_a)
    b = -0.5 + 0.5 * norm.ppf(u_b)
    exact = metrics.w2_gaussian(1.0, 2.0, -0.5, 0.5)
    assert exact == pytest.approx(np.sqrt(4.5))
    assert metrics.w2_samples(a[None], b[None])[0] == pytest.approx(exact, rel=2e-3)
    assert metrics.w2_samples(a[None], a[None, ::-1])[0] == pytest.approx(0.0, abs=1e-12)
    # a mean shift alone is the W2 distance
    assert metrics.w2_samples(a[None], a[None] + 0.3)[0] == pytest.approx(0.3)


def test_fidelity_dispatch():
    r = ref.Reference({}, B.astype(np.float32), None, {})
    out = metrics.fidelity(A, r)
    assert out["agreement"] == 0.5 and out["total_variation"] == pytest.approx(0.25)
    r = ref.Reference({}, None, np.array([[0.0, 3.0]]), {})
    assert metrics.fidelity(np.array([[0.0, 1.0]]), r)["w2"] == pytest.approx(np.sqrt(2.0))


# --- reference.npz -------------------------------------------------------------------------------


def _ident(**changes):
    x, y = np.arange(12, dtype=np.float32).reshape(4, 3), np.array([0, 1, 1, 0])
    fields = dict(
        dataset="digits", x_test=x, y_test=y, model="mlp hidden=[32]", prior="p", likelihood="c"
    )
    fields.update(changes)
    return ref.identity(**fields)


def test_reference_round_trip(tmp_path):
    ident = _ident()
    probs = np.full((4, 2), 0.5, np.float32)
    path = ref.write(tmp_path / "r.npz", ident, probs=probs, diagnostics={"rhat_max": 1.01})
    back = ref.read(path)
    assert back.identity == ident and back.task == "classification"
    np.testing.assert_array_equal(back.probs, probs)
    assert back.diagnostics == {"rhat_max": 1.01}
    assert ref.mismatch(back.identity, ident) is None
    with np.load(path, allow_pickle=False) as z:  # plain arrays only
        assert str(z["dataset"]) == "digits" and z["probs"].dtype == np.float32


def test_mismatch_names_the_field():
    ident = _ident()
    other = _ident(x_test=np.zeros((4, 3), np.float32))
    line = ref.mismatch(ident, other)
    assert line.startswith("x_test_sha256 differs")
    assert ref.mismatch(ident, _ident(model="mlp hidden=[64]")).startswith("model differs")
    assert "n_test differs" in ref.mismatch(
        ident, _ident(x_test=np.zeros((3, 3)), y_test=np.zeros(3, int))
    )


def test_identity_hash_ignores_layout_but_not_values():
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    assert ref.array_sha256(x, np.float32) == ref.array_sha256(np.asfortranarray(x), np.float32)
    assert ref.array_sha256(x, np.float32) != ref.array_sha256(x + 1e-3, np.float32)


def test_reference_refuses_bad_input(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        ref.write(tmp_path / "r.npz", _ident())
    np.savez(tmp_path / "plain.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a reference"):
        ref.read(tmp_path / "plain.npz")
    with pytest.raises(ValueError, match="no such file"):
        ref.read("no_such_reference")


def test_exact_linear_predictive_is_the_posterior_of_the_target():
    """scripts/make_reference.py --exact: its closed form has the MAP (= posterior mean) of the
    very Posterior bnn-bench builds, and its std shrinks with more data."""
    import sys

    import jax
    import jax.numpy as jnp

    from bnn_bench.inference import ensemble
    from bnn_bench.models import Linear
    from bnn_bench.posterior import make_log_target, make_posterior
    from tests.conftest import REPO

    sys.path.insert(0, str(REPO / "scripts"))
    from make_reference import linear_gaussian_predictive

    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 3)).astype(np.float32)
    y = (x @ [1.0, -1.0, 0.5] + 0.3 * rng.normal(size=80)).astype(np.float32)
    post = make_posterior(
        Linear(1),
        jnp.asarray(x),
        likelihood="gaussian",
        noise_std=0.3,
        prior_std=0.5,
        prior_scale="fan_in",
    )
    probe = rng.normal(size=(5, 3)).astype(np.float32)
    mean, std = linear_gaussian_predictive(post, x, y, probe)
    cfg = ensemble.EnsembleConfig(1, 2000, 80, 0.02, "cosine")
    state = ensemble.init(jax.random.key(0), post.prior_std, cfg, 2000)
    state, _ = ensemble.run_chunk(
        jax.random.key(1),
        state,
        jnp.asarray(x),
        jnp.asarray(y),
        log_target=make_log_target(post, 80),
        config=cfg,
        total_steps=2000,
        num=2000,
    )
    map_pred = np.asarray(post.apply(state.params[0], jnp.asarray(probe))[:, 0])
    np.testing.assert_allclose(mean, map_pred, atol=2e-3)
    _, std_half = linear_gaussian_predictive(post, x[:20], y[:20], probe)
    assert np.all(std < std_half) and np.all(std > 0)
