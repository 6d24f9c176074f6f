"""Out-of-distribution input sets, streamed in chunks and normalised like the test inputs.

Built in (all offline, from a fixed generator OOD_SEED, so every run sees the same inputs), as
images of the in-distribution size (8x8 for digits, 28x28 for mnist and fashion_mnist, an image
npz's own size), pixel values in [0, 1] before normalisation:
- `digits28`: scikit-learn's 1797 digits, upscaled (linear) to 20x20 and padded by 4 pixels to
  28x28 like MNIST's digits (MNIST-like digits, the classic OOD set of FashionMNIST); refused for
  dataset=digits, whose test inputs they are;
- `sample_patches`: 28x28 grey patches of scikit-learn's two sample images (natural images),
  resized to the in-distribution size;
- `uniform_noise`: pixels uniform on [0, 1];
- `gaussian_noise`: pixels normal with the training pixels' mean and std, clipped to [0, 1].
The generated sets have as many inputs as the test set. An npz OOD set (any other entry: a path
ending in .npz) holds `x` in the dataset's own units (digits 0..16, mnist and fashion_mnist
0..255, an npz dataset its file's units), one row per input, each of the in-distribution shape
(`expected_shape`); it is read row-chunk by row-chunk from the file, never whole.

Normalisation: the statistics the in-distribution inputs were standardised with (the dataset's
`standardization` record where it has one; else, for digits/mnist/fashion_mnist, whose training
pixels span exactly [0, 1], the affine map recovered from the training set's min and max; for an
npz dataset, recomputed from its file as the loader does).
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bnn_bench.errors import ConfigError, DataError

BUILTIN_OOD = ("digits28", "sample_patches", "uniform_noise", "gaussian_noise")
OOD_SEED = 0
# the raw image size of the built-in image datasets, and their source units per pixel value 1
IMAGE_SHAPES = {"digits": (8, 8), "mnist": (28, 28), "fashion_mnist": (28, 28)}
SOURCE_SCALE = {"digits": 16.0, "mnist": 255.0, "fashion_mnist": 255.0}


@dataclass(frozen=True)
class InputSet:
    """An input set of `n` rows; `chunks(size)` yields them normalised, in the data layout."""

    name: str
    n: int
    chunks: Callable[[int], Iterator[np.ndarray]]


# --- normalisation -------------------------------------------------------------------------------


def input_statistics(data, *, path: str | None = None, test_fraction: float = 0.2) -> dict:
    """{"inputs": global|per_feature|none, "x_mean", "x_std"}: how `data`'s inputs were
    standardised (see the module docstring)."""
    recorded = getattr(data, "standardization", None)
    if recorded and recorded.get("inputs") in ("global", "per_feature", "none"):
        return {k: recorded.get(k) for k in ("inputs", "x_mean", "x_std")}
    if data.name in IMAGE_SHAPES:
        lo, hi = float(data.x_train.min()), float(data.x_train.max())
        std = 1.0 / (hi - lo)
        return {"inputs": "global", "x_mean": -lo * std, "x_std": std}
    if data.name == "npz" and path:
        return _npz_statistics(Path(path).expanduser(), test_fraction)
    return {"inputs": "none", "x_mean": None, "x_std": None}


def _npz_statistics(file: Path, test_fraction: float) -> dict:
    from bnn_bench.data.datasets import _load_npz, _split

    arrays = _load_npz(file)
    x = arrays["x"].astype(np.float64)
    if "x_test" not in arrays:
        x = _split(x, arrays["y"], test_fraction, str(file))[0]
    if x.ndim <= 2:
        x = x.reshape(len(x), -1)
        return {
            "inputs": "per_feature",
            "x_mean": x.mean(axis=0).tolist(),
            "x_std": np.maximum(x.std(axis=0), 1e-8).tolist(),
        }
    return {"inputs": "global", "x_mean": float(x.mean()), "x_std": max(float(x.std()), 1e-8)}


def normalise(x: np.ndarray, stats: dict) -> np.ndarray:
    """Raw inputs (n, ...) -> the standardised float32 inputs, as the test inputs were made."""
    if stats["inputs"] == "none":
        return np.asarray(x, np.float32)
    mean = np.asarray(stats["x_mean"], np.float64)
    std = np.asarray(stats["x_std"], np.float64)
    if stats["inputs"] == "per_feature":
        flat = x.reshape(len(x), -1).astype(np.float64)
        return ((flat - mean) / std).astype(np.float32).reshape(x.shape)
    return ((x.astype(np.float32) - np.float32(mean)) * np.float32(1.0 / std)).astype(np.float32)


def background(stats: dict) -> float:
    """The normalised value of a raw 0 pixel (what a rotation fills the corners with)."""
    if stats["inputs"] != "global":
        return 0.0
    return float((0.0 - stats["x_mean"]) / stats["x_std"])


# --- shapes --------------------------------------------------------------------------------------


def image_shape(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    """(H, W, C) of the dataset's inputs, or None for tabular inputs."""
    if len(input_shape) == 3:
        return tuple(input_shape)
    if name in IMAGE_SHAPES:
        return (*IMAGE_SHAPES[name], 1)
    return None


def expected_shape(dataset: str, dataset_path: str | None, dim: int = 5) -> tuple[int, ...]:
    """The shape of one raw input of `dataset` (before layout), read from headers only."""
    if dataset in IMAGE_SHAPES:
        return IMAGE_SHAPES[dataset]
    if dataset == "npz" and dataset_path:
        shape = npz_array_shape(Path(dataset_path).expanduser(), "x")
        return shape[1:] if shape and len(shape) > 1 else (1,)
    return (dim,)


def accepted_shapes(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Per-row shapes an OOD `x` may have: the shape, (prod,) flat, and (H, W, 1) for (H, W)."""
    shapes = [tuple(shape), (int(np.prod(shape)),)]
    if len(shape) == 2:
        shapes.append((*shape, 1))
    return list(dict.fromkeys(shapes))


def npz_array_shape(file: Path, key: str) -> tuple[int, ...] | None:
    """The shape of array `key` of an npz, from its .npy header only (None if unreadable)."""
    try:
        with zipfile.ZipFile(file) as z, z.open(f"{key}.npy") as fh:
            shape, _, _ = _read_header(fh)
            return shape
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def _read_header(fh):
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    return np.lib.format.read_array_header_2_0(fh)


def check_ood_file(spec: str, expected: tuple[int, ...]) -> None:
    """Refuse an OOD npz that is missing, has no `x`, or whose rows are not `expected`-shaped,
    with one line naming the file and the expected shape."""
    file = Path(spec).expanduser()
    want = "(n, " + ", ".join(map(str, expected)) + ")"
    if not file.is_file():
        raise DataError(f"evaluation.ood={spec}: no such file (expected an .npz with x {want})")
    try:
        with zipfile.ZipFile(file) as z:
            names = z.namelist()
            if "x.npy" not in names:
                found = ", ".join(n.removesuffix(".npy") for n in names) or "none"
                raise DataError(f"{file}: has no array 'x' (found: {found}); expected x {want}")
            with z.open("x.npy") as fh:
                shape, fortran, dtype = _read_header(fh)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{file}: not a readable .npz file ({type(exc).__name__})") from exc
    if len(shape) < 2 or tuple(shape[1:]) not in accepted_shapes(expected) or shape[0] < 1:
        raise DataError(f"{file}: x has shape {shape}, but the OOD inputs must be {want}")
    if fortran or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise DataError(f"{file}: x must be a C-ordered array of integers or floats, not {dtype}")


# --- the sets ------------------------------------------------------------------------------------


def ood_set(spec: str, data, stats: dict, *, dataset_path: str | None = None) -> InputSet:
    """The OOD set `spec` (a built-in name or an npz path) for `data`, normalised by `stats`."""
    shape = image_shape(data.name, data.input_shape)
    if spec not in BUILTIN_OOD:
        return _npz_set(spec, data, stats, dataset_path)
    if shape is None:
        raise ConfigError(
            f"evaluation.ood={spec} is an image set, but dataset={data.name} has tabular inputs; "
            "give an .npz of OOD inputs instead"
        )
    if spec == "digits28" and data.name == "digits":
        raise ConfigError(
            "evaluation.ood=digits28 is not allowed with dataset=digits: those digits are its own "
            f"test inputs; choose from: {', '.join(n for n in BUILTIN_OOD if n != 'digits28')}"
        )
    n = 1797 if spec == "digits28" else len(data.x_test)

    def chunks(size: int) -> Iterator[np.ndarray]:
        for start in range(0, n, size):
            rows = min(size, n - start)
            raw = _builtin_raw(spec, start, rows, shape[:2], stats)
            raw = np.repeat(raw[..., None], shape[2], axis=-1)  # grey to every channel
            yield normalise(raw, stats).reshape(rows, *data.input_shape)

    return InputSet(spec, n, chunks)


def _builtin_raw(spec, start, rows, hw, stats) -> np.ndarray:
    """`rows` raw images (rows, H, W) in [0, 1] of built-in set `spec`, from row `start`; row i
    is drawn from its own generator (OOD_SEED, i), so a set does not depend on the chunking."""
    from scipy import ndimage

    rngs = [np.random.default_rng([OOD_SEED, start + i]) for i in range(rows)]
    if spec == "uniform_noise":
        return np.stack([rng.uniform(0.0, 1.0, hw) for rng in rngs])
    if spec == "gaussian_noise":
        mean, std = _raw_moments(stats)
        return np.clip(np.stack([rng.normal(mean, std, hw) for rng in rngs]), 0.0, 1.0)
    if spec == "digits28":
        from sklearn.datasets import load_digits

        digits = load_digits().images[start : start + rows] / 16.0
        big = np.clip(ndimage.zoom(digits, (1, 2.5, 2.5), order=1), 0.0, 1.0)  # 8 -> 20
        images = np.pad(big, ((0, 0), (4, 4), (4, 4)))
    else:  # sample_patches
        from sklearn.datasets import load_sample_images

        grey = np.stack([im.mean(axis=-1) / 255.0 for im in load_sample_images().images])
        patches = []
        for rng in rngs:
            i = rng.integers(0, len(grey))
            t, s = rng.integers(0, grey.shape[1] - 28 + 1), rng.integers(0, grey.shape[2] - 28 + 1)
            patches.append(grey[i, t : t + 28, s : s + 28])
        images = np.stack(patches)
    if tuple(hw) != (28, 28):
        images = ndimage.zoom(
            images, (1, hw[0] / 28, hw[1] / 28), order=1, grid_mode=True, mode="nearest"
        )
        images = np.clip(images, 0.0, 1.0)
    return images


def _raw_moments(stats: dict) -> tuple[float, float]:
    """The training pixels' mean and std in raw units (0.5, 0.25 when not standardised)."""
    if stats["inputs"] != "global":
        return 0.5, 0.25
    return float(stats["x_mean"]), float(stats["x_std"])


def _npz_set(spec: str, data, stats: dict, dataset_path: str | None) -> InputSet:
    file = Path(spec).expanduser()
    expected = expected_shape(data.name, dataset_path, int(np.prod(data.input_shape)))
    check_ood_file(spec, expected)
    n = npz_array_shape(file, "x")[0]
    scale = SOURCE_SCALE.get(data.name, 1.0)

    def chunks(size: int) -> Iterator[np.ndarray]:
        with zipfile.ZipFile(file) as z, z.open("x.npy") as fh:
            shape, _, dtype = _read_header(fh)
            row_bytes = int(np.prod(shape[1:])) * dtype.itemsize
            for start in range(0, n, size):
                rows = min(size, n - start)
                block = np.frombuffer(fh.read(rows * row_bytes), dtype=dtype)
                raw = block.reshape(rows, *shape[1:]).astype(np.float64) / scale
                if not np.all(np.isfinite(raw)):
                    raise DataError(f"{file}: x must have no NaN or Inf")
                yield normalise(raw, stats).reshape(rows, *data.input_shape)

    return InputSet(spec, n, chunks)
