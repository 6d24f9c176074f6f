"""Shared helpers: run the real CLI in a subprocess, as a user would."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def cli_env(**changes: str | None) -> dict[str, str]:
    """The environment of a CLI run: W&B off unless `changes` say otherwise (None removes)."""
    env = {**os.environ, "WANDB_MODE": "disabled", "WANDB_SILENT": "true"}
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


CLI = [sys.executable, "-m", "bnn_bench.cli"]


def cli(
    *args: str, cwd: Path | None = None, timeout: int = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run `bnn-bench ARGS` with W&B off and a plain (non-tty) progress log."""
    env = env or cli_env()
    return subprocess.run(
        [*CLI, *args],
        cwd=cwd or REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def run_cli():
    return cli
