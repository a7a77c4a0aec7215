"""Trainer exit codes and the errors that map to them.

The operator's Job uses a pod failure policy on these codes: 78 (configuration) and 3 (diverged) fail the
FineTuneJob at once, since a retry would fail the same way; any other failure is retried from the last checkpoint.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_DIVERGED = 3
"""The loss became NaN or infinite: retrying with the same spec would diverge again."""
EXIT_CONFIG = 78
"""EX_CONFIG: the spec or the data is wrong; retrying cannot help."""
EXIT_PREEMPTED = 143
"""Stopped by SIGTERM after writing a checkpoint (suspend, preemption); the next run resumes."""
NON_RETRYABLE = (EXIT_DIVERGED, EXIT_CONFIG)


class ConfigError(Exception):
    """The spec or the data is unusable; the message names the field or the row."""


class DivergedError(Exception):
    """The training loss is no longer finite."""


class PreemptedError(Exception):
    """SIGTERM arrived; a checkpoint was written at the end of the current step."""
