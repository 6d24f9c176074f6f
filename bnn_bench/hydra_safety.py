"""What Hydra's own config sections may name, checked on the composed `hydra:` node before Hydra
starts (issue 17, item 4).

Hydra instantiates or calls what several of its sections name: `hydra.callbacks` (any
`_target_`, called at run start), `hydra.launcher` and `hydra.sweeper` (their `_target_`),
`hydra.job_logging` / `hydra.hydra_logging` (passed to logging.config.dictConfig, whose `()` key
calls any callable and whose `class` key instantiates any class; `ext://` imports any module),
`hydra.job.env_set` (environment variables such as LD_PRELOAD or PYTHONSTARTUP make later
processes load code), `hydra.launcher.setup` (shell lines run before each SLURM job) and
`hydra.searchpath` (a `pkg://` entry imports a package). The allow-list, per section:

- hydra.callbacks: none (bnn-bench uses no Hydra callback).
- hydra.launcher._target_: Hydra's basic launcher, the joblib launcher and the submitit SLURM and
  local launchers (`hydra/launcher=joblib`, `slurm`, `submitit_slurm`, `submitit_local`).
- hydra.sweeper._target_: Hydra's basic sweeper (the one bnn-bench's preflight can expand).
- any other `_target_` under `hydra:`: none.
- logging: `class` one of LOGGING_CLASSES, no `()` factories, `ext://` only sys.stdout and
  sys.stderr, file handlers only under the job's output directory.
- hydra.job.env_set: no variable that makes a program load code (CODE_LOADING_ENV).
- hydra.launcher.setup: `export NAME=VALUE` lines without shell syntax.
- hydra.searchpath: `file://` entries and plain paths, not `pkg://` (checked on the command line
  before composing, as composing would import the package).

Everything else under `hydra:` (output directories, job names, SLURM resources) names no code.
"""

from __future__ import annotations

import re
from typing import Any

from bnn_bench.errors import ConfigError

LAUNCHERS = (
    "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
    "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
)
SWEEPERS = ("hydra._internal.core_plugins.basic_sweeper.BasicSweeper",)
LOGGING_CLASSES = (
    "logging.StreamHandler",
    "logging.FileHandler",
    "logging.NullHandler",
    "logging.handlers.RotatingFileHandler",
    "logging.handlers.WatchedFileHandler",
    "logging.Formatter",
)
LOGGING_STREAMS = ("ext://sys.stdout", "ext://sys.stderr")
LOG_DIRS = ("${hydra.runtime.output_dir}/", "${hydra:runtime.output_dir}/")
CODE_LOADING_ENV = re.compile(
    r"^(LD_.*|DYLD_.*|PYTHON.*|PATH|BASH_ENV|ENV|PERL5?LIB|PERL5OPT|RUBYOPT|RUBYLIB|NODE_OPTIONS"
    r"|GCONV_PATH|JAVA_TOOL_OPTIONS|_JAVA_OPTIONS|SHELLOPTS|PS4|PROMPT_COMMAND|IFS)$"
)
SETUP_LINE = re.compile(r"^export [A-Za-z_][A-Za-z0-9_]*=[A-Za-z0-9_./:,=+@%-]*$")


def check_searchpath_overrides(overrides: list[str]) -> None:
    """Refuse a `pkg://` search path on the command line before anything composes it."""
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key.startswith("hydra.searchpath") and "pkg://" in override:
            raise ConfigError(
                f"{override} is not allowed: a pkg:// search path imports a package; add "
                "config directories as file://DIR"
            )


def check_hydra(hydra: dict[str, Any]) -> None:
    """Refuse anything under the composed `hydra:` node (a plain dict, unresolved) that names code
    outside the allow-list of this module's docstring; one line naming the key."""
    callbacks = hydra.get("callbacks") or {}
    if callbacks:
        name = next(iter(callbacks)) if isinstance(callbacks, dict) else "0"
        raise ConfigError(
            f"hydra.callbacks.{name} is not allowed: bnn-bench runs no Hydra callback (a "
            "callback's _target_ is code Hydra would call)"
        )
    _check_target(hydra, "launcher", LAUNCHERS, "hydra/launcher=basic, joblib or slurm")
    _check_target(hydra, "sweeper", SWEEPERS, "Hydra's basic sweeper")
    for section, node in hydra.items():
        if section not in ("launcher", "sweeper"):
            _no_targets(node, f"hydra.{section}")
    for section in ("job_logging", "hydra_logging"):
        _check_logging(hydra.get(section) or {}, f"hydra.{section}")
    env = ((hydra.get("job") or {}).get("env_set")) or {}
    for name in env:
        if CODE_LOADING_ENV.match(str(name)):
            raise ConfigError(
                f"hydra.job.env_set.{name} is not allowed: {name} makes programs load code; set "
                "it in your shell if you need it"
            )
    setup = (hydra.get("launcher") or {}).get("setup") or []
    for i, line in enumerate(setup if isinstance(setup, list) else [setup]):
        if not SETUP_LINE.match(str(line)):
            raise ConfigError(
                f"hydra.launcher.setup[{i}]={line!r} is not allowed: only `export NAME=VALUE` "
                "lines (letters, digits and ./:,=+@%-) may run before a job"
            )
    for entry in hydra.get("searchpath") or []:
        if str(entry).startswith("pkg://"):
            raise ConfigError(
                f"hydra.searchpath entry {entry} is not allowed: a pkg:// search path imports "
                "a package; add config directories as file://DIR"
            )


def _check_target(hydra: dict, section: str, allowed: tuple[str, ...], what: str) -> None:
    node = hydra.get(section) or {}
    target = node.get("_target_") if isinstance(node, dict) else None
    if target is not None and target not in allowed:
        raise ConfigError(
            f"hydra.{section}._target_={target} is not allowed; use {what} ({', '.join(allowed)})"
        )
    for key, value in node.items() if isinstance(node, dict) else ():
        if key != "_target_":
            _no_targets(value, f"hydra.{section}.{key}")


def _no_targets(node, prefix: str) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_":
                raise ConfigError(
                    f"{prefix}._target_={value} is not allowed: only hydra.launcher and "
                    "hydra.sweeper may name code for Hydra to instantiate"
                )
            _no_targets(value, f"{prefix}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _no_targets(value, f"{prefix}[{i}]")


def _check_logging(node, prefix: str) -> None:
    """A logging.config.dictConfig dict: known classes, no factories, safe streams and files."""
    if isinstance(node, list):
        for i, value in enumerate(node):
            _check_logging(value, f"{prefix}[{i}]")
        return
    if not isinstance(node, dict):
        if isinstance(node, str) and node.startswith("ext://") and node not in LOGGING_STREAMS:
            raise ConfigError(
                f"{prefix}={node} is not allowed: ext:// imports a module; use "
                f"{' or '.join(LOGGING_STREAMS)}"
            )
        return
    for key, value in node.items():
        where = f"{prefix}.{key}"
        if key == "()":
            raise ConfigError(
                f"{where}={value} is not allowed: a logging factory '()' calls code; use "
                f"class: with one of {', '.join(LOGGING_CLASSES)}"
            )
        if key == "class" and value not in LOGGING_CLASSES:
            raise ConfigError(
                f"{where}={value} is not allowed; use one of: {', '.join(LOGGING_CLASSES)}"
            )
        if key == "filename" and (
            not str(value).startswith(LOG_DIRS) or ".." in str(value).split("/")
        ):
            raise ConfigError(
                f"{where}={value} is not allowed: log files go in the job's output directory "
                "(${hydra.runtime.output_dir}/NAME)"
            )
        _check_logging(value, where)
