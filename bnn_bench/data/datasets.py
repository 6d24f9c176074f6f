"""Datasets as plain numpy arrays: train/test split, normalised, in a flat or image layout.

Every dataset is loaded with a fixed split (seed 0), so different run seeds see the same data;
the run seed drives only inference.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bnn_bench.data.idx import read_idx
from bnn_bench.errors import ConfigError, DataError

DATASETS = ("digits", "fashion_mnist", "mnist", "npz", "synthetic_regression")
LAYOUTS = ("flat", "image")
SPLIT_SEED = 0
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class Dataset:
    """Train and test arrays: x float32, y int32 labels or float32 targets."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    task: str  # "classification" | "regression"
    num_classes: int  # 0 for regression

    @property
    def n_train(self) -> int:
        return len(self.x_train)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def load_dataset(
    name: str,
    *,
    layout: str = "flat",
    root: str | None = None,
    path: str | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    task: str | None = None,
    dim: int = 5,
    noise_std: float = 0.5,
) -> Dataset:
    """Load dataset `name` in `layout` ("flat" (n, d) or "image" (n, H, W, C))."""
    if name not in DATASETS:
        raise ConfigError(f"dataset={name} is not a dataset; choose one of: {', '.join(DATASETS)}")
    if layout not in LAYOUTS:
        raise ConfigError(f"layout={layout} is not allowed; choose one of: {', '.join(LAYOUTS)}")
    if not 0 < test_fraction < 1:
        raise ConfigError(
            f"dataset.test_fraction={test_fraction} is not allowed; it must be in (0, 1)"
        )
    if name == "digits":
        data = _digits(test_fraction)
    elif name in ("fashion_mnist", "mnist"):
        data = _idx_dataset(name, root)
    elif name == "npz":
        data = _npz(path, test_fraction, task)
    else:
        data = _synthetic_regression(n_train or 300, n_test or 100, dim, noise_std, seed)
    data = _subset(data, n_train, n_test)
    return _layout(data, layout)


# --- layouts and subsets -------------------------------------------------------------------------


def _layout(d: Dataset, layout: str) -> Dataset:
    def shape(x):
        if layout == "flat":
            return np.ascontiguousarray(x.reshape(len(x), -1), np.float32)
        if x.ndim == 2:
            side = int(round(np.sqrt(x.shape[1])))
            if side * side != x.shape[1]:
                raise ConfigError(
                    f"dataset={d.name} has flat inputs of size {x.shape[1]}, which is not a square "
                    "image; use a model with a flat layout (linear, mlp)"
                )
            x = x.reshape(len(x), side, side, 1)
        elif x.ndim == 3:
            x = x[..., None]
        return np.ascontiguousarray(x, np.float32)

    return Dataset(
        d.name, shape(d.x_train), d.y_train, shape(d.x_test), d.y_test, d.task, d.num_classes
    )


def _subset(d: Dataset, n_train: int | None, n_test: int | None) -> Dataset:
    def take(x, y, n, key):
        if n is None or d.name == "synthetic_regression":
            return x, y
        if not 1 <= n <= len(x):
            raise ConfigError(
                f"dataset.{key}={n} is not allowed; dataset={d.name} has {len(x)} "
                f"{key[2:]} examples (use 1..{len(x)} or null)"
            )
        idx = np.sort(np.random.default_rng(SPLIT_SEED).permutation(len(x))[:n])
        return x[idx], y[idx]

    xtr, ytr = take(d.x_train, d.y_train, n_train, "n_train")
    xte, yte = take(d.x_test, d.y_test, n_test, "n_test")
    return Dataset(d.name, xtr, ytr, xte, yte, d.task, d.num_classes)


def _split(x, y, test_fraction):
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    n_test = max(1, int(round(test_fraction * len(x))))
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[te], y[te]


def _standardise_global(x_train, x_test):
    """One scalar mean/std from the training pixels, so images keep their structure."""
    mean, std = x_train.mean(), max(float(x_train.std()), 1e-8)
    return ((x_train - mean) / std).astype(np.float32), ((x_test - mean) / std).astype(np.float32)


# --- the datasets --------------------------------------------------------------------------------


def _digits(test_fraction: float) -> Dataset:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).reshape(-1, 8, 8).astype(np.float32)
    xtr, ytr, xte, yte = _split(x, y.astype(np.int32), test_fraction)
    xtr, xte = _standardise_global(xtr, xte)
    return Dataset("digits", xtr, ytr, xte, yte, "classification", 10)


def idx_search_dirs(name: str, root: str | None) -> list[Path]:
    """Where the IDX files of `name` are looked for, in order."""
    dirs = []
    if root:
        dirs.append(Path(root).expanduser())
    env = os.environ.get("BNN_BENCH_DATA")
    if env:
        dirs += [Path(env) / name, Path(env)]
    if name == "fashion_mnist":
        dirs.append(DEBIAN_FASHION_MNIST)
    dirs.append(_cache_dir(name))
    return dirs


def _cache_dir(name: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bnn_bench" / name


def _find_idx(directory: Path) -> dict[str, Path] | None:
    found = {}
    for key, stem in IDX_FILES.items():
        for candidate in (directory / stem, directory / f"{stem}.gz"):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


def _download(name: str) -> dict[str, Path] | None:
    """Fetch the IDX files with torchvision into the user cache; None when that is impossible."""
    try:
        import torchvision.datasets as tvd
    except Exception:
        return None
    cache = _cache_dir(name)
    cls = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}[name]
    try:
        getattr(tvd, cls)(root=str(cache), train=True, download=True)
        getattr(tvd, cls)(root=str(cache), train=False, download=True)
    except Exception:
        return None
    return _find_idx(cache / cls / "raw")


def _idx_dataset(name: str, root: str | None) -> Dataset:
    dirs = idx_search_dirs(name, root)
    files = next((f for f in map(_find_idx, dirs) if f), None) or _download(name)
    if files is None:
        how = "apt-get install dataset-fashion-mnist, " if name == "fashion_mnist" else ""
        raise DataError(
            f"dataset={name}: the four IDX files ({', '.join(IDX_FILES.values())}, raw or .gz) "
            f"are in none of: {', '.join(map(str, dirs))}; get them with {how}"
            "pip install 'bnn-bench[torchvision]' while online, or set dataset.root=DIR"
        )
    arrays = {k: read_idx(p) for k, p in files.items()}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(x) != len(y) or x.ndim != 3 or y.ndim != 1:
            raise DataError(
                f"{files[f'x_{split}']} and {files[f'y_{split}']}: expected images (n, H, W) and "
                f"labels (n,), found shapes {x.shape} and {y.shape}"
            )
    xtr, xte = _standardise_global(arrays["x_train"] / 255.0, arrays["x_test"] / 255.0)
    ytr, yte = arrays["y_train"].astype(np.int32), arrays["y_test"].astype(np.int32)
    num_classes = int(max(ytr.max(), yte.max())) + 1
    return Dataset(name, xtr, ytr, xte, yte, "classification", num_classes)


def _npz(path: str | None, test_fraction: float, task: str | None) -> Dataset:
    if not path:
        raise ConfigError("dataset.path is required for dataset=npz: an .npz file with x and y")
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"dataset.path={path}: no such file")
    if task not in (None, "classification", "regression"):
        raise ConfigError(
            f"dataset.task={task} is not allowed; choose one of: classification, regression"
        )
    try:
        with np.load(file, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as exc:
        raise DataError(
            f"{file}: holds object arrays, which need pickle; save plain arrays"
        ) from exc
    except Exception as exc:
        raise DataError(f"{file}: not a readable .npz file ({type(exc).__name__})") from exc
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(f"{file}: has no array '{key}' (found: {', '.join(arrays) or 'none'})")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{file}: has only one of x_test and y_test; give both or neither")
    if "x_test" in arrays:
        parts = arrays["x"], arrays["y"], arrays["x_test"], arrays["y_test"]
    else:
        parts = _split(arrays["x"], arrays["y"], test_fraction)
    names = ("x", "y", "x_test", "y_test") if "x_test" in arrays else ("x", "y", "x", "y")
    for (x, y), (nx, ny) in zip(
        ((parts[0], parts[1]), (parts[2], parts[3])),
        ((names[0], names[1]), (names[2], names[3])),
        strict=True,
    ):
        if len(x) != len(y):
            raise DataError(f"{file}: {nx} has {len(x)} rows but {ny} has {len(y)}")
        if not np.issubdtype(x.dtype, np.number) or not np.all(np.isfinite(x)):
            raise DataError(f"{file}: {nx} must be numeric with no NaN or Inf")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.number):
            raise DataError(f"{file}: {ny} must be a numeric vector (n,), found shape {y.shape}")
    xtr, ytr, xte, yte = parts
    is_int = np.issubdtype(ytr.dtype, np.integer)
    task = task or ("classification" if is_int else "regression")
    if task == "classification":
        for y, ny in ((ytr, names[1]), (yte, names[3])):
            if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)) or y.min() < 0:
                raise DataError(f"{file}: {ny} must hold class labels 0..K-1 (integers >= 0)")
        num_classes = int(max(ytr.max(), yte.max())) + 1
        ytr, yte = ytr.astype(np.int32), yte.astype(np.int32)
    else:
        if not (np.all(np.isfinite(ytr)) and np.all(np.isfinite(yte))):
            raise DataError(f"{file}: y must have no NaN or Inf")
        num_classes = 0
        ytr, yte = ytr.astype(np.float32), yte.astype(np.float32)
    xtr, xte = xtr.astype(np.float64), xte.astype(np.float64)
    if xtr.ndim == 2:  # tabular: standardise each feature
        mean, std = xtr.mean(axis=0), np.maximum(xtr.std(axis=0), 1e-8)
        xtr, xte = (xtr - mean) / std, (xte - mean) / std
    else:  # images: one scalar, to keep the image structure
        xtr, xte = _standardise_global(xtr, xte)
    return Dataset(
        "npz", xtr.astype(np.float32), ytr, xte.astype(np.float32), yte, task, num_classes
    )


def _synthetic_regression(n_train, n_test, dim, noise_std, seed) -> Dataset:
    """y = x w + noise with x, w ~ N(0, I): a Bayesian linear regression with a closed form."""
    if dim < 1 or noise_std <= 0:
        raise ConfigError(
            f"dataset.dim={dim}, dataset.noise_std={noise_std}: need dim >= 1 and noise_std > 0"
        )
    rng = np.random.default_rng(seed)
    w = rng.normal(size=dim)
    x = rng.normal(size=(n_train + n_test, dim))
    y = x @ w + noise_std * rng.normal(size=n_train + n_test)
    x, y = x.astype(np.float32), y.astype(np.float32)
    return Dataset(
        "synthetic_regression", x[:n_train], y[:n_train], x[n_train:], y[n_train:], "regression", 0
    )
