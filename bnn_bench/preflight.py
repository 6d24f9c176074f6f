"""Compose and validate every job of a command line before any work (and before Hydra creates an
output directory), so that bad input is answered with one line and exit code 2.
"""

from __future__ import annotations

import os
from pathlib import Path

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
    """Compose and validate the config of every job the command line asks for; raise on error."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.core.global_hydra import GlobalHydra

    args, _ = get_args_parser().parse_known_args(argv)
    if args.help or args.hydra_help or args.cfg or args.info or args.shell_completion:
        return
    if args.config_path or args.config_dir or args.config_name:
        return  # user-supplied config sources: Hydra reports their errors itself
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            jobs = job_overrides(args.overrides, args.multirun)
            if args.multirun:
                jobs = _with_sweeper_params(compose, args.overrides, jobs[0])
            for overrides in jobs:
                try:
                    cfg = compose(config_name="config", overrides=overrides)
                except BnnBenchError:
                    raise
                except Exception as exc:
                    raise ConfigError(hydra_error_line(exc)) from exc
                validate(cfg)
                from bnn_bench import build

                # the reference must be readable and of this model/prior/likelihood/dataset
                # (its test-set hashes are compared once the job has loaded the data)
                build.check_reference(cfg, None, build.reference(cfg))
            hydra_cfg = compose(
                config_name="config", overrides=overrides, return_hydra_config=True
            ).hydra
            key = "hydra.sweep.dir" if args.multirun else "hydra.run.dir"
            check_creatable(key, hydra_cfg.sweep.dir if args.multirun else hydra_cfg.run.dir)
    except BnnBenchError:
        raise
    except Exception as exc:  # override syntax errors and the like
        raise ConfigError(hydra_error_line(exc)) from exc
    finally:
        GlobalHydra.instance().clear()


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
