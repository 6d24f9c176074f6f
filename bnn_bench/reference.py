"""reference.npz: a reference posterior predictive on a test set, and that test set's identity.

A reference holds the predictive of a long, Metropolis-corrected run (method=hmc) on one target:
`probs` (n_test x K, float32) for classification, or `samples` (n_test x S, float32: draws of the
network's output f(x) at each test point) for regression. Beside it, the identity of the target
it was made on, as plain strings (no pickle): the dataset's name, n_test, the sha256 of x_test
and of y_test (as float32 / int32 C-order bytes), the model, the prior and the likelihood.
`mismatch` says which field differs between a reference and a run, so that a run can refuse a
reference made on another target before any work. `diagnostics` (a JSON string) carries how the
reference was made (chains, R-hat, ESS, divergences, time, command).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

IDENTITY_FIELDS = (
    "dataset",
    "n_test",
    "x_test_sha256",
    "y_test_sha256",
    "model",
    "prior",
    "likelihood",
)
PACKAGED_DIR = Path(__file__).resolve().parent / "references"


def array_sha256(a: np.ndarray, dtype) -> str:
    """sha256 of the array's bytes as `dtype`, C order (the layout does not change the hash)."""
    return hashlib.sha256(np.ascontiguousarray(a, dtype).tobytes()).hexdigest()


def identity(
    *,
    dataset: str,
    x_test: np.ndarray,
    y_test: np.ndarray,
    model: str,
    prior: str,
    likelihood: str,
) -> dict[str, str]:
    """The test-set identity of a target (every value a string)."""
    y_dtype = np.int32 if np.issubdtype(np.asarray(y_test).dtype, np.integer) else np.float32
    return {
        "dataset": dataset,
        "n_test": str(len(y_test)),
        "x_test_sha256": array_sha256(x_test, np.float32),
        "y_test_sha256": array_sha256(y_test, y_dtype),
        "model": model,
        "prior": prior,
        "likelihood": likelihood,
    }


@dataclass(frozen=True)
class Reference:
    """A read reference.npz."""

    identity: dict[str, str]
    probs: np.ndarray | None  # (n_test, K) classification
    samples: np.ndarray | None  # (n_test, S) regression
    diagnostics: dict[str, Any]

    @property
    def task(self) -> str:
        return "classification" if self.probs is not None else "regression"


def write(
    path: str | Path,
    ident: dict[str, str],
    *,
    probs: np.ndarray | None = None,
    samples: np.ndarray | None = None,
    diagnostics: dict[str, Any] | None = None,
    **arrays: np.ndarray,
) -> Path:
    """Write reference.npz (compressed) with exactly one of `probs` and `samples`."""
    if (probs is None) == (samples is None):
        raise ValueError("a reference holds exactly one of probs (classification) or samples")
    missing = [f for f in IDENTITY_FIELDS if f not in ident]
    if missing:
        raise ValueError(f"reference identity lacks {', '.join(missing)}")
    out = {f: np.asarray(str(ident[f])) for f in IDENTITY_FIELDS}
    if probs is not None:
        out["probs"] = np.asarray(probs, np.float32)
    else:
        out["samples"] = np.asarray(samples, np.float32)
    out["diagnostics"] = np.asarray(json.dumps(diagnostics or {}, sort_keys=True))
    out.update(arrays)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **out)
    tmp.replace(path)
    return path


def resolve(name_or_path: str) -> Path:
    """A reference given as a path, or as the name of one shipped in the package (digits_mlp)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    packaged = PACKAGED_DIR / f"{name_or_path}.npz"
    if "/" not in name_or_path and packaged.is_file():
        return packaged
    shipped = sorted(p.stem for p in PACKAGED_DIR.glob("*.npz"))
    raise ValueError(
        f"reference={name_or_path}: no such file, and not a shipped reference "
        f"({', '.join(shipped) or 'none shipped'})"
    )


def read(name_or_path: str | Path) -> Reference:
    """Read a reference.npz (a path or a shipped name); never unpickles."""
    path = resolve(str(name_or_path))
    try:
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
            missing = [f for f in IDENTITY_FIELDS if f not in files]
            if missing or not ({"probs", "samples"} & files):
                what = ", ".join(missing) or "probs or samples"
                raise ValueError(f"reference={path}: not a reference.npz (lacks {what})")
            ident = {f: str(z[f]) for f in IDENTITY_FIELDS}
            probs = z["probs"] if "probs" in files else None
            samples = z["samples"] if "samples" in files else None
            diag = json.loads(str(z["diagnostics"])) if "diagnostics" in files else {}
    except (OSError, EOFError) as exc:
        raise ValueError(f"reference={path}: not a readable .npz ({type(exc).__name__})") from exc
    return Reference(ident, probs, samples, diag)


def mismatch(
    reference: dict[str, str], run: dict[str, str], fields: tuple[str, ...] = IDENTITY_FIELDS
) -> str | None:
    """None when the identities agree on `fields`; else one line naming the first that differs."""
    for field in fields:
        if str(reference.get(field)) != str(run.get(field)):
            ref, mine = reference.get(field), run.get(field)
            if field.endswith("sha256"):
                ref, mine = str(ref)[:12], str(mine)[:12]
            return f"{field} differs: the reference has {ref}, this run has {mine}"
    return None


CONFIG_FIELDS = ("dataset", "model", "prior", "likelihood")


def config_identity(cfg) -> dict[str, str]:
    """The identity fields a config fixes without loading data (CONFIG_FIELDS)."""
    model = cfg.model.name
    if model == "mlp":
        model = f"mlp hidden={list(cfg.model.hidden)}"
    likelihood = cfg.likelihood.name
    if likelihood == "gaussian":
        likelihood = f"gaussian noise_std={float(cfg.likelihood.noise_std)}"
    return {
        "dataset": str(cfg.dataset.name),
        "model": model,
        "prior": f"gaussian std={float(cfg.prior.std)} scale={cfg.prior.scale}",
        "likelihood": likelihood,
    }


def target_identity(cfg, data) -> dict[str, str]:
    """The identity of the target a config describes, on its loaded data (any method)."""
    fixed = config_identity(cfg)
    return identity(
        dataset=str(data.name),
        x_test=data.x_test,
        y_test=data.y_test,
        model=fixed["model"],
        prior=fixed["prior"],
        likelihood=fixed["likelihood"],
    )
