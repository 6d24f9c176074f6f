"""Where results go: local files (metrics.jsonl, results.json, posterior.npz), W&B (its run and
its names), a progress bar, and the Reporter that sends every record to all three.

Files are written atomically (temporary file, fsync, rename): a results file on disk is complete
or absent, never half-written.
"""

from __future__ import annotations

import io
import json
import math
import netrc
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def _create_temporary(directory: Path, name: str) -> tuple[int, Path]:
    """A new file in `directory` for writing `name`: a random name, O_EXCL|O_NOFOLLOW (never a
    file or link already there), mode 0o666 so the kernel applies the umask as for any file."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    flags |= getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = Path(directory) / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name for {name} in {directory}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a new temporary file in the same directory, fsync and rename.

    The rename replaces `path` itself (a link planted there is replaced, never followed), the
    temporary file is created afresh (never opened through a link), and the file gets the mode
    the umask gives (not tempfile.mkstemp's 0600), so colleagues can read a shared sweep.
    """
    path = Path(path)
    fd, tmp = _create_temporary(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: dict[str, Any]) -> None:
    """Atomically write `obj` as indented JSON (non-finite floats become null)."""
    atomic_write_bytes(path, (json.dumps(_jsonable(obj), indent=2) + "\n").encode())


def write_posterior(
    path: Path, particles: np.ndarray, log_weights: np.ndarray, **extra: np.ndarray
) -> None:
    """Atomically write posterior.npz with `particles` (J x D) and `log_weights` (J), and any
    `extra` arrays (the standardisation's x_mean, x_std, y_mean, y_std)."""
    buf = io.BytesIO()
    np.savez(buf, particles=np.asarray(particles), log_weights=np.asarray(log_weights), **extra)
    atomic_write_bytes(path, buf.getvalue())


def truncate_metrics(path: Path, after: int) -> None:
    """Keep metrics.jsonl's records with iter <= `after` (those a resumed run will not redo)."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["iter"] <= after:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            break  # a line cut short by a kill, and everything after it
    atomic_write_bytes(path, "".join(kept).encode())


def write_vi_posterior(path: Path, q, samples, **extra: np.ndarray) -> None:
    """Atomically write a VI posterior.npz: q's `mean`, `log_scale`, `factor` (D x r), and
    `particles` (draws from q, S x D) with uniform `log_weights`, as SMC writes them, and any
    `extra` arrays (the standardisation's means and stds)."""
    buf = io.BytesIO()
    samples = np.asarray(samples)
    np.savez(
        buf,
        mean=np.asarray(q.mean),
        log_scale=np.asarray(q.log_scale),
        factor=np.asarray(q.factor),
        particles=samples,
        log_weights=np.zeros(len(samples), samples.dtype),
        **extra,
    )
    atomic_write_bytes(path, buf.getvalue())


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's records (a resumed run's history)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def open_append(path: Path) -> int:
    """A file descriptor appending to `path` (created with the umask's mode), never through a
    symbolic link: a link planted at `path` is refused with a one-line DataError."""
    from bnn_bench.errors import DataError

    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    try:
        return os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as exc:
        if path.is_symlink():
            raise DataError(
                f"{path} is a symbolic link; bnn-bench writes no file through a link (remove it)"
            ) from exc
        raise


def check_writable_dir(directory: Path) -> None:
    """Raise OSError unless a file can be created in `directory`: the probe is a fresh
    O_EXCL|O_NOFOLLOW file with a random name, so no file or link already there is touched."""
    fd, tmp = _create_temporary(Path(directory), "write-probe")
    os.close(fd)
    tmp.unlink()


class MetricsFile:
    """metrics.jsonl: one JSON object per line, flushed as written."""

    def __init__(self, path: Path):
        self._f = os.fdopen(open_append(Path(path)), "a", encoding="utf-8")

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

    def __init__(self, total: int, enabled: bool = True, stream=None, start: int = 0):
        self.total = total
        self.start = start  # iterations done before this process (a resumed run)
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.t0 = time.perf_counter()
        self._next_pct = 5

    def update(
        self,
        it: int,
        batch_size: int,
        ess: float,
        label: str = "ess",
        extra: str = "",
        fraction: float | None = None,
    ) -> None:
        """`fraction`: the share of the run done, where iterations do not say it (the exact SMC
        sampler's bridge steps); then the bar shows iterations without a total."""
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.t0
        if fraction is None:
            done = (it - self.start) / self.total
            frac, counter = it / self.total, f"{it}/{self.total}"
        else:
            done = frac = fraction
            counter = str(it)
        eta = elapsed / done * (1 - frac) if done > 0 else float("nan")
        pct = 100 * frac
        text = (
            f"iter {counter} | batch {batch_size} | {label} {ess:.1f} | "
            f"{extra + ' | ' if extra else ''}"
            f"{_fmt_time(elapsed)} elapsed, eta {_fmt_time(eta)}"
        )
        if self.tty:
            filled = int(24 * frac)
            bar = "#" * filled + "-" * (24 - filled)
            self.stream.write(f"\r[{bar}] {pct:5.1f}% {text}")
            if frac >= 1:
                self.stream.write("\n")
            self.stream.flush()
        elif pct >= self._next_pct or frac >= 1:
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


def new_run_id() -> str:
    """A W&B-style run id (8 lowercase alphanumerics), kept in checkpoints so a resume reuses it."""
    import string

    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


class WandbRun:
    """A W&B run that falls back to offline when online is impossible and always finishes."""

    def __init__(
        self,
        *,
        mode: str,
        project: str,
        entity,
        group,
        job_type,
        name,
        config,
        out_dir,
        run_id: str | None = None,
        resume: bool = False,
    ):
        self.run = None
        self.run_id = run_id
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
            id=run_id,
            resume="allow" if resume else None,
        )
        timeout = float(os.environ.get("WANDB_INIT_TIMEOUT", 30))
        try:
            self.run = wandb.init(
                mode=mode, settings=wandb.Settings(init_timeout=timeout), **kwargs
            )
        except Exception as exc:  # network or auth failure: keep the run, log offline
            if mode != "online":
                raise
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            print(f"[bnn-bench] W&B online failed ({first}); logging offline", file=sys.stderr)
            wandb.teardown()  # the failed online attempt still holds the run id
            self.run = wandb.init(mode="offline", **kwargs)

    def log(self, record: dict[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in record.items() if v is not None}, step=step)

    def images(self, paths: list[Path]) -> None:
        """Log PNG files as W&B images, keyed plots/<file stem> (e.g. plots/ess_batch)."""
        if self.run is not None and paths:
            import wandb

            self.run.log({f"plots/{Path(p).stem}": wandb.Image(str(p)) for p in paths})

    def summary(self, results: dict[str, Any]) -> None:
        if self.run is not None:
            for k, v in _jsonable(results).items():
                self.run.summary[k] = v

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None


def wandb_names(
    cfg, labels: tuple[str, ...], *, multirun: bool, sweep_dir: str
) -> tuple[str, str, str]:
    """W&B (group, job_type, name) of a job whose method names it by `labels` (Method.labels).

    group: logger.group, else the experiment, else the sweep directory's name in a multirun (one
    group per sweep), else "default". job_type: method/labels[0]; name: method-labels-seedN.
    """
    group = cfg.logger.group or cfg.experiment or (Path(sweep_dir).name if multirun else "default")
    method = cfg.method.name
    job_type = "/".join(str(v) for v in (method, *labels[:1]) if v)
    parts = [method, *labels, f"seed{cfg.seed}"]
    return str(group), job_type, "-".join(str(p) for p in parts if p)


class Reporter:
    """Sends every record to metrics.jsonl, W&B and the progress bar (showing `progress_key`)."""

    def __init__(
        self,
        out_dir: Path,
        wandb_run: WandbRun,
        *,
        total: int,
        progress_key: str,
        progress: bool = True,
        start: int = 0,
    ):
        self.metrics = MetricsFile(Path(out_dir) / "metrics.jsonl")
        self.progress = Progress(total, enabled=progress, start=start)
        self.progress_key = progress_key
        self.wandb = wandb_run
        self.run_id = wandb_run.run_id

    def record(self, record: dict[str, Any]) -> None:
        self.metrics.write(record)
        self.wandb.log(record, step=record["iter"])
        if "lambda" in record:  # the exact SMC sampler: the path's progress, acceptance, h
            extra = (
                f"lambda {record['lambda']:.3g} | accept {record['accept_mean']:.2f} | "
                f"h {record['step_size']:.3g} | distinct {record['distinct_particles']}"
            )
            self.progress.update(
                record["iter"],
                record["batch_size"],
                record["ess"],
                extra=extra,
                fraction=record["progress"],
            )
        elif self.progress_key in record:
            self.progress.update(
                record["iter"],
                record.get("batch_size", 0),
                record[self.progress_key],
                label=self.progress_key,
            )

    def close(self) -> None:
        self.progress.close()
        self.metrics.close()
