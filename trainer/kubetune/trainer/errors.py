"""The errors that map to the trainer's exit codes (defined in ``kubetune.api.exitcodes``, which the operator's
pod failure policy reads too)."""

from __future__ import annotations

from kubetune.api.exitcodes import EXIT_CONFIG as EXIT_CONFIG
from kubetune.api.exitcodes import EXIT_DIVERGED as EXIT_DIVERGED
from kubetune.api.exitcodes import EXIT_FAILED as EXIT_FAILED
from kubetune.api.exitcodes import EXIT_HUNG as EXIT_HUNG
from kubetune.api.exitcodes import EXIT_OK as EXIT_OK
from kubetune.api.exitcodes import EXIT_PREEMPTED as EXIT_PREEMPTED
from kubetune.api.exitcodes import EXIT_REGRESSED as EXIT_REGRESSED
from kubetune.api.exitcodes import NON_RETRYABLE as NON_RETRYABLE


class ConfigError(Exception):
    """The spec or the data is unusable; the message names the field or the row."""


class DataChangedError(ConfigError):
    """A resume found the data changed since its checkpoint (spec.checkpointing.onDataChange: Fail)."""


class OutputExistsError(ConfigError):
    """The output location holds a finished model of another spec, and spec.output.overwrite is not set."""


class DivergedError(Exception):
    """The training loss is no longer finite."""


class PreemptedError(Exception):
    """SIGTERM arrived; a checkpoint was written at the end of the current step."""


class RegressedError(Exception):
    """The retention loss rose beyond spec.forgettingGuard.maxRegression (the outputs are saved)."""
