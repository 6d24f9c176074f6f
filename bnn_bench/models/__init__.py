"""Flax models and a name registry: `build_model(name, ...)` returns a module; layouts per name."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import flax.linen as nn
import jax.numpy as jnp

from bnn_bench.errors import ConfigError


class Linear(nn.Module):
    """Affine map: logistic/softmax regression or Bayesian linear regression."""

    num_outputs: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.num_outputs)(x.reshape((x.shape[0], -1)))


class MLP(nn.Module):
    """Fully connected network with tanh hidden layers (smooth, so HMC gradients behave)."""

    hidden: Sequence[int]
    num_outputs: int

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        for width in self.hidden:
            x = jnp.tanh(nn.Dense(width)(x))
        return nn.Dense(self.num_outputs)(x)


class LeNet5(nn.Module):
    """LeNet-5 (61,706 parameters on 28x28x1): conv6 5x5 same, pool, conv16 5x5, pool, 120-84."""

    num_outputs: int = 10

    @nn.compact
    def __call__(self, x):
        x = jnp.tanh(nn.Conv(6, (5, 5), padding="SAME")(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = jnp.tanh(nn.Conv(16, (5, 5), padding="VALID")(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = jnp.tanh(nn.Dense(120)(x))
        x = jnp.tanh(nn.Dense(84)(x))
        return nn.Dense(self.num_outputs)(x)


class CNN(nn.Module):
    """The SMC paper's FashionMNIST CNN (96,658 parameters on 28x28x1): conv8, conv16, dense 120."""

    num_outputs: int = 10

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), padding="SAME")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(16, (3, 3), padding="SAME")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(120)(x))
        return nn.Dense(self.num_outputs)(x)


@dataclass(frozen=True)
class ModelSpec:
    """How to build a registered model and which input layout it wants ("flat" or "image")."""

    build: Callable[..., nn.Module]
    layout: str


MODELS: dict[str, ModelSpec] = {
    "linear": ModelSpec(lambda num_outputs, **_: Linear(num_outputs), "flat"),
    "mlp": ModelSpec(
        lambda num_outputs, hidden=(64,), **_: MLP(tuple(hidden), num_outputs), "flat"
    ),
    "lenet5": ModelSpec(lambda num_outputs, **_: LeNet5(num_outputs), "image"),
    "cnn": ModelSpec(lambda num_outputs, **_: CNN(num_outputs), "image"),
}


def model_layout(name: str) -> str:
    """Input layout the model expects: "flat" (n, d) or "image" (n, H, W, C)."""
    return _spec(name).layout


def build_model(name: str, num_outputs: int, **options) -> nn.Module:
    """Instantiate a registered model; options are model-specific (e.g. hidden for mlp)."""
    return _spec(name).build(num_outputs, **options)


def _spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ConfigError(f"model={name} is not a model; choose one of: {', '.join(MODELS)}")
    return MODELS[name]
