"""Compose and validate every job of a command line before any work (and before Hydra creates an
output directory), so that bad input is answered with one line and exit code 2.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf, open_dict

from bnn_bench.config import register_configs, validate
from bnn_bench.errors import BnnBenchError, ConfigError

_PACKAGE_DIR = Path(__file__).resolve().parent
# A wheel carries conf/ as bnn_bench/conf (pyproject's package-dir); a source checkout or an
# editable install finds it beside the package.
CONFIG_DIR = next(
    (
        str(d)
        for d in (_PACKAGE_DIR / "conf", _PACKAGE_DIR.parent / "conf")
        if (d / "config.yaml").exists()
    ),
    str(_PACKAGE_DIR / "conf"),
)
register_configs()  # the schema, as `base_config` for conf/config.yaml's defaults list


def hydra_error_line(exc: BaseException) -> str:
    """Condense a Hydra/OmegaConf composition error into one line naming the key and the problem."""
    msg = str(exc).strip()
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    if "Could not find" in msg and "Available options in" in msg:
        # "In 'config': Could not find 'method/foo'" + "Available options in 'method':" + names
        missing = msg.split("Could not find '", 1)[1].split("'", 1)[0]
        group, _, option = missing.rpartition("/")
        start = next(i for i, ln in enumerate(lines) if ln.startswith("Available options"))
        options = []
        for ln in lines[start + 1 :]:
            if ln.startswith("Config search path") or ":" in ln:
                break
            options.append(ln)
        return f"{group}={option} is not an option; choose one of: {', '.join(options)}"
    if "Could not find" in msg:
        return lines[0].replace("In 'config': ", "")
    cause = exc.__cause__
    if cause is not None and str(cause).strip():
        cause_lines = [ln.strip() for ln in str(cause).splitlines() if ln.strip()]
        key = next(
            (ln.split(":", 1)[1].strip() for ln in cause_lines if ln.startswith("full_key")), ""
        )
        what = cause_lines[0]
        if "not in struct" in what:
            return f"{key or lines[0]}: unknown key (`bnn-bench --help` lists the keys)"
        return f"{key}: {what}" if key and key not in what else what
    return lines[0] if lines else type(exc).__name__


def job_overrides(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override list of every job a command line describes (sweeps expanded)."""
    if not multirun:
        return [overrides]
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides=overrides)
    batches = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [job for batch in batches for job in batch]


def preflight(argv: list[str]) -> None:
    """Compose and validate the config of every job the command line asks for; raise on error.

    Each job is composed with its `hydra:` node, which `hydra_safety.check_hydra` checks for
    code Hydra would run (callbacks, launchers, sweepers, logging, ...) before Hydra starts.
    """
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.core.global_hydra import GlobalHydra

    from bnn_bench.hydra_safety import check_hydra, check_searchpath_overrides

    args, _ = get_args_parser().parse_known_args(argv)
    if getattr(args, "experimental_rerun", None):
        raise ConfigError(
            "--experimental-rerun is not allowed: it unpickles a file (bnn-bench never "
            "unpickles); rerun with the job's overrides instead"
        )
    if args.help or args.hydra_help or args.cfg or args.info or args.shell_completion:
        return
    check_searchpath_overrides(args.overrides)
    config_dir, config_name, extra = _config_sources(args)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            jobs = job_overrides([*extra, *args.overrides], args.multirun)
            if args.multirun:
                jobs = _with_sweeper_params(compose, [*extra, *args.overrides], jobs[0])
            first = None
            for num, overrides in enumerate(jobs):
                try:
                    cfg = compose(
                        config_name=config_name, overrides=overrides, return_hydra_config=True
                    )
                except BnnBenchError:
                    raise
                except Exception as exc:
                    raise ConfigError(hydra_error_line(exc)) from exc
                check_hydra(OmegaConf.to_container(cfg.hydra, resolve=False))
                hydra_cfg = cfg.hydra
                with open_dict(cfg):
                    del cfg["hydra"]
                if "hardware" in cfg:
                    first = _backend_before_anything(cfg, hydra_cfg, args.multirun, first)
                if config_name == "config" and not args.config_path:
                    validate(cfg)  # a user's own primary config is validated when its job runs
                    from bnn_bench import build

                    # the reference must be readable and of this model/prior/likelihood/dataset
                    # (its test-set hashes are compared once the job has loaded the data)
                    build.check_reference(cfg, None, build.reference(cfg))
                _check_job_dir(cfg, hydra_cfg, args.multirun, num)
            key = "hydra.sweep.dir" if args.multirun else "hydra.run.dir"
            check_creatable(key, hydra_cfg.sweep.dir if args.multirun else hydra_cfg.run.dir)
    except BnnBenchError:
        raise
    except Exception as exc:  # override syntax errors and the like
        raise ConfigError(hydra_error_line(exc)) from exc
    finally:
        GlobalHydra.instance().clear()


def _backend_before_anything(cfg, hydra_cfg, multirun: bool, first):
    """Set up this process's JAX backend from the first job's hardware: before validate imports
    inference code (blackjax starts the backend at import). Jobs that a launcher runs in other
    processes set up their own; this process then only validates, on the CPU."""
    from bnn_bench import backend, build

    same_process = not multirun or str(hydra_cfg.launcher.get("_target_", "")).endswith(
        "BasicLauncher"
    )
    if not same_process:
        import jax

        if not backend.backend_started():
            jax.config.update("jax_platforms", "cpu")
        return first
    if first is None:
        return backend.configure_backend(cfg.hardware, build.cpu_scheduler(cfg))
    if backend.settings(cfg.hardware) != first:  # one process cannot run two backends
        backend.configure_backend(cfg.hardware)  # raises, naming the key that differs
    return first


def _check_job_dir(cfg, hydra_cfg, multirun: bool, num: int) -> None:
    """A job's directory may not hold a finished run (or a different one to resume) before
    Hydra writes its .hydra/ record there: the checks of rundir.resume_point, up front."""
    from bnn_bench.rundir import check_before_start

    try:
        config = OmegaConf.to_container(cfg, resolve=True)
        if multirun:
            if str(OmegaConf.to_container(hydra_cfg)["sweep"]["subdir"]) != "${hydra.job.num}":
                return
            directory = Path(str(hydra_cfg.sweep.dir)) / str(num)
        else:
            directory = Path(str(hydra_cfg.run.dir))
    except Exception:  # noqa: BLE001 - a value only Hydra can resolve: run_job checks it
        return
    check_before_start(directory, config)


def _config_sources(args) -> tuple[str, str, list[str]]:
    """(primary config directory, config name, extra overrides) as Hydra will read them, so that
    a user's --config-path, --config-name or --config-dir is checked like bnn-bench's own."""
    config_dir = CONFIG_DIR
    if args.config_path:
        if str(args.config_path).startswith("pkg://"):
            raise ConfigError("--config-path=pkg://... is not allowed: it imports a package")
        config_dir = str(Path(args.config_path).expanduser().absolute())
        if not Path(config_dir).is_dir():
            raise ConfigError(f"--config-path={args.config_path} is not a directory")
    extra = []
    if args.config_dir:
        directory = Path(args.config_dir).expanduser().absolute()
        if not directory.is_dir():
            raise ConfigError(f"--config-dir={args.config_dir} is not a directory")
        if any(o.split("=", 1)[0].lstrip("+~") == "hydra.searchpath" for o in args.overrides):
            raise ConfigError(
                "--config-dir and hydra.searchpath= together are not supported; list every "
                "directory in hydra.searchpath=[file://DIR,...]"
            )
        extra = [f"hydra.searchpath=[file://{directory}]"]
    return config_dir, args.config_name or "config", extra


def _with_sweeper_params(compose, overrides: list[str], first_job: list[str]) -> list[list[str]]:
    """Every job of a multirun, with the sweep a preset declares in `hydra.sweeper.params`.

    As Hydra's BasicSweeper does: the params come first and the command line's overrides after
    them, so a key given on the command line (e.g. proposal=hmc) replaces the preset's sweep.
    """
    try:
        params = compose(config_name="config", overrides=first_job, return_hydra_config=True)
        params = params.hydra.sweeper.get("params") or {}
    except Exception as exc:
        raise ConfigError(hydra_error_line(exc)) from exc
    swept = [f"{key}={value}" for key, value in params.items()]
    return job_overrides([*swept, *overrides], multirun=True)


def check_creatable(key: str, directory: str) -> None:
    """Refuse an output directory that cannot be made (its nearest existing parent must be a
    writable directory), before Hydra tries and fails with a traceback."""
    path = Path(directory).absolute()
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        what = "not a directory" if not parent.is_dir() else "not writable"
        raise ConfigError(f"{key}={directory} cannot be created: {parent} is {what}")
