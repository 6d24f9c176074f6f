"""Datasets: digits, the IDX reader on files the tests write, npz validation, lookup order."""

import sys
import types
from pathlib import Path

import numpy as np
import pytest

from bnn_bench.data import datasets, load_dataset, read_idx, write_idx
from bnn_bench.errors import ConfigError, DataError


def test_digits_layouts_and_standardisation():
    flat = load_dataset("digits")
    img = load_dataset("digits", layout="image")
    assert flat.x_train.shape[1:] == (64,) and img.x_train.shape[1:] == (8, 8, 1)
    assert flat.n_train + len(flat.y_test) == 1797
    assert abs(flat.x_train.mean()) < 1e-4 and abs(flat.x_train.std() - 1) < 1e-3
    assert set(np.unique(flat.y_train)) == set(range(10)) and flat.num_classes == 10
    assert flat.x_train.dtype == np.float32 and flat.y_train.dtype == np.int32
    np.testing.assert_array_equal(flat.x_train, load_dataset("digits").x_train)


def test_digits_subset():
    d = load_dataset("digits", n_train=100, n_test=50)
    assert (d.n_train, len(d.y_test)) == (100, 50)
    with pytest.raises(ConfigError, match="dataset.n_train=5000"):
        load_dataset("digits", n_train=5000)


def write_fake_mnist(directory: Path, n_train=20, n_test=5, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, arr in arrays.items():
        write_idx(directory / f"{name}{suffix}", arr)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip_and_mnist_from_root(tmp_path, gz):
    arrays = write_fake_mnist(tmp_path, gz=gz)
    np.testing.assert_array_equal(
        read_idx(tmp_path / f"train-labels-idx1-ubyte{'.gz' if gz else ''}"),
        arrays["train-labels-idx1-ubyte"],
    )
    d = load_dataset("mnist", root=str(tmp_path), layout="image")
    assert d.x_train.shape == (20, 28, 28, 1) and d.x_test.shape == (5, 28, 28, 1)
    np.testing.assert_array_equal(d.y_train, arrays["train-labels-idx1-ubyte"])
    raw = arrays["train-images-idx3-ubyte"] / 255.0
    expected = (raw - raw.mean()) / raw.std()
    np.testing.assert_allclose(d.x_train[..., 0], expected, atol=1e-5)
    assert load_dataset("mnist", root=str(tmp_path)).x_train.shape == (20, 784)


def test_truncated_idx_is_refused(tmp_path):
    write_fake_mnist(tmp_path, gz=False)
    f = tmp_path / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated") as err:
        load_dataset("mnist", root=str(tmp_path))
    assert str(f) in str(err.value) and "\n" not in str(err.value)


def test_trailing_bytes_and_wrong_magic_are_refused(tmp_path):
    f = tmp_path / "x.idx"
    write_idx(f, np.zeros((3, 4), np.uint8))
    f.write_bytes(f.read_bytes() + b"\0")
    with pytest.raises(DataError, match="trailing"):
        read_idx(f)
    f.write_bytes(b"\x12\x34\x08\x01" + b"\0" * 8)
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(f)


def test_missing_idx_files_list_every_place_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("BNN_BENCH_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "torchvision", None)  # no download possible
    with pytest.raises(DataError) as err:
        load_dataset("mnist", root=str(tmp_path / "root"))
    msg = str(err.value)
    for place in ("root", "env", "cache"):
        assert str(tmp_path / place) in msg
    assert "dataset.root" in msg and "\n" not in msg


def test_bnn_bench_data_env_var(tmp_path, monkeypatch):
    write_fake_mnist(tmp_path / "mnist")
    monkeypatch.setenv("BNN_BENCH_DATA", str(tmp_path))
    assert load_dataset("mnist").n_train == 20


@pytest.mark.skipif(
    not datasets.DEBIAN_FASHION_MNIST.is_dir(), reason="Debian dataset-fashion-mnist not installed"
)
def test_fashion_mnist_from_debian_package(monkeypatch):
    monkeypatch.delenv("BNN_BENCH_DATA", raising=False)
    d = load_dataset("fashion_mnist", n_train=1000, layout="image")
    assert d.x_train.shape == (1000, 28, 28, 1) and d.x_test.shape == (10000, 28, 28, 1)
    assert d.num_classes == 10


def test_npz_classification_and_regression(tmp_path):
    rng = np.random.default_rng(0)
    f = tmp_path / "c.npz"
    np.savez(f, x=rng.normal(size=(50, 3)), y=rng.integers(0, 3, 50))
    d = load_dataset("npz", path=str(f), test_fraction=0.2)
    assert d.task == "classification" and d.num_classes == 3 and d.n_train == 40
    np.testing.assert_allclose(d.x_train.mean(axis=0), 0, atol=1e-5)
    g = tmp_path / "r.npz"
    np.savez(
        g,
        x=rng.normal(size=(30, 2)),
        y=rng.normal(size=30),
        x_test=np.ones((4, 2)),
        y_test=np.zeros(4),
    )
    r = load_dataset("npz", path=str(g))
    assert r.task == "regression" and r.n_train == 30 and len(r.y_test) == 4


@pytest.mark.parametrize(
    ("arrays", "needle"),
    [
        ({"x": np.ones((5, 2))}, "has no array 'y'"),
        ({"x": np.ones((5, 2)), "y": np.zeros(4, int)}, "x has 5 rows but y has 4"),
        ({"x": np.array([[np.nan, 1.0]] * 5), "y": np.zeros(5, int)}, "NaN or Inf"),
        ({"x": np.array([[np.inf, 1.0]] * 5), "y": np.zeros(5, int)}, "NaN or Inf"),
        ({"x": np.ones((5, 2)), "y": np.array([0, 1, -1, 0, 1])}, "labels outside 0..K-1"),
        ({"x": np.ones((5, 2)), "y": np.zeros(5, int), "x_test": np.ones((2, 2))}, "x_test"),
        ({"x": np.array([{}] * 5, dtype=object), "y": np.zeros(5, int)}, "pickle"),
        ({"x": np.ones((5, 2)), "y": np.array(["a"] * 5)}, "integers or floats"),
        ({"x": np.ones((5, 2)), "y": np.array([0.0, 1.0, np.nan, 0.0, 1.0])}, "NaN or Inf"),
        ({"x": np.ones((5, 2)), "y": np.zeros(5, int)}, "only one class"),
        (
            {"x": np.ones((5, 2)), "y": np.arange(5), "x_test": np.ones((2, 3)), "y_test": [0, 1]},
            "x_test has (3,)",
        ),
    ],
)
def test_bad_npz_files_are_refused_with_one_line(tmp_path, arrays, needle):
    f = tmp_path / "bad.npz"
    np.savez(f, **arrays)
    with pytest.raises(DataError) as err:
        load_dataset("npz", path=str(f))
    assert needle in str(err.value) and str(f) in str(err.value) and "\n" not in str(err.value)


def test_npz_path_problems(tmp_path):
    with pytest.raises(ConfigError, match="dataset.path"):
        load_dataset("npz")
    with pytest.raises(DataError, match="no such file"):
        load_dataset("npz", path=str(tmp_path / "missing.npz"))


def test_bad_names_and_fractions():
    with pytest.raises(ConfigError, match="dataset=foo .* digits"):
        load_dataset("foo")
    with pytest.raises(ConfigError, match="dataset.test_fraction=1.5"):
        load_dataset("digits", test_fraction=1.5)


def test_synthetic_regression():
    d = load_dataset("synthetic_regression", n_train=50, n_test=10, dim=3)
    assert d.x_train.shape == (50, 3) and d.task == "regression" and d.num_classes == 0


# --- more edge cases -----------------------------------------------------------------------------


@pytest.fixture
def no_data_anywhere(tmp_path, monkeypatch):
    """No BNN_BENCH_DATA, an empty per-user cache, and no torchvision."""
    monkeypatch.delenv("BNN_BENCH_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "torchvision", None)
    return tmp_path / "cache" / "bnn_bench"


def test_outputs_are_contiguous_float32_and_int32(tmp_path):
    write_fake_mnist(tmp_path)
    for d in (
        load_dataset("digits", layout="image", n_train=30),
        load_dataset("mnist", root=str(tmp_path), n_test=3),
        load_dataset("synthetic_regression"),
    ):
        for a in (d.x_train, d.x_test):
            assert a.dtype == np.float32 and a.flags.c_contiguous
        ydtype = np.int32 if d.task == "classification" else np.float32
        for a in (d.y_train, d.y_test):
            assert a.dtype == ydtype and a.flags.c_contiguous and a.ndim == 1
        assert d.input_shape == d.x_train.shape[1:]


def test_subset_is_fixed_and_a_subset(tmp_path):
    full = load_dataset("digits")
    a, b = load_dataset("digits", n_train=50, seed=1), load_dataset("digits", n_train=50, seed=7)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    rows = {r.tobytes() for r in full.x_train}
    assert all(r.tobytes() in rows for r in a.x_train)
    np.testing.assert_array_equal(a.x_test, full.x_test)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"n_train": 0}, "dataset.n_train=0"),
        ({"n_train": 2.5}, "dataset.n_train=2.5"),
        ({"n_test": 10_000}, "dataset.n_test=10000"),
        ({"test_fraction": 0.0}, "dataset.test_fraction=0.0"),
        ({"test_fraction": "x"}, "dataset.test_fraction='x'"),
        ({"layout": "nhwc"}, "dataset.layout=nhwc"),
        ({"task": "regression"}, "dataset.task=regression"),
        ({"task": "ranking"}, "dataset.task=ranking"),
        ({"dim": 3}, "dataset.dim is not an option of dataset=digits"),
    ],
)
def test_bad_config_values(kwargs, needle):
    with pytest.raises(ConfigError) as err:
        load_dataset("digits", **kwargs)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_idx_dtypes_roundtrip(tmp_path):
    for dtype in (np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64, ">i4", ">f8"):
        a = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
        for compress in (False, True):
            f = tmp_path / f"a-{np.dtype(dtype).str}-{compress}"
            write_idx(f, a, compress=compress)
            b = read_idx(f)
            assert b.dtype.isnative and b.dtype.kind == np.dtype(dtype).kind
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="IDX cannot store dtype"):
        write_idx(tmp_path / "bad", np.zeros(3, np.int64))


def test_gzip_is_detected_by_magic_not_name(tmp_path):
    f = tmp_path / "labels.idx"  # gzip content, no .gz name
    write_idx(f, np.arange(7, dtype=np.uint8), compress=True)
    assert f.read_bytes()[:2] == b"\x1f\x8b"
    np.testing.assert_array_equal(read_idx(f), np.arange(7))
    g = tmp_path / "labels.gz"  # raw content, .gz name
    write_idx(g, np.arange(7, dtype=np.uint8), compress=False)
    np.testing.assert_array_equal(read_idx(g), np.arange(7))


def test_idx_read_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_idx(tmp_path / "nope")
    f = tmp_path / "t.gz"
    write_idx(f, np.zeros((50, 28, 28), np.uint8))
    f.write_bytes(f.read_bytes()[:30])
    with pytest.raises(DataError, match="truncated") as err:
        read_idx(f)
    assert str(f) in str(err.value)
    f.write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(DataError, match="truncated IDX file: the header"):
        read_idx(f)
    f.write_bytes(b"")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(f)
    f.write_bytes(b"\x00\x00\x07\x01\x00\x00\x00\x01\x00")  # unknown type code 0x07
    with pytest.raises(DataError, match=r"magic 0x00000701"):
        read_idx(f)


def test_image_label_count_mismatch_names_both_files(tmp_path):
    write_fake_mnist(tmp_path, gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(DataError) as err:
        load_dataset("mnist", root=str(tmp_path))
    msg = str(err.value)
    assert "t10k-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg


def test_mnist_labels_out_of_range(tmp_path):
    write_fake_mnist(tmp_path, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(20, 10, np.uint8))
    with pytest.raises(DataError, match="labels outside 0..9"):
        load_dataset("mnist", root=str(tmp_path))


def test_lookup_order_root_then_env_then_cache(tmp_path, no_data_anywhere, monkeypatch):
    write_fake_mnist(tmp_path / "root", n_train=11)
    write_fake_mnist(tmp_path / "env", n_train=12)
    write_fake_mnist(no_data_anywhere / "mnist", n_train=13)
    monkeypatch.setenv("BNN_BENCH_DATA", str(tmp_path / "env"))
    assert load_dataset("mnist", root=str(tmp_path / "root")).n_train == 11
    assert load_dataset("mnist", root=str(tmp_path / "empty")).n_train == 12
    monkeypatch.delenv("BNN_BENCH_DATA")
    assert load_dataset("mnist").n_train == 13


def test_earlier_torchvision_download_is_found_without_torchvision(no_data_anywhere):
    write_fake_mnist(no_data_anywhere / "mnist" / "MNIST" / "raw", n_train=9)
    assert load_dataset("mnist").n_train == 9


def _fake_torchvision(monkeypatch, fail: bool):
    calls = []

    class MNIST:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            if fail:
                raise RuntimeError("no network\nsecond line")
            if not train:
                write_fake_mnist(Path(root) / "MNIST" / "raw", n_train=8, gz=False)

    tv = types.ModuleType("torchvision")
    tv.datasets = types.ModuleType("torchvision.datasets")
    tv.datasets.MNIST = MNIST
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", tv.datasets)
    return calls


def test_torchvision_download_into_the_cache(no_data_anywhere, monkeypatch):
    calls = _fake_torchvision(monkeypatch, fail=False)
    assert load_dataset("mnist").n_train == 8
    assert calls and all(c[0] == str(no_data_anywhere / "mnist") and c[2] for c in calls)


def test_failed_torchvision_download_is_a_data_error(no_data_anywhere, monkeypatch):
    _fake_torchvision(monkeypatch, fail=True)
    with pytest.raises(DataError) as err:
        load_dataset("mnist")
    msg = str(err.value)
    assert "download" in msg and "no network" in msg and "\n" not in msg
    assert "dataset.root" in msg and str(no_data_anywhere / "mnist") in msg


def test_missing_fashion_mnist_suggests_the_debian_package(no_data_anywhere, monkeypatch):
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", no_data_anywhere / "debian")
    with pytest.raises(DataError) as err:
        load_dataset("fashion_mnist")
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "torchvision" in msg
    assert str(no_data_anywhere / "debian") in msg


_UNPICKLED: list = []


def _record_unpickling() -> str:
    _UNPICKLED.append("unpickled")
    return "unpickled"


class _Boom:
    """Unpickling this would call _record_unpickling: proves npz loading never unpickles."""

    def __reduce__(self):
        return (_record_unpickling, ())


def test_npz_never_unpickles(tmp_path):
    f = tmp_path / "evil.npz"
    np.savez(f, x=np.array([_Boom()] * 4, dtype=object), y=np.zeros(4, int))
    with pytest.raises(DataError, match="pickle"):
        load_dataset("npz", path=str(f))
    assert _UNPICKLED == []
    np.load(f, allow_pickle=True)["x"]  # the check is live: unpickling would have recorded
    assert _UNPICKLED


def test_npz_not_a_zip(tmp_path):
    f = tmp_path / "x.npz"
    f.write_text("hello")
    with pytest.raises(DataError, match="not an .npz file"):
        load_dataset("npz", path=str(f))
    np.save(tmp_path / "a.npy", np.ones(3))
    with pytest.raises(DataError, match="not an .npz file"):
        load_dataset("npz", path=str(tmp_path / "a.npy"))


def test_npz_task_override_and_layouts(tmp_path):
    rng = np.random.default_rng(1)
    f = tmp_path / "float_labels.npz"
    np.savez(f, x=rng.normal(size=(40, 2)), y=np.tile([0.0, 1.0, 2.0, 1.0], 10))
    assert load_dataset("npz", path=str(f)).task == "regression"
    c = load_dataset("npz", path=str(f), task="classification")
    assert c.task == "classification" and c.num_classes == 3 and c.y_train.dtype == np.int32
    g = tmp_path / "half.npz"
    np.savez(g, x=rng.normal(size=(40, 2)), y=np.tile([0.0, 0.5], 20))
    with pytest.raises(DataError, match="labels outside 0..K-1"):
        load_dataset("npz", path=str(g), task="classification")
    r = load_dataset("npz", path=str(tmp_path / "float_labels.npz"), task="regression")
    assert r.y_train.dtype == np.float32
    with pytest.raises(ConfigError, match="dataset.layout=image"):
        load_dataset("npz", path=str(f), layout="image")
    h = tmp_path / "images.npz"
    np.savez(h, x=rng.integers(0, 255, (30, 6, 5)), y=rng.integers(0, 2, 30))
    img = load_dataset("npz", path=str(h), layout="image", test_fraction=0.1)
    assert img.x_train.shape == (27, 6, 5, 1) and img.x_test.shape == (3, 6, 5, 1)
    assert abs(img.x_train.mean()) < 1e-5 and abs(img.x_train.std() - 1) < 1e-4
    assert load_dataset("npz", path=str(h)).x_train.shape == (24, 30)


def test_npz_regression_targets_are_left_as_given(tmp_path):
    f = tmp_path / "r.npz"
    y = np.linspace(100, 200, 20)
    np.savez(f, x=np.arange(20.0)[:, None], y=y, x_test=np.ones((2, 1)), y_test=[5.0, 6.0])
    d = load_dataset("npz", path=str(f))
    np.testing.assert_allclose(d.y_train, y, rtol=1e-6)
    np.testing.assert_allclose(d.y_test, [5.0, 6.0])
    assert d.x_train.shape == (20, 1)


def test_npz_split_too_small(tmp_path):
    f = tmp_path / "one.npz"
    np.savez(f, x=np.ones((1, 2)), y=np.zeros(1))
    with pytest.raises(ConfigError, match="leaves no training examples"):
        load_dataset("npz", path=str(f))


def test_synthetic_regression_is_a_seeded_linear_model():
    a = load_dataset("synthetic_regression", n_train=2000, n_test=10, dim=4, noise_std=0.3, seed=3)
    b = load_dataset("synthetic_regression", n_train=2000, n_test=10, dim=4, noise_std=0.3, seed=3)
    c = load_dataset("synthetic_regression", n_train=2000, n_test=10, dim=4, noise_std=0.3, seed=4)
    np.testing.assert_array_equal(a.y_train, b.y_train)
    assert not np.array_equal(a.y_train, c.y_train)
    x = a.x_train.astype(np.float64)
    w, *_ = np.linalg.lstsq(x, a.y_train, rcond=None)
    assert abs(np.std(a.y_train - x @ w) - 0.3) < 0.02
    d = load_dataset("synthetic_regression")
    assert (d.n_train, len(d.y_test), d.input_shape) == (300, 100, (5,))
    for kwargs, key in (
        ({"dim": 0}, "dataset.dim=0"),
        ({"noise_std": 0.0}, "dataset.noise_std=0.0"),
        ({"n_train": 0}, "dataset.n_train=0"),
        ({"task": "classification"}, "dataset.task=classification"),
        ({"layout": "image"}, "dataset.layout=image"),
    ):
        with pytest.raises(ConfigError, match=key):
            load_dataset("synthetic_regression", **kwargs)
