"""Datasets as plain numpy arrays: train/test split, normalised, in a flat or image layout.

Randomness: train/test splits (digits, npz without x_test) and the n_train/n_test subsets use a
fixed generator (SPLIT_SEED = 0), so every run seed sees the same data and the run seed drives
only inference. The one exception is synthetic_regression, whose generating process (weights,
inputs, noise) is drawn from `seed`, so each seed is its own linear-regression problem.

Standardisation (`standardize_inputs`, `standardize_targets`; the config's
dataset.standardize.inputs and .targets) uses statistics of the training split only, before any
n_train/n_test subset, and is recorded in `Dataset.standardization` (modes, means, stds):
- inputs: "global" (one scalar mean and std of all training values, so images keep their
  structure), "per_feature" (each feature's training mean and std, std floored at 1e-8) or
  "none". "auto" is the dataset's default: global for images (digits, mnist, fashion_mnist, npz
  with x of 3 or more dims), per_feature for tabular npz and diabetes, none for
  synthetic_regression (so that its closed-form posterior stays exact on the given x).
- regression targets: "standard" ((y - mean) / std with the training mean and std) or "none";
  "auto" is standard for diabetes and none elsewhere. Metrics are reported in the original
  units (`Dataset.y_mean`, `Dataset.y_std` undo it).
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field, replace
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np

from bnn_bench.data.idx import read_idx
from bnn_bench.errors import ConfigError, DataError

DATASETS: tuple[str, ...] = (
    "digits",
    "fashion_mnist",
    "mnist",
    "npz",
    "synthetic_regression",
    "diabetes",
)
INPUT_STANDARDIZATIONS = ("auto", "none", "global", "per_feature")
TARGET_STANDARDIZATIONS = ("auto", "none", "standard")
LAYOUTS = ("flat", "image")
TASKS = ("classification", "regression")
SPLIT_SEED = 0
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
# Extra keyword options each dataset accepts; `task` is accepted everywhere so that a config
# can state it, but only npz lets it choose (elsewhere it must agree with the dataset).
OPTIONS = {
    "digits": ("task",),
    "fashion_mnist": ("task",),
    "mnist": ("task",),
    "npz": ("task",),
    "synthetic_regression": ("task", "dim", "noise_std"),
    "diabetes": ("task",),
}
FIXED_TASKS = {
    "digits": "classification",
    "fashion_mnist": "classification",
    "mnist": "classification",
    "synthetic_regression": "regression",
    "diabetes": "regression",
}
# What "auto" means for each dataset: (inputs, targets)
DEFAULT_STANDARDIZATION = {
    "digits": ("global", "none"),
    "fashion_mnist": ("global", "none"),
    "mnist": ("global", "none"),
    "synthetic_regression": ("none", "none"),
    "diabetes": ("per_feature", "standard"),
}


@dataclass(frozen=True)
class Dataset:
    """Train and test arrays: x float32, y int32 labels or float32 targets of shape (n,)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    task: str  # "classification" | "regression"
    num_classes: int  # 0 for regression
    # modes and statistics applied (see the module docstring); {} before standardisation
    standardization: dict = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        """Number of training examples."""
        return len(self.x_train)

    @property
    def y_mean(self) -> float:
        """Mean subtracted from the regression targets (0 when they are not standardised)."""
        return float(self.standardization.get("y_mean") or 0.0)

    @property
    def y_std(self) -> float:
        """Std the regression targets were divided by (1 when they are not standardised)."""
        return float(self.standardization.get("y_std") or 1.0)

    def standardization_arrays(self) -> dict[str, np.ndarray]:
        """The means and stds the data was standardised with, as posterior.npz stores them."""
        s = self.standardization
        keys = ("x_mean", "x_std", "y_mean", "y_std")
        return {k: np.asarray(s[k], np.float64) for k in keys if s.get(k) is not None}

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input: (d,) in the flat layout, (H, W, C) in the image layout."""
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
    standardize_inputs: str = "auto",
    standardize_targets: str = "auto",
    **options: Any,
) -> Dataset:
    """Load dataset `name` in `layout` ("flat": (n, d); "image": (n, H, W, C)), standardised as
    `standardize_inputs` and `standardize_targets` say (module docstring)."""
    if name not in DATASETS:
        raise ConfigError(f"dataset={name} is not a dataset; choose one of: {', '.join(DATASETS)}")
    if layout not in LAYOUTS:
        raise ConfigError(
            f"dataset.layout={layout} is not allowed; choose one of: {', '.join(LAYOUTS)}"
        )
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, Real):
        raise ConfigError(f"dataset.test_fraction={test_fraction!r} must be a number in (0, 1)")
    if not 0 < test_fraction < 1:
        raise ConfigError(
            f"dataset.test_fraction={test_fraction} is not allowed; it must be in (0, 1)"
        )
    _check_count("n_train", n_train)
    _check_count("n_test", n_test)
    if standardize_inputs not in INPUT_STANDARDIZATIONS:
        raise ConfigError(
            f"dataset.standardize.inputs={standardize_inputs} is not allowed; choose one of: "
            f"{', '.join(INPUT_STANDARDIZATIONS)}"
        )
    if standardize_targets not in TARGET_STANDARDIZATIONS:
        raise ConfigError(
            f"dataset.standardize.targets={standardize_targets} is not allowed; choose one of: "
            f"{', '.join(TARGET_STANDARDIZATIONS)}"
        )
    task = _check_options(name, options)
    if name == "digits":
        data = _digits(test_fraction)
    elif name in ("fashion_mnist", "mnist"):
        data = _idx_dataset(name, root)
    elif name == "npz":
        data = _npz(path, test_fraction, task)
    elif name == "diabetes":
        data = _diabetes(test_fraction)
    else:
        data = _synthetic_regression(
            300 if n_train is None else n_train,
            100 if n_test is None else n_test,
            options.get("dim", 5),
            options.get("noise_std", 0.5),
            seed,
        )
    data = _standardize(data, standardize_inputs, standardize_targets)
    if name != "synthetic_regression":  # there n_train/n_test are the generated sizes
        data = _subset(data, n_train, n_test)
    return _layout(data, layout)


# --- argument checks -----------------------------------------------------------------------------


def _check_count(key: str, n: int | None) -> None:
    if n is None:
        return
    if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
        raise ConfigError(f"dataset.{key}={n!r} is not allowed; use an integer >= 1 or null")


def _check_options(name: str, options: dict[str, Any]) -> str | None:
    """Refuse options `name` does not take; return the requested task (None: infer it)."""
    allowed = OPTIONS[name]
    for key in options:
        if key not in allowed:
            raise ConfigError(
                f"dataset.{key} is not an option of dataset={name}; its options are: "
                f"{', '.join(allowed)}"
            )
    task = options.get("task")
    if task is not None and task not in TASKS:
        raise ConfigError(f"dataset.task={task} is not allowed; choose one of: {', '.join(TASKS)}")
    fixed = FIXED_TASKS.get(name)
    if task is not None and fixed is not None and task != fixed:
        raise ConfigError(
            f"dataset.task={task} is not allowed for dataset={name}, which is a {fixed} dataset; "
            f"use dataset.task={fixed} or null"
        )
    return task


# --- layouts, splits, subsets and normalisation --------------------------------------------------


def _layout(d: Dataset, layout: str) -> Dataset:
    """Reshape x to (n, d) or (n, H, W, C); make every array contiguous float32 / int32."""

    def shape(x: np.ndarray) -> np.ndarray:
        if layout == "flat":
            x = x.reshape(len(x), -1)
        elif x.ndim == 2:
            raise ConfigError(
                f"dataset.layout=image needs image inputs but dataset={d.name} has flat inputs "
                f"of shape {x.shape[1:]}; use a model with a flat layout (linear, mlp)"
            )
        elif x.ndim == 3:
            x = x[..., None]  # one channel, last
        return np.ascontiguousarray(x, np.float32)

    ydtype = np.int32 if d.task == "classification" else np.float32
    return Dataset(
        d.name,
        shape(d.x_train),
        np.ascontiguousarray(d.y_train, ydtype),
        shape(d.x_test),
        np.ascontiguousarray(d.y_test, ydtype),
        d.task,
        d.num_classes,
        d.standardization,
    )


def _subset(d: Dataset, n_train: int | None, n_test: int | None) -> Dataset:
    """The first n examples of a fixed (SPLIT_SEED) shuffle, kept in their original order."""

    def take(x, y, n, key):
        if n is None:
            return x, y
        if n > len(x):
            part = "training" if key == "n_train" else "test"
            raise ConfigError(
                f"dataset.{key}={n} is not allowed; dataset={d.name} has {len(x)} {part} "
                f"examples (use 1..{len(x)} or null)"
            )
        idx = np.sort(np.random.default_rng(SPLIT_SEED).permutation(len(x))[:n])
        return x[idx], y[idx]

    xtr, ytr = take(d.x_train, d.y_train, n_train, "n_train")
    xte, yte = take(d.x_test, d.y_test, n_test, "n_test")
    return Dataset(d.name, xtr, ytr, xte, yte, d.task, d.num_classes, d.standardization)


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, source: str):
    """A fixed (SPLIT_SEED) random train/test split; `source` names the data in errors."""
    n_test = max(1, int(round(test_fraction * len(x))))
    if len(x) - n_test < 1:
        raise ConfigError(
            f"dataset.test_fraction={test_fraction} leaves no training examples from the "
            f"{len(x)} of {source}; use a smaller fraction or give x_test and y_test"
        )
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[te], y[te]


def _standardise_global(x_train: np.ndarray, x_test: np.ndarray):
    """One scalar mean/std from the training values, so images keep their structure."""
    mean, std = _global_stats(x_train)
    scale = np.float32(1.0 / std)
    return (
        ((x_train - np.float32(mean)) * scale).astype(np.float32),
        ((x_test - np.float32(mean)) * scale).astype(np.float32),
    )


def _standardise_features(x_train: np.ndarray, x_test: np.ndarray):
    """Per-feature standardisation of (n, d) inputs with the training mean and std."""
    x_train, x_test = x_train.astype(np.float64), x_test.astype(np.float64)
    mean, std = x_train.mean(axis=0), np.maximum(x_train.std(axis=0), 1e-8)
    return ((x_train - mean) / std).astype(np.float32), ((x_test - mean) / std).astype(np.float32)


def _standardize(d: Dataset, inputs: str, targets: str) -> Dataset:
    """Apply the input and target standardisation (training statistics); record them."""
    default_inputs, default_targets = DEFAULT_STANDARDIZATION.get(
        d.name, ("per_feature" if d.x_train.ndim == 2 else "global", "none")
    )
    inputs = default_inputs if inputs == "auto" else inputs
    targets = default_targets if targets == "auto" else targets
    if targets == "standard" and d.task != "regression":
        raise ConfigError(
            f"dataset.standardize.targets=standard is only for regression, but dataset={d.name} "
            "is classification; use none or auto"
        )
    info: dict[str, Any] = {"inputs": inputs, "targets": targets}
    xtr, xte = d.x_train, d.x_test
    if inputs == "global":
        mean, std = _global_stats(xtr)
        info.update(x_mean=mean, x_std=std)
        xtr, xte = _standardise_global(xtr, xte)
    elif inputs == "per_feature":
        x64 = xtr.astype(np.float64)
        info.update(
            x_mean=x64.mean(axis=0).tolist(), x_std=np.maximum(x64.std(axis=0), 1e-8).tolist()
        )
        xtr, xte = _standardise_features(xtr, xte)
    else:
        xtr, xte = np.asarray(xtr, np.float32), np.asarray(xte, np.float32)
    ytr, yte = d.y_train, d.y_test
    if targets == "standard":
        y64 = ytr.astype(np.float64)
        y_mean, y_std = float(y64.mean()), max(float(y64.std()), 1e-8)
        info.update(y_mean=y_mean, y_std=y_std)
        ytr = ((y64 - y_mean) / y_std).astype(np.float32)
        yte = ((yte.astype(np.float64) - y_mean) / y_std).astype(np.float32)
    return replace(d, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte, standardization=info)


def _global_stats(x_train: np.ndarray) -> tuple[float, float]:
    return float(x_train.mean(dtype=np.float64)), max(float(x_train.std(dtype=np.float64)), 1e-8)


# --- digits --------------------------------------------------------------------------------------


def _digits(test_fraction: float) -> Dataset:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).reshape(-1, 8, 8).astype(np.float32)
    xtr, ytr, xte, yte = _split(x, y.astype(np.int32), test_fraction, "digits")
    return Dataset("digits", xtr, ytr, xte, yte, "classification", 10)


# --- mnist, fashion_mnist (IDX files) ------------------------------------------------------------


def _cache_dir(name: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bnn_bench" / name


def idx_search_dirs(name: str, root: str | None = None) -> list[Path]:
    """Directories searched, in order, for the four IDX files of mnist or fashion_mnist."""
    dirs = []
    if root:
        dirs.append(Path(root).expanduser())
    env = os.environ.get("BNN_BENCH_DATA")
    if env:
        dirs += [Path(env).expanduser(), Path(env).expanduser() / name]
    if name == "fashion_mnist":
        dirs.append(DEBIAN_FASHION_MNIST)
    cache = _cache_dir(name)
    # <cache>/<Class>/raw is where an earlier torchvision download wrote the files.
    dirs += [cache, cache / TORCHVISION_CLASSES[name] / "raw"]
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def _find_idx(directory: Path) -> dict[str, Path] | None:
    """The four IDX files in `directory` (each raw or .gz), or None if any is missing."""
    found = {}
    for key, stem in IDX_FILES.items():
        for candidate in (directory / stem, directory / f"{stem}.gz"):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


def _download(name: str) -> tuple[dict[str, Path] | None, str]:
    """Fetch the IDX files with torchvision into the user cache: (files or None, what happened)."""
    try:
        import torchvision.datasets as tvd
    except Exception:
        return None, "torchvision is not installed, so no download was tried"
    cache = _cache_dir(name)
    cls = TORCHVISION_CLASSES[name]
    try:
        for train in (True, False):
            getattr(tvd, cls)(root=str(cache), train=train, download=True)
    except Exception as exc:
        reason = (str(exc).splitlines() or [""])[0][:200]
        return (
            None,
            f"the torchvision download into {cache} failed ({type(exc).__name__}: {reason})",
        )
    raw = cache / cls / "raw"
    files = _find_idx(raw)
    return files, "" if files else f"torchvision wrote no IDX files under {raw}"


def _idx_dataset(name: str, root: str | None) -> Dataset:
    dirs = idx_search_dirs(name, root)
    files = next((f for f in map(_find_idx, dirs) if f), None)
    if files is None:
        files, note = _download(name)
        if files is None:
            how = "apt-get install dataset-fashion-mnist, " if name == "fashion_mnist" else ""
            raise DataError(
                f"dataset={name}: the four IDX files ({', '.join(IDX_FILES.values())}; raw or "
                f".gz) are in none of: {', '.join(map(str, dirs))}; {note}; get them with {how}"
                "pip install 'bnn-bench[torchvision]' while online, or set dataset.root=DIR "
                "holding the four IDX files"
            )
    arrays = {k: read_idx(p) for k, p in files.items()}
    for split in ("train", "test"):
        fx, fy = files[f"x_{split}"], files[f"y_{split}"]
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(
                f"{fx} and {fy}: expected images (n, H, W) and labels (n,) with the same n, "
                f"found shapes {x.shape} and {y.shape}"
            )
        if y.size and (y.min() < 0 or y.max() > 9):
            raise DataError(f"{fy}: labels outside 0..9 (found {y.min()}..{y.max()})")
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DataError(
            f"{files['x_train']} and {files['x_test']}: train images are "
            f"{arrays['x_train'].shape[1:]} but test images are {arrays['x_test'].shape[1:]}"
        )
    xtr = arrays["x_train"].astype(np.float32) / np.float32(255.0)
    xte = arrays["x_test"].astype(np.float32) / np.float32(255.0)
    ytr, yte = arrays["y_train"].astype(np.int32), arrays["y_test"].astype(np.int32)
    return Dataset(name, xtr, ytr, xte, yte, "classification", 10)


# --- npz -----------------------------------------------------------------------------------------


def _load_npz(file: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz file, never unpickling anything."""
    with open(file, "rb") as fh:
        if fh.read(4) != b"PK\x03\x04":
            raise DataError(f"{file}: not an .npz file (a zip of .npy arrays, as np.savez writes)")
    try:
        with np.load(file, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DataError(
                f"{file}: holds object arrays, which need pickle (refused); save plain numeric "
                "arrays"
            ) from exc
        raise DataError(f"{file}: not a readable .npz file ({exc})") from exc
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{file}: not a readable .npz file ({type(exc).__name__})") from exc


def _is_real(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)


def _npz(path: str | None, test_fraction: float, task: str | None) -> Dataset:
    if not path:
        raise ConfigError("dataset.path is required for dataset=npz: an .npz file with x and y")
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"dataset.path={path}: no such file (expected an .npz with x and y)")
    arrays = _load_npz(file)
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(f"{file}: has no array '{key}' (found: {', '.join(arrays) or 'none'})")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{file}: has only one of x_test and y_test; give both or neither")
    for key in ("y", "y_test"):  # boolean labels are classes 0 and 1
        if key in arrays and arrays[key].dtype == bool:
            arrays[key] = arrays[key].astype(np.int32)
    fixed_test = "x_test" in arrays
    for nx, ny in (("x", "y"), ("x_test", "y_test")) if fixed_test else (("x", "y"),):
        x, y = arrays[nx], arrays[ny]
        if x.ndim < 1 or y.ndim != 1:
            raise DataError(
                f"{file}: {nx} must be (n, ...) and {ny} a vector (n,), found shapes {x.shape} "
                f"and {y.shape}"
            )
        if len(x) != len(y):
            raise DataError(f"{file}: {nx} has {len(x)} rows but {ny} has {len(y)}")
        if len(x) == 0:
            raise DataError(f"{file}: {nx} has no rows")
        if not _is_real(x.dtype):
            raise DataError(f"{file}: {nx} must hold integers or floats, not {x.dtype}")
        if not np.all(np.isfinite(x)):
            raise DataError(f"{file}: {nx} must have no NaN or Inf")
        if not _is_real(y.dtype):
            raise DataError(f"{file}: {ny} must hold integers or floats, not {y.dtype}")
        if not np.all(np.isfinite(y)):
            raise DataError(f"{file}: {ny} must have no NaN or Inf")
    if fixed_test and arrays["x"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DataError(
            f"{file}: x has inputs of shape {arrays['x'].shape[1:]} but x_test has "
            f"{arrays['x_test'].shape[1:]}"
        )
    x, y = arrays["x"], arrays["y"]
    if x.ndim == 1:  # a single feature
        x = x[:, None]
        if fixed_test:
            arrays["x_test"] = arrays["x_test"][:, None]
    if fixed_test:
        xtr, ytr, xte, yte = x, y, arrays["x_test"], arrays["y_test"]
        ny_train, ny_test = "y", "y_test"
    else:
        xtr, ytr, xte, yte = _split(x, y, test_fraction, str(file))
        ny_train = ny_test = "y"
    task = task or ("classification" if np.issubdtype(y.dtype, np.integer) else "regression")
    if task == "classification":
        for labels, ny in ((ytr, ny_train), (yte, ny_test)):
            if labels.min() < 0 or not np.all(labels == np.round(labels)):
                bad = labels[(labels < 0) | (labels != np.round(labels))][0]
                raise DataError(
                    f"{file}: {ny} has labels outside 0..K-1 (found {bad}); class labels must be "
                    "integers >= 0"
                )
        num_classes = int(max(ytr.max(), yte.max())) + 1
        if num_classes < 2:
            raise DataError(f"{file}: y has only one class (0); classification needs at least 2")
        ytr, yte = ytr.astype(np.int32), yte.astype(np.int32)
    else:
        num_classes = 0
        ytr, yte = ytr.astype(np.float32), yte.astype(np.float32)
    if xtr.ndim > 2:  # images are standardised from float64 (as before the standardize key)
        xtr, xte = xtr.astype(np.float64), xte.astype(np.float64)
    return Dataset("npz", xtr, ytr, xte, yte, task, num_classes)


# --- diabetes --------------------------------------------------------------------------------


def _diabetes(test_fraction: float) -> Dataset:
    """scikit-learn's diabetes regression (442 patients, 10 raw features, disease progression
    after one year); ships with scikit-learn, no download."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True, scaled=False)
    xtr, ytr, xte, yte = _split(x, y, test_fraction, "diabetes")
    return Dataset("diabetes", xtr, ytr, xte, yte, "regression", 0)


# --- synthetic_regression ------------------------------------------------------------------------


def _synthetic_regression(
    n_train: int, n_test: int, dim: Any, noise_std: Any, seed: int
) -> Dataset:
    """y = x @ w + noise_std * eps with x, w, eps ~ N(0, I) from rng(seed): a closed form."""
    if isinstance(dim, bool) or not isinstance(dim, Integral) or dim < 1:
        raise ConfigError(f"dataset.dim={dim!r} is not allowed; use an integer >= 1")
    if isinstance(noise_std, bool) or not isinstance(noise_std, Real) or not noise_std > 0:
        raise ConfigError(f"dataset.noise_std={noise_std!r} is not allowed; use a number > 0")
    rng = np.random.default_rng(seed)
    w = rng.normal(size=dim)
    x = rng.normal(size=(n_train + n_test, dim))
    y = x @ w + noise_std * rng.normal(size=n_train + n_test)
    x, y = x.astype(np.float32), y.astype(np.float32)
    return Dataset(
        "synthetic_regression", x[:n_train], y[:n_train], x[n_train:], y[n_train:], "regression", 0
    )
