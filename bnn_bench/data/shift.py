"""Covariate shift of the test inputs, computed on the fly chunk by chunk.

- rotation by `angle` degrees (counter-clockwise, the rotated-MNIST protocol): linear
  interpolation, the image size kept, the corners filled with the background (raw 0) pixel;
  rotating the normalised inputs equals normalising the rotated raw ones, since linear
  interpolation is affine-equivariant, and rotating by 0 returns the test inputs unchanged;
- corruptions at severities 1-5, applied to the raw pixels in [0, 1] and clipped to [0, 1]:
  `gaussian_noise` (additive, std CORRUPTIONS["gaussian_noise"][s-1]), `blur` (a Gaussian
  filter of std given in pixels of a 28x28 image, scaled with the image size) and `contrast`
  (each image's deviation from its mean scaled by the severity's factor); the values follow
  the ImageNet-C/MNIST-C corruptions. Each row's noise is drawn from a generator seeded by
  SHIFT_SEED, the severity and the row's index, so every run (whatever its eval_chunk) sees the
  same shifted inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bnn_bench.data.ood import normalise

SHIFT_SEED = 0
CORRUPTIONS = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "blur": (0.5, 1.0, 1.5, 2.0, 2.5),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
}
SEVERITIES = (1, 2, 3, 4, 5)


def rotate(images: np.ndarray, angle: float, fill: float) -> np.ndarray:
    """Images (n, H, W, C) rotated by `angle` degrees about their centre, corners = `fill`."""
    from scipy import ndimage

    out = ndimage.rotate(
        images, angle, axes=(1, 2), reshape=False, order=1, mode="constant", cval=fill
    )
    return out.astype(images.dtype)


def corrupt(raw: np.ndarray, name: str, severity: int, start: int = 0) -> np.ndarray:
    """Raw images (n, H, W, C) in [0, 1], rows `start`.. of the test set, corrupted by `name`
    at `severity` (1-5), in [0, 1]. Row i's noise comes from its own generator (SHIFT_SEED,
    severity, start + i), so it does not depend on how the rows are chunked."""
    from scipy import ndimage

    level = CORRUPTIONS[name][severity - 1]
    raw = raw.astype(np.float64)
    if name == "gaussian_noise":
        noise = [
            np.random.default_rng([SHIFT_SEED, severity, start + i]).normal(
                0.0, level, raw.shape[1:]
            )
            for i in range(len(raw))
        ]
        out = raw + np.stack(noise)
    elif name == "blur":
        sigma = level * raw.shape[1] / 28
        out = ndimage.gaussian_filter(raw, sigma=(0, sigma, sigma, 0), mode="constant")
    else:  # contrast
        mean = raw.mean(axis=(1, 2, 3), keepdims=True)
        out = (raw - mean) * level + mean
    return np.clip(out, 0.0, 1.0)


def denormalise(x: np.ndarray, stats: dict) -> np.ndarray:
    """Standardised inputs -> raw inputs (the inverse of ood.normalise, global stats only)."""
    if stats["inputs"] == "none":
        return np.asarray(x, np.float64)
    return x.astype(np.float64) * float(stats["x_std"]) + float(stats["x_mean"])


def shift_transform(
    kind: str, level: float, image: tuple[int, int, int], stats: dict, fill: float
) -> Callable[[np.ndarray, int], np.ndarray]:
    """transform(x, start): test inputs x (in the data layout, rows from `start`) shifted by
    `kind` (rotation or a corruption) at `level` (an angle or a severity)."""

    def transform(x: np.ndarray, start: int) -> np.ndarray:
        images = x.reshape(len(x), *image)
        if kind == "rotation":
            out = rotate(images, level, fill)
        else:
            raw = corrupt(denormalise(images, stats), kind, int(level), start)
            out = normalise(raw, stats)
        return out.reshape(x.shape)

    return transform
