"""What a command may do to a run directory that already holds a run (issue 17, item 1).

The rule: a results.json with status=finished is never modified by a later command unless it says
`overwrite=true`. Everything is decided before the job writes anything (metrics.jsonl is only
truncated, and results.json only written, after these checks pass):

- a fresh run (resume=false) refuses a directory that holds results.json, checkpoint.npz or
  metrics.jsonl; with overwrite=true it replaces them (`clear_replaced`, once the job's data and
  model are built) and starts afresh;
- resume=true reads the checkpoint's config first (a changed config is refused, naming the keys),
  refuses a finished run, then reads every array of the checkpoint in full (a flipped byte or a
  missing array is refused) before anything is truncated;
- resume=true without a checkpoint starts afresh only when no finished run is there.
"""

from __future__ import annotations

import json
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from bnn_bench.errors import ConfigError, DataError

RUN_FILES = ("results.json", "checkpoint.npz", "metrics.jsonl")
REPLACED_ON_OVERWRITE = ("results.json", "checkpoint.npz", "posterior.npz")


def results_status(out_dir: Path) -> str | None:
    """results.json's status: None without one, "unreadable" when it cannot be parsed."""
    path = Path(out_dir) / "results.json"
    if not path.exists() and not path.is_symlink():
        return None
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "unreadable"
    return str(results.get("status")) if isinstance(results, dict) else "unreadable"


def refuse_finished(out_dir: Path, overwrite: bool, what: str = "") -> None:
    """ConfigError when `out_dir` holds a finished (or unreadable) results.json and the command
    did not say overwrite=true."""
    status = results_status(out_dir)
    if overwrite or status not in ("finished", "unreadable"):
        return
    held = "a finished run" if status == "finished" else "a results.json that cannot be read"
    raise ConfigError(
        f"output directory {out_dir} holds {held}{what}; nothing was changed: pass "
        "overwrite=true to replace it, or choose another hydra.run.dir"
    )


def clear_replaced(out_dir: Path) -> None:
    """overwrite=true on a fresh start: remove the old run's results, checkpoint and posterior
    (called once every check has passed, just before the new run truncates metrics.jsonl)."""
    for name in REPLACED_ON_OVERWRITE:
        (Path(out_dir) / name).unlink(missing_ok=True)


def verify_checkpoint(path: Path) -> None:
    """Read every array of a checkpoint in full (zip CRCs checked) and check that the metadata's
    `num_leaves` arrays are all there; DataError (one line naming the file) otherwise."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()  # reads every member, checking its CRC
            names = set(zf.namelist())
        if bad is not None:
            raise DataError(f"{path}: damaged checkpoint (array {bad} fails its checksum)")
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["__meta__"].tobytes().decode())
            for name in z.files:
                z[name]  # parse every .npy header and body
    except DataError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable bnn-bench checkpoint ({exc})") from exc
    count = meta.get("num_leaves") if isinstance(meta, dict) else None
    if not isinstance(count, int) or count < 0:
        raise DataError(f"{path}: not a bnn-bench checkpoint (no array count in its metadata)")
    missing = [f"leaf_{i}" for i in range(count) if f"leaf_{i}.npy" not in names]
    if missing:
        raise DataError(
            f"{path}: damaged checkpoint: {len(missing)} of its {count} arrays are missing "
            f"({', '.join(missing[:3])})"
        )


def resume_point(
    out_dir: Path, checkpoints, *, resume: bool, overwrite: bool = False, quiet: bool = False
) -> dict[str, Any] | None:
    """The checkpoint metadata to resume from, or None for a fresh start; raises (one line)
    before anything is written when the command may not touch what `out_dir` holds."""
    out_dir = Path(out_dir)
    say = (lambda message: None) if quiet else (lambda m: print(m, file=sys.stderr))
    if not resume:
        held = [f for f in RUN_FILES if (out_dir / f).exists() or (out_dir / f).is_symlink()]
        if held and not overwrite:
            raise ConfigError(
                f"output directory {out_dir} already holds a run ({held[0]}); pass resume=true "
                "to continue it, overwrite=true to replace it, or choose another hydra.run.dir"
            )
        return None
    if not checkpoints.exists():
        refuse_finished(out_dir, overwrite, " and no checkpoint to resume from")
        say(f"[bnn-bench] resume: no checkpoint in {out_dir}; starting afresh")
        return None
    meta = checkpoints.peek()  # a changed config is refused here, naming the keys
    refuse_finished(out_dir, overwrite, " (nothing to resume)")
    verify_checkpoint(checkpoints.path)
    say(f"[bnn-bench] resume: continuing from iteration {meta['iteration']}")
    return meta


def check_before_start(out_dir: Path, config: dict[str, Any]) -> None:
    """resume_point's checks on a job's directory before Hydra writes into it (its .hydra/
    record of a finished run included); `config` is the job's resolved config."""
    from bnn_bench.checkpoint import Checkpoints

    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return
    every = int(config.get("checkpoint_every") or 0)
    checkpoints = Checkpoints(out_dir / "checkpoint.npz", config, every)
    resume_point(
        out_dir,
        checkpoints,
        resume=bool(config.get("resume")),
        overwrite=bool(config.get("overwrite")),
        quiet=True,
    )


def output_dir(out: Path) -> Path:
    """The job's output directory, checked writable by a probe that touches nothing there."""
    from bnn_bench.tracking import check_writable_dir

    try:
        check_writable_dir(out)
    except OSError as exc:
        raise ConfigError(f"output directory {out} is not writable ({exc.strerror})") from exc
    return out
