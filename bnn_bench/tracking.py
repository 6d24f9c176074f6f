"""Where results go: local files (metrics.jsonl, results.json, posterior.npz), W&B, a progress bar.

Files are written atomically (temporary file, fsync, rename): a results file on disk is complete
or absent, never half-written.
"""

from __future__ import annotations

import io
import json
import math
import netrc
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same directory, fsync and rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: dict[str, Any]) -> None:
    """Atomically write `obj` as indented JSON (non-finite floats become null)."""
    atomic_write_bytes(path, (json.dumps(_jsonable(obj), indent=2) + "\n").encode())


def write_posterior(path: Path, particles: np.ndarray, log_weights: np.ndarray) -> None:
    """Atomically write posterior.npz with `particles` (J x D) and `log_weights` (J)."""
    buf = io.BytesIO()
    np.savez(buf, particles=np.asarray(particles), log_weights=np.asarray(log_weights))
    atomic_write_bytes(path, buf.getvalue())


def write_vi_posterior(path: Path, q, samples) -> None:
    """Atomically write a VI posterior.npz: q's `mean`, `log_scale`, `factor` (D x r), and
    `particles` (draws from q, S x D) with uniform `log_weights`, as SMC writes them."""
    buf = io.BytesIO()
    samples = np.asarray(samples)
    np.savez(
        buf,
        mean=np.asarray(q.mean),
        log_scale=np.asarray(q.log_scale),
        factor=np.asarray(q.factor),
        particles=samples,
        log_weights=np.zeros(len(samples), samples.dtype),
    )
    atomic_write_bytes(path, buf.getvalue())


class MetricsFile:
    """metrics.jsonl: one JSON object per line, flushed as written."""

    def __init__(self, path: Path):
        self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(_jsonable(record)) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


class Progress:
    """A one-line progress bar on a terminal; otherwise a plain log line every ~5 percent."""

    def __init__(self, total: int, enabled: bool = True, stream=None):
        self.total = total
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.t0 = time.perf_counter()
        self._next_pct = 5

    def update(self, it: int, batch_size: int, ess: float, label: str = "ess") -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / it * (self.total - it) if it else float("nan")
        pct = 100 * it / self.total
        text = (
            f"iter {it}/{self.total} | batch {batch_size} | {label} {ess:.1f} | "
            f"{_fmt_time(elapsed)} elapsed, eta {_fmt_time(eta)}"
        )
        if self.tty:
            filled = int(24 * it / self.total)
            bar = "#" * filled + "-" * (24 - filled)
            self.stream.write(f"\r[{bar}] {pct:5.1f}% {text}")
            if it >= self.total:
                self.stream.write("\n")
            self.stream.flush()
        elif pct >= self._next_pct or it >= self.total:
            self.stream.write(f"[bnn-bench] {pct:5.1f}% {text}\n")
            self.stream.flush()
            while self._next_pct <= pct:
                self._next_pct += 5

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def wandb_api_key_available() -> bool:
    """True when W&B can authenticate without a prompt (env var or ~/.netrc entry)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc().authenticators("api.wandb.ai")
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(auth and auth[2])


class WandbRun:
    """A W&B run that falls back to offline when online is impossible and always finishes."""

    def __init__(self, *, mode: str, project: str, entity, group, job_type, name, config, out_dir):
        self.run = None
        if mode == "disabled":
            return
        import wandb

        if mode == "online" and not wandb_api_key_available():
            print("[bnn-bench] W&B: no API key found; logging offline", file=sys.stderr)
            mode = "offline"
        kwargs = dict(
            project=project,
            entity=entity,
            group=group,
            job_type=job_type,
            name=name,
            config=config,
            dir=str(out_dir),
            reinit="finish_previous",
        )
        try:
            self.run = wandb.init(mode=mode, settings=wandb.Settings(init_timeout=30), **kwargs)
        except Exception as exc:  # network or auth failure: keep the run, log offline
            if mode != "online":
                raise
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            print(f"[bnn-bench] W&B online failed ({first}); logging offline", file=sys.stderr)
            self.run = wandb.init(mode="offline", **kwargs)

    def log(self, record: dict[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in record.items() if v is not None}, step=step)

    def summary(self, results: dict[str, Any]) -> None:
        if self.run is not None:
            for k, v in _jsonable(results).items():
                self.run.summary[k] = v

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None
