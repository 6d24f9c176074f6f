"""The JAX backend of this process, set up from `hardware:` before anything touches it (item 3).

JAX reads the platform, x64, the persistent compilation cache and the multi-process set-up once,
when its backend starts, and importing blackjax already starts it (it jit-compiles at import). So
`configure_backend` runs first: in the CLI's preflight, straight after the first job's config is
composed and before anything imports inference code, and again (a no-op with the same settings)
in each job, which covers launchers that run jobs in other processes. A platform that is not
there is a one-line ConfigError (exit 2), never a silent fall-back to the CPU.

XLA's CPU scheduler (`hardware.cpu_scheduler`, resolved by build.cpu_scheduler) is an XLA flag,
read from XLA_FLAGS when the backend starts, so it is set here too; it changes memory and speed,
never results, so a later job in the same process runs with the first job's (results.json says
which: `cpu_scheduler`). XLA's default, concurrency, runs independent work side by side: the
unrolled particles of a convolutional model then all keep their activations alive at once
(docs/performance.md, "Memory").
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, NamedTuple

from bnn_bench.errors import ConfigError

JAX_PLATFORM = {"gpu": "cuda"}  # hardware.platform -> jax_platforms
CPU_SCHEDULERS = ("memory", "concurrency")
CPU_SCHEDULER_FLAG = "xla_cpu_enable_concurrency_optimized_scheduler"


class BackendSettings(NamedTuple):
    platform: str
    x64: bool
    compilation_cache: str | None
    distributed: bool
    coordinator_address: str | None
    num_processes: int | None
    process_id: int | None


_applied: BackendSettings | None = None
_cpu_scheduler: str | None = None  # what this process's XLA runs with (cpu_scheduler_in_effect)


def settings(hardware) -> BackendSettings:
    """What of `hardware:` the backend takes once per process."""
    cache = hardware.get("compilation_cache")
    return BackendSettings(
        platform=JAX_PLATFORM.get(hardware.platform, hardware.platform),
        x64=hardware.dtype == "float64",
        compilation_cache=str(Path(cache).expanduser().absolute()) if cache else None,
        distributed=bool(hardware.get("distributed", False)),
        coordinator_address=hardware.get("coordinator_address"),
        num_processes=hardware.get("num_processes"),
        process_id=hardware.get("process_id"),
    )


def backend_started() -> bool:
    from jax._src import xla_bridge

    return bool(xla_bridge._backends)


def configure_backend(hardware, cpu_scheduler: str | None = None) -> BackendSettings:
    """Apply `hardware:`'s platform, dtype, compilation cache and distributed set-up, and XLA's
    CPU scheduler (`cpu_scheduler`: memory | concurrency, auto already resolved; None leaves
    XLA's flags alone), to this process's JAX backend, then start it; a second call must ask for
    the same settings."""
    global _applied
    wanted = settings(hardware)
    if cpu_scheduler is not None and cpu_scheduler not in CPU_SCHEDULERS:
        raise ConfigError(
            f"hardware.cpu_scheduler={cpu_scheduler} is not allowed; use one of auto, "
            + ", ".join(CPU_SCHEDULERS)
        )
    if _applied is not None:
        if wanted != _applied:
            changed = [k for k in wanted._fields if getattr(wanted, k) != getattr(_applied, k)]
            raise ConfigError(
                f"hardware.{changed[0]}={getattr(wanted, changed[0])} is not allowed here: this "
                f"process already runs JAX with {changed[0]}={getattr(_applied, changed[0])} (a "
                "sweep with the basic launcher runs every job in one process); use the same "
                "hardware for every job, or hydra/launcher=joblib"
            )
        return _applied
    import jax

    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # no "no TPU" notices
    if backend_started():  # JAX already runs here (a test, an embedding program)
        active = jax.default_backend()
        if wanted.distributed or active != {"cuda": "gpu"}.get(wanted.platform, wanted.platform):
            raise ConfigError(
                f"hardware.platform={hardware.platform} is not allowed here: JAX already runs on "
                f"{active} in this process and cannot change platform or start distributed"
            )
    else:
        if cpu_scheduler is not None:
            _set_cpu_scheduler(cpu_scheduler)
        jax.config.update("jax_platforms", wanted.platform)
    jax.config.update("jax_enable_x64", wanted.x64)
    if wanted.compilation_cache:
        from bnn_bench.hardware import enable_compilation_cache

        enable_compilation_cache(wanted.compilation_cache)
    if wanted.distributed:
        _initialize_distributed(wanted)
    try:
        devices = jax.devices()
    except (RuntimeError, AssertionError) as exc:  # AssertionError: cuda with no GPU visible
        first = (str(exc).strip().splitlines() or [f"JAX found no {wanted.platform} device"])[0]
        first = first[:200]
        raise ConfigError(
            f"hardware.platform={hardware.platform} is not available on this machine ({first}); "
            "use hardware=cpu, or a machine and jax build with that platform"
        ) from exc
    if not devices:
        raise ConfigError(f"hardware.platform={hardware.platform}: JAX found no device")
    _applied = wanted
    return wanted


def _set_cpu_scheduler(choice: str) -> None:
    """Put XLA's CPU scheduler flag in XLA_FLAGS (read when the backend starts), unless the user's
    XLA_FLAGS already choose a scheduler: theirs is kept."""
    global _cpu_scheduler
    flags = os.environ.get("XLA_FLAGS", "")
    if CPU_SCHEDULER_FLAG in flags or "xla_cpu_scheduler_type" in flags:
        _cpu_scheduler = "XLA_FLAGS"
        return
    value = "false" if choice == "memory" else "true"
    os.environ["XLA_FLAGS"] = f"{flags} --{CPU_SCHEDULER_FLAG}={value}".strip()
    _cpu_scheduler = choice


def cpu_scheduler_in_effect() -> str | None:
    """memory | concurrency as bnn-bench set it, "XLA_FLAGS" where the user's flags chose, None
    where bnn-bench set none (JAX had started before it could, or none was asked for): XLA's
    default, or the caller's flags."""
    return _cpu_scheduler


def _initialize_distributed(s: BackendSettings) -> None:
    """jax.distributed.initialize with the configured coordinator and process ids; the ones left
    null are detected from the cluster's environment (SLURM, Open MPI, ...)."""
    import jax

    kwargs: dict[str, Any] = {}
    if s.coordinator_address:
        kwargs["coordinator_address"] = s.coordinator_address
    if s.num_processes is not None:
        kwargs["num_processes"] = s.num_processes
    if s.process_id is not None:
        kwargs["process_id"] = s.process_id
    try:
        jax.distributed.initialize(**kwargs)
    except (ValueError, TypeError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(
            f"hardware.distributed=true: jax.distributed.initialize failed ({first}); run "
            "inside a SLURM allocation, or set hardware.coordinator_address, "
            "hardware.num_processes and hardware.process_id"
        ) from exc


def reset_for_tests() -> None:
    """Forget what was applied (tests that configure twice in one process)."""
    global _applied
    _applied = None
