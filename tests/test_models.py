"""Model registry: exact parameter counts, layouts, and the prior's fan-in scaling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnn_bench.errors import ConfigError
from bnn_bench.models import build_model, model_layout
from bnn_bench.posterior import make_log_target, make_posterior


@pytest.mark.parametrize(("name", "count"), [("lenet5", 61_706), ("cnn", 96_658)])
def test_paper_models_have_the_papers_parameter_counts(name, count):
    post = make_posterior(build_model(name, 10), jnp.zeros((1, 28, 28, 1)))
    assert post.dim == count
    assert model_layout(name) == "image"


def test_mlp_and_linear_counts():
    assert make_posterior(build_model("mlp", 10, hidden=[32]), jnp.zeros((1, 64))).dim == (
        64 * 32 + 32 + 32 * 10 + 10
    )
    assert make_posterior(build_model("linear", 3), jnp.zeros((1, 5))).dim == 18


def test_lenet5_runs_on_28x28_and_cnn_on_8x8():
    post = make_posterior(build_model("lenet5", 10), jnp.zeros((1, 28, 28, 1)))
    theta = post.sample_prior(jax.random.key(0), 1)[0]
    assert post.apply(theta, jnp.zeros((3, 28, 28, 1))).shape == (3, 10)
    cnn = make_posterior(build_model("cnn", 10), jnp.zeros((1, 8, 8, 1)))
    assert cnn.apply(cnn.sample_prior(jax.random.key(0), 1)[0], jnp.zeros((2, 8, 8, 1))).shape == (
        2,
        10,
    )


def test_unknown_model():
    with pytest.raises(ConfigError, match="model=resnet"):
        build_model("resnet", 10)


def test_fan_in_prior_scales_each_layer():
    post = make_posterior(
        build_model("mlp", 10, hidden=[32]), jnp.zeros((1, 64)), prior_std=2.0, prior_scale="fan_in"
    )
    stds = np.unique(np.round(np.asarray(post.prior_std), 6))
    np.testing.assert_allclose(sorted(stds), sorted([2 / np.sqrt(64), 2 / np.sqrt(32)]), rtol=1e-5)
    flat = make_posterior(build_model("mlp", 10, hidden=[32]), jnp.zeros((1, 64)), prior_std=2.0)
    assert flat.prior_std.min() == flat.prior_std.max() == 2.0


def test_log_prior_and_scaled_likelihood():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(10, 4)), jnp.float32)
    y = jnp.arange(10) % 3
    post = make_posterior(build_model("linear", 3), x, prior_std=0.5)
    theta = post.sample_prior(jax.random.key(1), 1)[0]
    expected = -0.5 * np.sum(np.asarray(theta) ** 2 / 0.25) - 15 * np.log(2 * np.pi * 0.25) / 2
    assert float(post.log_prior(theta)) == pytest.approx(expected, rel=1e-5)
    lt = make_log_target(post, 10)
    ll = post.log_likelihood(theta, x, y)
    mask = jnp.arange(10) < 4  # first 4 rows real: scaled by N / |B| = 10 / 4
    value = float(lt(theta, x, y, mask, 4))
    assert value == pytest.approx(float(post.log_prior(theta) + 2.5 * ll[:4].sum()), rel=1e-5)


def test_bf16_compute_keeps_float32_weights_and_agrees_with_float32():
    x = jax.random.normal(jax.random.key(0), (64, 28, 28, 1))
    y = jnp.arange(64) % 10
    model = build_model("lenet5", 10)
    f32 = make_posterior(model, x, prior_scale="fan_in")
    bf16 = make_posterior(model, x, prior_scale="fan_in", compute_dtype="bf16")
    theta = f32.sample_prior(jax.random.key(1), 1)[0]

    def vg(post):
        lt = make_log_target(post, 64)
        return jax.value_and_grad(lt)(theta, x, y, jnp.ones(64, bool), jnp.asarray(64))

    (v32, g32), (v16, g16) = vg(f32), vg(bf16)
    assert g16.dtype == jnp.float32 and g16.shape == g32.shape
    assert float(v16) == pytest.approx(float(v32), rel=2e-2)
    cos = float(jnp.dot(g16, g32) / (jnp.linalg.norm(g16) * jnp.linalg.norm(g32)))
    assert cos > 0.99  # the same direction up to bfloat16 rounding


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "vit_tiny"])
@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
def test_large_models_build_and_run_on_both_input_shapes(name, shape):
    model = build_model(name, 10)
    assert model_layout(name) == "image"
    x = jax.random.normal(jax.random.key(1), (2, *shape))
    params = jax.jit(model.init)(jax.random.key(0), x[:1])
    count = sum(p.size for p in jax.tree.leaves(params))
    # ResNet-18 (CIFAR stem, GroupNorm): 11.17M; ViT-Ti with 4x4 patches: 5.35-5.36M
    expected = {"resnet18": 11_172_810, "vit_tiny": 5_353_738}[name]
    assert abs(count - expected) < 0.002 * expected
    out = jax.jit(model.apply)(params, x)
    assert out.shape == (2, 10) and bool(jnp.all(jnp.isfinite(out)))
