"""Trainer exit codes and the configuration error that names the field or row at fault."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 78
"""EX_CONFIG: the spec or the data is wrong; retrying cannot help (the operator's Job does not retry it)."""
EXIT_DIVERGED = 3


class ConfigError(Exception):
    """The spec or the data is unusable; the message names the field or the row."""
