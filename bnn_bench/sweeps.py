"""Every job of a sweep, from the sweep's own record, and why each one that did not finish stopped.

Hydra writes `multirun.yaml` at the root of a sweep (the command line's overrides, the preset's
`hydra.sweeper.params`, the job sub-directory pattern) before the first job starts, and
`.hydra/overrides.yaml` into each job's directory when that job starts. A job that crashed before
writing results.json, or never started, is therefore still known: the report lists it with the
reason found on disk instead of dropping it. Reading only: nothing here writes.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

JOB_NUM_SUBDIR = "${hydra.job.num}"  # Hydra's default hydra.sweep.subdir
# results.json fields the report reads, and the JSON types each may have (None: null)
STRING_FIELDS = ("status", "method", "experiment", "schedule", "proposal", "algorithm", "mass")
NUMBER_FIELDS = ("accuracy", "rmse", "nll", "ece", "runtime_s", "example_grads", "neg_elbo")


@dataclass
class SweepRecord:
    """One multirun.yaml: the sweep's directory and the override list of each of its jobs."""

    root: Path
    jobs: list[list[str]] = field(default_factory=list)
    subdir: str = JOB_NUM_SUBDIR
    problem: str = ""  # why the record could not be read or expanded ("" when it could)


def _safe_load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def normalise(overrides: list[str]) -> tuple[tuple[str, str], ...]:
    """An override list as sorted (key, value) pairs, as Hydra's parser reads them (so that
    `progress=false` on the command line equals `progress=False` in overrides.yaml)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides=[str(o) for o in overrides])
    return tuple(sorted((o.get_key_element(), o.get_value_element_as_str()) for o in parsed))


def expand(overrides: list[str]) -> list[list[str]]:
    """The jobs a multirun command line describes, in Hydra's job-number order."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides=overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def read_record(path: Path) -> SweepRecord:
    """The jobs of the sweep whose multirun.yaml is `path` (problem set when it cannot tell)."""
    record = SweepRecord(path.parent)
    try:
        hydra = (_safe_load(path) or {}).get("hydra") or {}
        task = list((hydra.get("overrides") or {}).get("task") or [])
        sweeper = hydra.get("sweeper") or {}
        record.subdir = str((hydra.get("sweep") or {}).get("subdir", JOB_NUM_SUBDIR))
    except (OSError, ValueError, yaml.YAMLError, AttributeError, TypeError) as exc:
        record.problem = f"{path}: unreadable sweep record ({type(exc).__name__})"
        return record
    target = str(sweeper.get("_target_", "")) if isinstance(sweeper, dict) else ""
    if target and not target.endswith("BasicSweeper"):
        record.problem = f"{path}: sweeper {target} chooses its jobs as it runs; listed from disk"
        return record
    params = sweeper.get("params") if isinstance(sweeper, dict) else None
    swept = [f"{k}={v}" for k, v in (params or {}).items()]
    try:
        record.jobs = expand([*swept, *(str(o) for o in task)])
    except Exception as exc:  # noqa: BLE001 - any parse failure of a damaged record
        record.problem = f"{path}: its overrides cannot be parsed ({type(exc).__name__})"
    return record


def results_shape_problem(results: Any) -> str:
    """Why a parsed results.json cannot be a bnn-bench result ("" when it can)."""
    if not isinstance(results, dict):
        return f"a JSON {type(results).__name__}, not an object"
    for key in STRING_FIELDS:
        if results.get(key) is not None and not isinstance(results[key], str):
            return f"{key} is a {type(results[key]).__name__}, not a string"
    for key in NUMBER_FIELDS:
        value = results.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return f"{key} is a {type(value).__name__}, not a number"
    seed = results.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | str)):
        return f"seed is a {type(seed).__name__}, not an integer"
    return ""


def job_config(directory: Path) -> dict[str, Any]:
    """The fields the report groups by, from the job's .hydra/config.yaml ({} if unreadable)."""
    try:
        cfg = _safe_load(directory / ".hydra" / "config.yaml")
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    if not isinstance(cfg, dict):
        return {}

    def get(section: str, key: str = "name"):
        node = cfg.get(section)
        value = node.get(key) if isinstance(node, dict) else None
        return value if isinstance(value, str | int | float | bool) else None

    # the results.json fields that the methods' report rows read (each method picks its own)
    out = {"method": get("method"), "experiment": cfg.get("experiment"), "seed": cfg.get("seed")}
    out.update(schedule=get("schedule"), proposal=get("proposal"), algorithm=get("vi", "algorithm"))
    out.update(adapt_step_size=get("proposal", "adapt_step_size"), mass=get("proposal", "mass"))
    out = {k: v for k, v in out.items() if v is not None}
    return out if not results_shape_problem(out) else {}


def _last_iteration(metrics: Path) -> int | None:
    last = None
    try:
        with open(metrics, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    break  # a line cut short by a kill
                if isinstance(record, dict) and isinstance(record.get("iter"), int):
                    last = record["iter"]
    except OSError:
        return None
    return last


def _checkpoint_iteration(path: Path) -> int | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["__meta__"].tobytes().decode())
        return int(meta["iteration"])
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile):
        return None


def why_no_results(directory: Path) -> str:
    """What the files of a job directory without results.json say about where the job stopped."""
    parts = ["no results.json"]
    last = _last_iteration(directory / "metrics.jsonl")
    if last is not None:
        parts.append(f"metrics.jsonl stops at iteration {last}")
    elif (directory / "metrics.jsonl").exists():
        parts.append("metrics.jsonl has no iteration")
    checkpoint = directory / "checkpoint.npz"
    if checkpoint.exists():
        k = _checkpoint_iteration(checkpoint)
        at = f" at iteration {k}" if k is not None else " (unreadable)"
        parts.append(f"checkpoint.npz{at}: rerun the job with resume=true")
    if last is None and not checkpoint.exists():
        parts.append("the job ended before its first iteration (killed, or failed at start-up)")
    else:
        parts.append("the job was killed or crashed (out of memory, a lost node) mid-run")
    return "; ".join(parts)


def job_dirs(root: Path) -> list[Path]:
    """Directories under `root` (itself included) where a job started (.hydra/overrides.yaml)."""
    return sorted({p.parent.parent for p in Path(root).rglob(".hydra/overrides.yaml")})


def job_overrides(directory: Path) -> list[str] | None:
    try:
        value = _safe_load(directory / ".hydra" / "overrides.yaml")
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return [str(v) for v in value] if isinstance(value, list) else None
