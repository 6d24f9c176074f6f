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
from dataclasses import dataclass, field, replace
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np

from bnn_bench.data.idx import read_idx
from bnn_bench.data.npz import check_memory, inspect_npz, read_member
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
    "digits": ("task", "num_classes"),
    "fashion_mnist": ("task", "num_classes"),
    "mnist": ("task", "num_classes"),
    "npz": ("task", "num_classes"),
    "synthetic_regression": ("task", "dim", "noise_std", "num_classes"),
    "diabetes": ("task", "num_classes"),
}
# Datasets whose number of classes is fixed (dataset.num_classes may only repeat it).
FIXED_CLASSES = {"digits": 10, "fashion_mnist": 10, "mnist": 10, "synthetic_regression": 0}
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
    val_fraction: float = 0.0,
    seed: int = 0,
    standardize_inputs: str = "auto",
    standardize_targets: str = "auto",
    **options: Any,
) -> Dataset:
    """Load dataset `name` in `layout` ("flat": (n, d); "image": (n, H, W, C)), standardised as
    `standardize_inputs` and `standardize_targets` say (module docstring).

    With `val_fraction` > 0 a fixed (SPLIT_SEED) fraction of the training rows is held out and
    returned in place of the test set, for tuning without touching the test labels (the inputs
    were standardised with the statistics of the training rows before the hold-out; no labels
    are involved in that)."""
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
    num_classes = _check_num_classes(name, options.get("num_classes"))
    if name == "digits":
        data = _digits(test_fraction)
    elif name in ("fashion_mnist", "mnist"):
        data = _idx_dataset(name, root)
    elif name == "npz":
        data = _npz(path, test_fraction, task, num_classes)
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
    try:
        data = _standardize(data, standardize_inputs, standardize_targets)
    except ValueError as exc:  # statistics that overflow float64
        source = path if name == "npz" else f"dataset={name}"
        raise DataError(f"{source}: x has {exc}; rescale the inputs") from exc
    if name != "synthetic_regression":  # there n_train/n_test are the generated sizes
        data = _subset(data, n_train, n_test)
    if val_fraction:
        data = _hold_out(data, val_fraction)
    return _layout(data, layout)


def _hold_out(d: Dataset, val_fraction: float) -> Dataset:
    """Training rows split into training and validation (returned as the test set)."""
    if not 0 < val_fraction < 1:
        raise ConfigError(
            f"dataset.val_fraction={val_fraction} is not allowed; it must be in [0, 1)"
        )
    xtr, ytr, xva, yva = _split(d.x_train, d.y_train, val_fraction, f"dataset={d.name}")
    return Dataset(d.name, xtr, ytr, xva, yva, d.task, d.num_classes)


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


def _check_num_classes(name: str, k: Any) -> int | None:
    """dataset.num_classes: null (K from the labels) or an integer >= 2 (allows missing classes);
    a dataset with a fixed number of classes only accepts that number."""
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, Integral) or not 2 <= k <= MAX_CLASSES:
        raise ConfigError(
            f"dataset.num_classes={k!r} is not allowed; use an integer in 2..{MAX_CLASSES} or null"
        )
    fixed = FIXED_CLASSES.get(name)
    if fixed is not None and k != fixed:
        what = f"has {fixed} classes; use {fixed} or null" if fixed else "is a regression dataset"
        raise ConfigError(f"dataset.num_classes={k} is not allowed: dataset={name} {what}")
    return int(k)


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
        elif x.ndim != 4:
            raise ConfigError(
                f"dataset.layout=image needs images (n, H, W) or (n, H, W, C) but dataset="
                f"{d.name} has inputs of shape {x.shape[1:]} ({x.ndim} dimensions with the "
                "example axis); reshape them, or use a model with a flat layout (linear, mlp)"
            )
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


def _check_finite_moments(mean, std) -> None:
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std))):
        raise ValueError("values too large to normalise (their mean or std overflows float64)")


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
    with np.errstate(over="ignore", invalid="ignore"):
        mean, std = x_train.mean(axis=0), np.maximum(x_train.std(axis=0), 1e-8)
    _check_finite_moments(mean, std)
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
    with np.errstate(over="ignore", invalid="ignore"):
        mean = float(x_train.mean(dtype=np.float64))
        std = max(float(x_train.std(dtype=np.float64)), 1e-8)
    _check_finite_moments(mean, std)
    return mean, std


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


def _is_real(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)


def _npz(
    path: str | None, test_fraction: float, task: str | None, num_classes: int | None
) -> Dataset:
    """An .npz's arrays, checked from their headers before any data is read, then by value."""
    if not path:
        raise ConfigError("dataset.path is required for dataset=npz: an .npz file with x and y")
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"dataset.path={path}: no such file (expected an .npz with x and y)")
    members = inspect_npz(file)
    for key in ("x", "y"):
        if key not in members:
            found = ", ".join(members) or "none"
            raise DataError(f"{file}: has no array '{key}' (found: {found})")
    if ("x_test" in members) != ("y_test" in members):
        raise DataError(f"{file}: has only one of x_test and y_test; give both or neither")
    fixed_test = "x_test" in members
    pairs = (("x", "y"), ("x_test", "y_test")) if fixed_test else (("x", "y"),)
    for nx, ny in pairs:  # everything the headers tell, before any data is read
        mx, my = members[nx], members[ny]
        if len(mx.shape) < 1 or len(my.shape) != 1:
            raise DataError(
                f"{file}: {nx} must be (n, ...) and {ny} a vector (n,), found shapes {mx.shape} "
                f"and {my.shape}"
            )
        if mx.shape[0] != my.shape[0]:
            raise DataError(f"{file}: {nx} has {mx.shape[0]} rows but {ny} has {my.shape[0]}")
        if mx.shape[0] == 0:
            raise DataError(f"{file}: {nx} has no rows")
        if 0 in mx.shape[1:]:
            raise DataError(
                f"{file}: {nx} has shape {mx.shape}, so each example has no features; every "
                "dimension after the first must be >= 1"
            )
        if not _is_real(mx.dtype):
            raise DataError(f"{file}: {nx} must hold integers or floats, not {mx.dtype}")
        if not (_is_real(my.dtype) or my.dtype == bool):
            raise DataError(f"{file}: {ny} must hold integers or floats, not {my.dtype}")
    if fixed_test and members["x"].shape[1:] != members["x_test"].shape[1:]:
        raise DataError(
            f"{file}: x has inputs of shape {members['x'].shape[1:]} but x_test has "
            f"{members['x_test'].shape[1:]}"
        )
    used = [name for pair in pairs for name in pair]
    # x: float64 and float32 copies while normalising; y: one int32/float32 copy
    check_memory(file, [(members[k], 16 if k.startswith("x") else 8) for k in used])
    arrays = {k: read_member(file, members[k]) for k in used}
    for key in ("y", "y_test"):  # boolean labels are classes 0 and 1
        if key in arrays and arrays[key].dtype == bool:
            arrays[key] = arrays[key].astype(np.int32)
    for key in used:
        if not np.all(np.isfinite(arrays[key])):
            raise DataError(f"{file}: {key} must have no NaN or Inf")
    x, y = arrays["x"], arrays["y"]
    if x.ndim == 1:  # a single feature
        x = x[:, None]
        if fixed_test:
            arrays["x_test"] = arrays["x_test"][:, None]
    if fixed_test:
        xtr, ytr, xte, yte = x, y, arrays["x_test"], arrays["y_test"]
        names = ("y", "y_test")
    else:
        xtr, ytr, xte, yte = _split(x, y, test_fraction, str(file))
        names = ("y", "y")
    task = task or ("classification" if np.issubdtype(y.dtype, np.integer) else "regression")
    if task == "classification":
        labels = ((names[0], ytr), (names[1], yte))
        num_classes = class_count(str(file), labels, num_classes)
        ytr, yte = ytr.astype(np.int32), yte.astype(np.int32)  # exact: checked above
    else:
        if num_classes is not None:
            raise ConfigError(
                f"dataset.num_classes={num_classes} is not allowed for a regression dataset "
                f"({file}); use null"
            )
        num_classes = 0
        ytr, yte = ytr.astype(np.float32), yte.astype(np.float32)
    if xtr.ndim > 2:  # images are standardised from float64 (as before the standardize key)
        xtr, xte = xtr.astype(np.float64), xte.astype(np.float64)
    return Dataset("npz", xtr, ytr, xte, yte, task, num_classes)


MAX_CLASSES = 2**31 - 1  # labels are int32


def class_count(source: str, labels, num_classes: int | None) -> int:
    """K for class labels [(name, array)], train first: integers in 0..K-1, at least two
    classes among the training labels, and (without an explicit `num_classes`) every class
    0..K-1 present, so that one stray label cannot make a model with thousands of outputs."""
    for name, lab in labels:
        bad = (lab < 0) | (lab != np.round(lab)) | (lab > MAX_CLASSES - 1)
        if np.any(bad):
            raise DataError(
                f"{source}: {name} has labels outside 0..K-1 (found {lab[bad][0]}); class labels "
                f"must be integers in 0..{MAX_CLASSES - 1}"
            )
    train_classes = np.unique(labels[0][1])
    if len(train_classes) < 2:
        raise DataError(
            f"{source}: {labels[0][0]} has only one class ({int(train_classes[0])}); "
            "classification needs at least 2"
        )
    present = np.unique(np.concatenate([lab for _, lab in labels])).astype(np.int64)
    top = int(present[-1])
    if num_classes is not None:
        for name, lab in labels:
            if lab.max() >= num_classes:
                raise DataError(
                    f"{source}: {name} has label {int(lab.max())} but dataset.num_classes="
                    f"{num_classes} allows only 0..{num_classes - 1}"
                )
        return int(num_classes)
    if len(present) != top + 1:
        missing = np.setdiff1d(np.arange(len(present) + 1), present)[:3]
        shown = ", ".join(str(int(m)) for m in missing)
        n_missing = top + 1 - len(present)
        raise DataError(
            f"{source}: the labels are not the classes 0..K-1: {len(present)} distinct labels "
            f"up to {top}, so {n_missing} of the {top + 1} classes have no example (e.g. "
            f"{shown}); relabel them 0..{len(present) - 1}, or set dataset.num_classes to "
            "allow classes without examples"
        )
    return top + 1


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
