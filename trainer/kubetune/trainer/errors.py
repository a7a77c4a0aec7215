"""The errors that map to the trainer's exit codes (defined in ``kubetune.api.exitcodes``, which the operator's
pod failure policy reads too)."""

from __future__ import annotations

from kubetune.api.exitcodes import (  # noqa: F401 - re-exported for the trainer's modules
    EXIT_CONFIG,
    EXIT_DIVERGED,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PREEMPTED,
    NON_RETRYABLE,
)


class ConfigError(Exception):
    """The spec or the data is unusable; the message names the field or the row."""


class DivergedError(Exception):
    """The training loss is no longer finite."""


class PreemptedError(Exception):
    """SIGTERM arrived; a checkpoint was written at the end of the current step."""
