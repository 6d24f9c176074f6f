"""User-facing errors: each carries one line that names the key or file and what is allowed.

run.py catches these, prints the line to stderr and exits with code 2 (no traceback).
"""


class BnnBenchError(Exception):
    """Base class for errors caused by user input (config values, files)."""


class ConfigError(BnnBenchError):
    """A config value is impossible: the message names the key, the value and what is allowed."""


class DataError(BnnBenchError):
    """A data file is missing or malformed: the message names the file and what was expected."""


class RunDiverged(Exception):
    """Every particle diverged: results.json gets status=diverged; exit code 1."""


class RunInterrupted(Exception):
    """SIGTERM arrived: a checkpoint was written; results.json gets status=interrupted; exit 143."""
