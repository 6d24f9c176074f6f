"""Log-prior, per-example log-likelihood and the batch log-target over flattened weights.

theta is the model's parameter pytree flattened with `jax.flatten_util.ravel_pytree`. The batch
log-target is l_B(theta) = log p(theta) + (N / |B|) * sum_{i in B} log p(y_i | x_i, theta), where
|B| is the TRUE batch size, passed as a traced value (batches are padded to buckets with a mask).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from bnn_bench.errors import ConfigError

LIKELIHOODS = ("categorical", "gaussian")
PRIOR_SCALES = ("none", "fan_in")


@dataclass(frozen=True)
class Posterior:
    """Everything inference needs about a model: pure functions of a flat weight vector."""

    dim: int
    prior_std: jax.Array  # (D,) per-weight prior standard deviation
    apply: Callable[[jax.Array, jax.Array], jax.Array]  # theta, x -> network outputs (n, K)
    log_prior: Callable[[jax.Array], jax.Array]  # theta -> scalar
    log_likelihood: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]  # -> (n,) per example
    unravel: Callable[[jax.Array], dict]
    likelihood: str
    noise_std: float

    def sample_prior(self, rng_key: jax.Array, num: int) -> jax.Array:
        """Draw `num` weight vectors from the prior: shape (num, D)."""
        return jax.random.normal(rng_key, (num, self.dim)) * self.prior_std


def make_posterior(
    model: nn.Module,
    example_x: jax.Array,
    *,
    likelihood: str = "categorical",
    noise_std: float = 1.0,
    prior_std: float = 1.0,
    prior_scale: str = "none",
    compute_dtype: str = "float32",
) -> Posterior:
    """Build the flat-weight posterior pieces for `model` on inputs shaped like `example_x`.

    `compute_dtype="bf16"` runs the network (weights and inputs cast) in bfloat16 while the
    weights themselves, the prior and the log-likelihood reduction stay in float32.
    """
    if likelihood not in LIKELIHOODS:
        raise ConfigError(
            f"likelihood={likelihood} is not a likelihood; choose one of: {', '.join(LIKELIHOODS)}"
        )
    if prior_scale not in PRIOR_SCALES:
        raise ConfigError(
            f"prior.scale={prior_scale} is not allowed; choose one of: {', '.join(PRIOR_SCALES)}"
        )
    if not prior_std > 0:
        raise ConfigError(f"prior.std={prior_std} is not allowed; it must be > 0")
    if likelihood == "gaussian" and not noise_std > 0:
        raise ConfigError(f"likelihood.noise_std={noise_std} is not allowed; it must be > 0")

    params = init_params(model, example_x[:1])
    theta0, unravel = ravel_pytree(params)
    std_tree = _prior_std_tree(params, prior_std, prior_scale)
    std_vec = ravel_pytree(std_tree)[0].astype(theta0.dtype)
    inv_var = 1.0 / std_vec**2
    log_norm = -0.5 * jnp.sum(jnp.log(2 * jnp.pi * std_vec**2))

    if compute_dtype == "bf16":

        def apply(theta, x):
            params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), unravel(theta))
            return model.apply(params, x.astype(jnp.bfloat16)).astype(theta.dtype)

    else:

        def apply(theta, x):
            return model.apply(unravel(theta), x)

    def log_prior(theta):
        return log_norm - 0.5 * jnp.sum(theta**2 * inv_var)

    if likelihood == "categorical":

        def log_likelihood(theta, x, y):
            logp = jax.nn.log_softmax(apply(theta, x))
            return jnp.take_along_axis(logp, y[:, None].astype(jnp.int32), axis=1)[:, 0]

    else:
        c = -math.log(noise_std) - 0.5 * math.log(2 * math.pi)

        def log_likelihood(theta, x, y):
            mean = apply(theta, x)[:, 0]
            return c - 0.5 * ((y - mean) / noise_std) ** 2

    return Posterior(
        dim=int(theta0.size),
        prior_std=std_vec,
        apply=apply,
        log_prior=log_prior,
        log_likelihood=log_likelihood,
        unravel=unravel,
        likelihood=likelihood,
        noise_std=float(noise_std),
    )


@dataclass(frozen=True)
class LogTarget:
    """l_B(theta, x_b, y_b, mask, batch_size): log-prior + N/|B| * masked batch log-likelihood.

    `batch_size` is the true |B| (a traced scalar); padded rows have mask 0 and add nothing.
    With `terms=True` it returns (l_B, per-example log-likelihoods, 0 on padded rows), the form
    jax.value_and_grad(..., has_aux=True) takes. The two parts are exposed separately
    (`log_prior`, `likelihood_part`) so that a gradient can be summed over chunks of the batch
    (`inference.smc.sampler.batch_value_and_grad`). Hashable: a static argument of jitted steps.
    """

    log_prior: Callable[[jax.Array], jax.Array]
    log_likelihood: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
    num_data: int
    terms: bool = False

    def likelihood_part(self, theta, x, y, mask, batch_size):
        """N/|B| * sum of the masked per-example log-likelihoods over these rows (+ the terms)."""
        ll = jnp.where(mask, self.log_likelihood(theta, x, y), 0.0)
        value = (self.num_data / batch_size) * jnp.sum(ll)
        return (value, ll) if self.terms else value

    def __call__(self, theta, x, y, mask, batch_size):
        part = self.likelihood_part(theta, x, y, mask, batch_size)
        if self.terms:
            return self.log_prior(theta) + part[0], part[1]
        return self.log_prior(theta) + part


def make_log_target(posterior: Posterior, num_data: int, *, terms: bool = False) -> LogTarget:
    """The batch log-target l_B of `posterior` on a data set of `num_data` rows (see LogTarget)."""
    return LogTarget(posterior.log_prior, posterior.log_likelihood, num_data, terms)


def init_params(model: nn.Module, example_x: jax.Array):
    """The model's parameters on inputs shaped like `example_x`; ValueError (one line) when the
    model cannot take such inputs or has a layer with no weights (a width or input of size 0)."""
    if 0 in example_x.shape[1:]:
        raise ValueError(f"its inputs of shape {example_x.shape[1:]} have no features")
    try:
        params = model.init(jax.random.key(0), example_x)
    except ZeroDivisionError as exc:  # an initialiser's fan-in of 0
        raise ValueError(
            "a layer has no inputs (every layer width and input dimension must be >= 1)"
        ) from exc
    except (TypeError, ValueError, IndexError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{type(exc).__name__}: {first[:300]}") from exc
    empty = [
        (jax.tree_util.keystr(path), leaf.shape)
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
        if leaf.size == 0
    ]
    if empty:
        where, shape = empty[0]
        raise ValueError(
            f"its parameter {where} has shape {shape}: a layer has no weights (every layer "
            "width and input dimension must be >= 1)"
        )
    return params


def _prior_std_tree(params, prior_std: float, prior_scale: str):
    """Per-leaf prior std: constant, or std / sqrt(fan_in) for each leaf of a kernel layer."""
    if prior_scale == "none":
        return jax.tree.map(lambda p: jnp.full_like(p, prior_std), params)

    def scale_layer(layer):
        if isinstance(layer, dict) and "kernel" in layer:
            fan_in = math.prod(layer["kernel"].shape[:-1])
            s = prior_std / math.sqrt(fan_in)
            return {
                k: jax.tree.map(lambda p, s=s: jnp.full_like(p, s), v) for k, v in layer.items()
            }
        if isinstance(layer, dict):
            return {k: scale_layer(v) for k, v in layer.items()}
        return jnp.full_like(layer, prior_std)

    return scale_layer(jax.tree.map(lambda p: p, params))
