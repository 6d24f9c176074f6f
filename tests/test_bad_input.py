"""Bad data files and config values (issue 17, item 6): one line naming the file or key, exit 2.

Each kind of fault is tested at the level that checks it (the npz reader, the label check, the
config walk, the model build) and, for a representative of each, through the real CLI.
"""

import gzip
import io
import struct
import zipfile

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from bnn_bench.config import validate
from bnn_bench.data import datasets, load_dataset, npz, read_idx
from bnn_bench.errors import ConfigError, DataError
from bnn_bench.preflight import CONFIG_DIR

RNG = np.random.default_rng(0)
X = RNG.normal(size=(20, 3))
Y = np.tile([0, 1], 10)


def npy_bytes(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def write_zip(path, members: dict[str, bytes], compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def refused(path, match, **kwargs):
    with pytest.raises(DataError) as err:
        load_dataset("npz", path=str(path), **kwargs)
    message = str(err.value)
    assert match in message and str(path) in message and "\n" not in message, message
    return message


# --- zip members --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("members", "match"),
    [
        ({"x.npy": npy_bytes(X), "y.npy": npy_bytes(Y), "notes.txt": b"hi"}, "'notes.txt' is not"),
        ({"x": b"not an array", "y.npy": npy_bytes(Y)}, "member 'x' is not a .npy array"),
        ({"x.npy": b"garbage bytes here", "y.npy": npy_bytes(Y)}, "no .npy header"),
        ({"x.npy": npy_bytes(X)[:60], "y.npy": npy_bytes(Y)}, "damaged .npy header"),
        ({"x.npy": npy_bytes(X)[:-8], "y.npy": npy_bytes(Y)}, "'x' is damaged"),
        ({"x.npy": npy_bytes(X), "y.npy": npy_bytes(Y), "sub/": b""}, "'sub/' is not"),
    ],
)
def test_zip_members_that_are_not_npy_arrays(tmp_path, members, match):
    refused(write_zip(tmp_path / "bad.npz", members), match)


def test_a_header_that_claims_terabytes_is_refused_without_reading(tmp_path, monkeypatch):
    # np.save's header for an (10**6, 10**6) float64 array, followed by 16 bytes of data
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (10**6, 10**6)}
    )
    path = write_zip(
        tmp_path / "liar.npz", {"x.npy": header.getvalue() + b"\0" * 16, "y.npy": npy_bytes(Y)}
    )
    reads = []
    monkeypatch.setattr(datasets, "read_member", lambda *a: reads.append(a))
    message = refused(path, "its header declares shape (1000000, 1000000) float64")
    assert "8.0 TB" in message and reads == []


def test_a_zip_bomb_is_refused_from_its_headers_before_any_data_is_read(tmp_path, monkeypatch):
    bomb = np.zeros((2_000_000, 4))  # 64 MB of zeros, a few hundred KB compressed
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, x=bomb, y=np.tile([0, 1], 1_000_000))
    assert path.stat().st_size < 1_000_000
    monkeypatch.setattr(npz, "available_memory", lambda: 50_000_000)
    reads = []
    monkeypatch.setattr(datasets, "read_member", lambda *a: reads.append(a))
    message = refused(path, "needs about")
    assert "x (2000000, 4) float64" in message and "50.0 MB is available" in message
    assert reads == []  # refused from the headers alone


def test_a_gzip_idx_bomb_is_refused_after_the_header(tmp_path):
    # an IDX header declaring 2**31 x 2**31 uint8 values, then 1 KB: never decompressed in full
    path = tmp_path / "train-images-idx3-ubyte.gz"
    header = b"\0\0\x08\x02" + struct.pack(">II", 2**31, 2**31)
    path.write_bytes(gzip.compress(header + b"\0" * 999))
    with pytest.raises(DataError, match="its header declares shape") as err:
        read_idx(path)
    assert str(path) in str(err.value)


# --- values --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arrays", "kwargs", "match"),
    [
        ({"x": X, "y": np.full(20, 3)}, {}, "only one class (3)"),
        ({"x": X, "y": np.full(20, 3)}, {"num_classes": 4}, "only one class (3)"),
        ({"x": X, "y": np.r_[np.tile([0, 1], 9), 1, 2**32]}, {}, "outside 0..K-1"),
        ({"x": X, "y": np.r_[np.tile([0, 1], 9), 1, 2**31 - 2]}, {}, "not the classes 0..K-1"),
        ({"x": X, "y": np.r_[np.arange(10), np.arange(9), 99_999]}, {}, "not the classes 0..K-1"),
        ({"x": X, "y": np.r_[np.tile([0, 1], 9), 1, 7]}, {"num_classes": 5}, "allows only 0..4"),
        ({"x": X, "y": np.tile([0.0, 2.5], 10)}, {"task": "classification"}, "outside 0..K-1"),
        ({"x": np.ones((20, 0)), "y": Y}, {}, "no features"),
        ({"x": np.ones((20, 3, 0)), "y": Y}, {}, "no features"),
        ({"x": X, "y": Y, "x_test": np.ones((0, 3)), "y_test": np.zeros(0)}, {}, "no rows"),
        ({"x": X * 1e307, "y": Y}, {}, "too large to normalise"),
        ({"x": X.astype(bool), "y": Y}, {}, "integers or floats"),
        ({"x": X, "y": Y.reshape(10, 2)}, {}, "a vector"),
    ],
)
def test_bad_values_are_refused_with_one_line(tmp_path, arrays, kwargs, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    message = refused(path, match, **kwargs)
    if "not the classes" in match:
        assert "dataset.num_classes" in message  # says how to allow missing classes


def test_num_classes_allows_missing_classes_and_is_checked(tmp_path):
    path = tmp_path / "gaps.npz"
    np.savez(path, x=X, y=np.tile([0, 2], 10))
    with pytest.raises(DataError, match="1 of the 3 classes have no example"):
        load_dataset("npz", path=str(path))
    d = load_dataset("npz", path=str(path), num_classes=3)
    assert d.num_classes == 3 and set(np.unique(d.y_train)) <= {0, 2}
    np.savez(path, x=X, y=np.r_[np.tile([0, 1], 9), 1, 99_999])
    assert load_dataset("npz", path=str(path), num_classes=100_000).num_classes == 100_000
    for kwargs, match in (
        ({"num_classes": 1}, "dataset.num_classes=1"),
        ({"num_classes": 2**31}, "dataset.num_classes=2147483648"),
    ):
        with pytest.raises(ConfigError, match=match):
            load_dataset("npz", path=str(path), **kwargs)
    with pytest.raises(ConfigError, match="dataset.num_classes=4 is not allowed: dataset=digits"):
        load_dataset("digits", num_classes=4)
    assert load_dataset("digits", num_classes=10).num_classes == 10
    np.savez(path, x=X, y=RNG.normal(size=20))
    with pytest.raises(ConfigError, match="regression"):
        load_dataset("npz", path=str(path), num_classes=3)


def test_inputs_of_five_dimensions_are_refused_for_an_image_model(tmp_path):
    path = tmp_path / "5d.npz"
    np.savez(path, x=np.ones((20, 4, 4, 1, 2)), y=Y)
    with pytest.raises(ConfigError, match=r"needs images \(n, H, W\) or \(n, H, W, C\)"):
        load_dataset("npz", path=str(path), layout="image")
    assert load_dataset("npz", path=str(path)).x_train.shape[1:] == (32,)  # flat is fine


def test_labels_that_are_fine_still_load(tmp_path):
    path = tmp_path / "ok.npz"
    np.savez_compressed(path, x=X, y=np.tile([0, 1, 2, 3], 5).astype(np.uint64), extra=np.ones(3))
    d = load_dataset("npz", path=str(path))
    assert d.num_classes == 4 and d.y_train.dtype == np.int32


# --- config values -------------------------------------------------------------------------------


@pytest.fixture
def composed():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        yield lambda *o: compose(config_name="config", overrides=list(o))
    GlobalHydra.instance().clear()


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("model.hidden=[0]", "model.hidden[0]=0 is not allowed"),
        ("model.hidden=[16,-1]", "model.hidden[1]=-1 is not allowed"),
        ("seed=4294967296", "seed=4294967296 is not allowed; it must be an integer in 0..4294"),
        ("seed=-1", "seed=-1 is not allowed"),
        ("schedule.growth=inf", "schedule.growth=inf is not allowed; it must be a finite number"),
        ("proposal.step_size=nan", "proposal.step_size=nan is not allowed"),
        ("prior.std=inf", "prior.std=inf is not allowed"),
        ("smc.num_particles=99999999999", "smc.num_particles=99999999999 is not allowed"),
        ("dataset.num_classes=1", "dataset.num_classes=1 is not allowed"),
        ("dataset.n_test=0", "dataset.n_test=0 is not allowed"),
        ("hardware.cpu_scheduler=fast", "hardware.cpu_scheduler=fast is not allowed"),
    ],
)
def test_bad_config_values_name_the_key(composed, override, match):
    with pytest.raises(ConfigError, match=match.replace("[", r"\[").replace("]", r"\]")):
        validate(composed(override))


def test_seed_at_the_limit_is_accepted(composed):
    validate(composed("seed=4294967295"))


# --- model build ---------------------------------------------------------------------------------


def test_a_model_with_an_empty_layer_is_a_value_error():
    import jax.numpy as jnp

    from bnn_bench.models import build_model
    from bnn_bench.posterior import make_posterior

    with pytest.raises(ValueError, match="a layer has no inputs"):
        make_posterior(build_model("mlp", 3, hidden=[0]), jnp.ones((1, 4)), prior_scale="fan_in")
    with pytest.raises(ValueError, match=r"inputs of shape \(0,\) have no features"):
        make_posterior(build_model("linear", 3), jnp.ones((1, 0)), prior_scale="fan_in")
    with pytest.raises(ValueError, match="no inputs|has shape"):  # a layer of width 0
        make_posterior(build_model("linear", 0), jnp.ones((1, 4)), prior_scale="none")


# --- through the CLI: one line, exit 2, nothing written -------------------------------------------


def _npz_args(tmp_path, **arrays):
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return ["dataset=npz", f"dataset.path={path}"]


def _zip_args(tmp_path, members):
    return ["dataset=npz", f"dataset.path={write_zip(tmp_path / 'data.npz', members)}"]


CLI_CASES = {
    "non-npy member": (
        lambda t: _zip_args(t, {"x.npy": npy_bytes(X), "y": b"1,0,1"}),
        "member 'y' is not a .npy array",
    ),
    "stray label": (
        lambda t: _npz_args(t, x=X, y=np.r_[np.arange(10), np.arange(9), 99_999]),
        "not the classes 0..K-1",
    ),
    "single class 3": (lambda t: _npz_args(t, x=X, y=np.full(20, 3)), "only one class (3)"),
    "zero features": (lambda t: _npz_args(t, x=np.ones((20, 0)), y=Y), "no features"),
    "5-d for the cnn": (
        lambda t: [*_npz_args(t, x=np.ones((20, 4, 4, 1, 1)), y=Y), "model=cnn"],
        "dataset.layout=image needs images",
    ),
    "hidden [0]": (lambda t: ["model.hidden=[0]"], "model.hidden[0]=0"),
    "seed 2**32": (lambda t: ["seed=4294967296"], "seed=4294967296"),
    "growth inf": (lambda t: ["schedule=sda", "schedule.growth=inf"], "schedule.growth=inf"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CLI_CASES))
def test_bad_input_through_the_cli(tmp_path, run_cli, case):
    make_args, needle = CLI_CASES[case]
    out = tmp_path / "run"
    short = ["model=linear", "smc.num_particles=4", "smc.num_iterations=3", "logger=none"]
    short += ["progress=false", "schedule.batch_size=5", f"hydra.run.dir={out}"]
    proc = run_cli(*short, *make_args(tmp_path))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("bnn-bench: error:"), proc.stderr
    assert needle in lines[0] and "Traceback" not in proc.stderr
    assert not (out / "results.json").exists() and not (out / "metrics.jsonl").exists()
