"""Hardware set-up for one job: cores, platform, the compilation cache, devices, multi-host, and
the job's peak memory.

`configure` is called by run.py before any computation (XLA sizes its thread pools from the CPU
affinity and reads its flags when the backend starts).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from bnn_bench.errors import ConfigError


def configure(hardware, *, job_num: int, cpu_scheduler: str | None = None) -> list[int] | None:
    """Cores, then the JAX backend (platform, dtype, compilation cache, multi-host, XLA's CPU
    scheduler: a no-op when preflight already set it up in this process, bnn_bench.backend),
    then the device count; returns the pinned cores, if any."""
    from bnn_bench.backend import configure_backend

    h = hardware
    cores = pin_cores(h.cores_per_job, job_num) if h.cores_per_job else None
    configure_backend(h, cpu_scheduler)
    check_devices(h.devices)
    return cores


def process_fields(hardware) -> dict[str, int]:
    """Which process of a jax.distributed run wrote a results.json (hardware.distributed)."""
    if not hardware.distributed:
        return {}
    import jax

    return {"process_index": jax.process_index(), "process_count": jax.process_count()}


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (ru_maxrss: KiB on Linux, bytes on macOS).

    A process-wide high-water mark: in a multirun with the basic launcher (jobs share one
    process) a job reports the largest peak of the sweep so far; measure memory in single runs."""
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def pin_cores(cores_per_job: int, job_num: int) -> list[int]:
    """Restrict this process to `cores_per_job` of its allowed cores, chosen by the job number.

    Parallel sweep jobs (Hydra's joblib launcher) then share the machine instead of each starting
    a thread per core; XLA sizes its thread pools from the affinity mask.
    """
    cores = sorted(os.sched_getaffinity(0))
    size = min(cores_per_job, len(cores))
    slots = len(cores) // size
    first = (job_num % slots) * size
    chosen = cores[first : first + size]
    os.sched_setaffinity(0, chosen)
    return chosen


def enable_compilation_cache(directory: str) -> Path:
    """JAX's persistent compilation cache: a second run with the same shapes skips compiling."""
    import jax

    path = Path(directory).expanduser().absolute()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def check_devices(devices: int) -> None:
    """hardware.devices must exist."""
    import jax

    available = len(jax.devices())
    if devices > available:
        raise ConfigError(
            f"hardware.devices={devices} is not allowed; this machine has {available} "
            f"{jax.default_backend()} device(s)"
        )


def shard_particles(particle_tree, replicated_tree, devices: int):
    """Split the leading (particle) axis of `particle_tree` across the first `devices` devices
    and replicate `replicated_tree` (the data); jit then partitions every step accordingly."""
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(jax.devices()[:devices], ("particles",))
    split = NamedSharding(mesh, PartitionSpec("particles"))
    whole = NamedSharding(mesh, PartitionSpec())
    return jax.device_put(particle_tree, split), jax.device_put(replicated_tree, whole)
