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


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with GroupNorm, identity or 1x1 projection shortcut."""

    features: int
    stride: int = 1

    @nn.compact
    def __call__(self, x):
        groups = min(32, self.features)
        h = nn.Conv(self.features, (3, 3), self.stride, padding="SAME", use_bias=False)(x)
        h = nn.relu(nn.GroupNorm(num_groups=groups)(h))
        h = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=False)(h)
        h = nn.GroupNorm(num_groups=groups)(h)
        if self.stride != 1 or x.shape[-1] != self.features:
            x = nn.Conv(self.features, (1, 1), self.stride, use_bias=False)(x)
            x = nn.GroupNorm(num_groups=groups)(x)
        return nn.relu(h + x)


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18 (3x3 stem, no max-pool; stages 64-128-256-512, two blocks each).

    GroupNorm instead of BatchNorm: a Bayesian network's weights are one flat vector with no
    running statistics, and GroupNorm has none. Global average pooling makes any input size
    work (28x28x1 and 32x32x3 both give 11.2M parameters, up to the stem's input channels).
    """

    num_outputs: int = 10

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(64, (3, 3), padding="SAME", use_bias=False)(x)
        x = nn.relu(nn.GroupNorm(num_groups=32)(x))
        for i, features in enumerate((64, 128, 256, 512)):
            x = BasicBlock(features, stride=1 if i == 0 else 2)(x)
            x = BasicBlock(features)(x)
        return nn.Dense(self.num_outputs)(jnp.mean(x, axis=(1, 2)))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: multi-head self-attention and a GELU MLP."""

    heads: int
    mlp_dim: int

    @nn.compact
    def __call__(self, x):
        h = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads)(h, h)
        h = nn.LayerNorm()(x)
        h = nn.Dense(x.shape[-1])(nn.gelu(nn.Dense(self.mlp_dim)(h)))
        return x + h


class ViT(nn.Module):
    """Vision Transformer; `vit_tiny` is ViT-Ti (width 192, depth 12, 3 heads, MLP 768) with 4x4
    patches, so 28x28 inputs give 7x7 tokens and 32x32 give 8x8 (plus a class token)."""

    num_outputs: int = 10
    patch: int = 4
    width: int = 192
    depth: int = 12
    heads: int = 3
    mlp_dim: int = 768

    @nn.compact
    def __call__(self, x):
        p = min(self.patch, x.shape[1], x.shape[2])
        x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID")(x)
        n, h, w, c = x.shape
        x = x.reshape((n, h * w, c))
        cls = self.param("cls", nn.initializers.zeros, (1, 1, c))
        x = jnp.concatenate([jnp.broadcast_to(cls, (n, 1, c)), x], axis=1)
        pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1, h * w + 1, c))
        x = x + pos
        for _ in range(self.depth):
            x = EncoderBlock(self.heads, self.mlp_dim)(x)
        return nn.Dense(self.num_outputs)(nn.LayerNorm()(x[:, 0]))


@dataclass(frozen=True)
class ModelSpec:
    """How to build a registered model and which input layout it wants ("flat" or "image")."""

    build: Callable[..., nn.Module]
    layout: str


MODELS: dict[str, ModelSpec] = {
    "linear": ModelSpec(lambda num_outputs, **_: Linear(num_outputs), "flat"),
    "mlp": ModelSpec(lambda num_outputs, hidden, **_: MLP(tuple(hidden), num_outputs), "flat"),
    "lenet5": ModelSpec(lambda num_outputs, **_: LeNet5(num_outputs), "image"),
    "cnn": ModelSpec(lambda num_outputs, **_: CNN(num_outputs), "image"),
    "resnet18": ModelSpec(lambda num_outputs, **_: ResNet18(num_outputs), "image"),
    "vit_tiny": ModelSpec(lambda num_outputs, **_: ViT(num_outputs), "image"),
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
