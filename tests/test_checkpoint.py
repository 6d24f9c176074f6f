"""Checkpoint files: round trip without pickle, atomic replacement, refusal of foreign files."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnn_bench.checkpoint import Checkpoints, fingerprint, load, save
from bnn_bench.errors import DataError
from bnn_bench.inference.smc.sampler import SMCState


def state(j=4, d=3, seed=0):
    p = jax.random.normal(jax.random.key(seed), (j, d))
    return SMCState(particles=p, log_weights=jnp.zeros(j), log_target=jnp.arange(j, dtype=float))


def test_round_trip_keeps_arrays_keys_and_meta(tmp_path):
    tree = {"smc": state(), "key": jax.random.key(7), "step": jnp.asarray(3, jnp.int32)}
    save(tmp_path / "c.npz", tree, {"iteration": 5, "note": "x"})
    got, meta = load(tmp_path / "c.npz", tree)
    assert meta["iteration"] == 5 and meta["note"] == "x"
    np.testing.assert_array_equal(got["smc"].particles, tree["smc"].particles)
    assert got["step"].dtype == jnp.int32 and int(got["step"]) == 3
    # the restored PRNG key draws the same numbers
    assert float(jax.random.normal(got["key"])) == float(jax.random.normal(tree["key"]))
    with np.load(tmp_path / "c.npz", allow_pickle=False) as z:  # no object arrays inside
        assert all(z[k].dtype != object for k in z.files)


def test_a_checkpoint_of_another_shape_is_refused(tmp_path):
    save(tmp_path / "c.npz", state(j=4), {})
    with pytest.raises(DataError, match="c.npz: array 0 has shape"):
        load(tmp_path / "c.npz", state(j=8))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="bad.npz: not a readable bnn-bench checkpoint"):
        load(tmp_path / "bad.npz", state())


def test_rewriting_leaves_no_temporary_files(tmp_path):
    for i in range(3):
        save(tmp_path / "c.npz", state(seed=i), {"iteration": i})
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]
    assert load(tmp_path / "c.npz", state())[1]["iteration"] == 2


def test_resume_requires_the_same_config(tmp_path):
    config = {"seed": 0, "smc": {"num_particles": 4}, "progress": True, "logger": {"mode": "x"}}
    ck = Checkpoints(tmp_path / "checkpoint.npz", config, every=5)
    assert ck.due(10) and not ck.due(7)
    ck.write(state(), 10, counts={})
    # volatile keys may change; the sampler's settings may not
    same = {**config, "progress": False, "logger": {"mode": "offline"}}
    assert Checkpoints(tmp_path / "checkpoint.npz", same, 5).peek()["iteration"] == 10
    other = {**config, "smc": {"num_particles": 8}}
    with pytest.raises(DataError, match=r"smc.num_particles=8 \(checkpoint: 4\)"):
        Checkpoints(tmp_path / "checkpoint.npz", other, 5).peek()
    assert fingerprint(config) == {"seed": 0, "smc.num_particles": 4}
    assert not Checkpoints(tmp_path / "none.npz", config, 0).due(10)
