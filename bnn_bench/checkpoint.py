"""Checkpoints: an inference state (any pytree of arrays) and JSON metadata in one .npz file.

Written atomically (temporary file, fsync, rename): a checkpoint on disk is the previous one or the
new one, never half of either. Read with allow_pickle=False: the file holds numeric arrays and one
uint8 array of UTF-8 JSON, nothing that needs unpickling.
"""

from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from bnn_bench.errors import ConfigError, DataError
from bnn_bench.tracking import atomic_write_bytes

FORMAT = 1
_META = "__meta__"


def _is_key(leaf) -> bool:
    return hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def save(path: Path, state, meta: dict[str, Any]) -> None:
    """Atomically write `state`'s leaves (typed PRNG keys as their key data) and `meta`."""
    leaves = jax.tree.leaves(state)
    arrays = {
        f"leaf_{i}": np.asarray(jax.random.key_data(x) if _is_key(x) else x)
        for i, x in enumerate(leaves)
    }
    header = {"format": FORMAT, "num_leaves": len(leaves), **meta}
    arrays[_META] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load(path: Path, like) -> tuple[Any, dict[str, Any]]:
    """Read a checkpoint into the structure of `like` (a state of the same run's shape).

    Raises DataError (one line, naming the file) when the file is unreadable or its arrays do not
    fit `like`: a checkpoint from another config cannot be resumed into this one.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            stored = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable bnn-bench checkpoint ({exc})") from exc
    if _META not in stored:
        raise DataError(f"{path}: not a bnn-bench checkpoint (no metadata)")
    meta = json.loads(stored.pop(_META).tobytes().decode())
    leaves, treedef = jax.tree.flatten(like)
    if meta.get("format") != FORMAT or meta.get("num_leaves") != len(leaves):
        raise DataError(f"{path}: checkpoint layout does not match this run's state")
    restored = []
    for i, ref in enumerate(leaves):
        arr = stored[f"leaf_{i}"]
        want = jax.random.key_data(ref) if _is_key(ref) else ref
        if arr.shape != np.shape(want) or arr.dtype != np.asarray(want).dtype:
            raise DataError(
                f"{path}: array {i} has shape {arr.shape} {arr.dtype}, this run needs "
                f"{np.shape(want)} {np.asarray(want).dtype}"
            )
        if _is_key(ref):
            restored.append(jax.random.wrap_key_data(arr, impl=jax.random.key_impl(ref)))
        else:
            restored.append(jax.numpy.asarray(arr))
    return jax.tree.unflatten(treedef, restored), meta


# Keys that may change between a run and its resumption without changing what is computed.
VOLATILE_KEYS = ("resume", "progress", "logger", "checkpoint_every", "log_every", "eval_every")


def fingerprint(config: dict[str, Any]) -> dict[str, Any]:
    """The resolved config minus VOLATILE_KEYS, flattened to {"a.b": value}."""

    def flat(node, prefix=""):
        if isinstance(node, dict):
            for k, v in node.items():
                yield from flat(v, f"{prefix}{k}.")
        else:
            yield prefix[:-1], node

    return dict(flat({k: v for k, v in config.items() if k not in VOLATILE_KEYS}))


class Checkpoints:
    """One run's checkpoint file: when one is due, writing it, and reading it back for a resume."""

    def __init__(self, path: Path, config: dict[str, Any], every: int):
        self.path = Path(path)
        self.every = every
        self.config = fingerprint(config)
        self.resumed: dict[str, Any] | None = None  # the metadata of the checkpoint resumed from

    def due(self, iteration: int) -> bool:
        return self.every > 0 and iteration % self.every == 0

    def exists(self) -> bool:
        return self.path.exists()

    def peek(self) -> dict[str, Any]:
        """The metadata of the checkpoint on disk, checked against this run's config."""
        try:
            with np.load(self.path, allow_pickle=False) as z:
                meta = json.loads(z[_META].tobytes().decode())
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise DataError(f"{self.path}: not a readable bnn-bench checkpoint ({exc})") from exc
        stored = meta.get("config", {})
        keys = set(stored) | set(self.config)
        changed = sorted(k for k in keys if stored.get(k) != self.config.get(k))
        if changed:
            shown = ", ".join(
                f"{k}={self.config.get(k)} (checkpoint: {stored.get(k)})" for k in changed[:4]
            )
            more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
            raise DataError(
                f"{self.path}: cannot resume with a different config: {shown}{more}; "
                "resume with the original settings or choose another hydra.run.dir"
            )
        self.resumed = meta
        return meta

    def write(self, state, iteration: int, **meta) -> None:
        save(self.path, state, {"iteration": iteration, "config": self.config, **meta})

    def read(self, like) -> tuple[Any, dict[str, Any]]:
        return load(self.path, like)


def resume_point(resume: bool, out_dir: Path, checkpoints: Checkpoints) -> dict[str, Any] | None:
    """The checkpoint metadata to resume from (resume=true), or None for a fresh run.

    A fresh run refuses a directory that already holds a run, so that nothing is overwritten.
    """
    if not resume:
        held = [f for f in ("checkpoint.npz", "results.json") if (out_dir / f).exists()]
        if held:
            raise ConfigError(
                f"output directory {out_dir} already holds a run ({held[0]}); pass resume=true "
                "to continue it, or choose another hydra.run.dir"
            )
        return None
    if not checkpoints.exists():
        print(f"[bnn-bench] resume: no checkpoint in {out_dir}; starting afresh", file=sys.stderr)
        return None
    meta = checkpoints.peek()
    print(f"[bnn-bench] resume: continuing from iteration {meta['iteration']}", file=sys.stderr)
    return meta
