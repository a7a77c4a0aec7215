"""The trainer's exit codes: a contract between the trainer (which exits with them) and the operator (whose
Job pod failure policy reads them). 78 (configuration) and 3 (diverged) fail the FineTuneJob at once, since a
retry would fail the same way; any other failure is retried from the last checkpoint.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_DIVERGED = 3
"""The loss became NaN or infinite, or stayed far above its start: the same spec would diverge again."""
EXIT_CONFIG = 78
"""EX_CONFIG: the spec or the data is wrong; retrying cannot help."""
EXIT_PREEMPTED = 143
"""Stopped by SIGTERM after writing a checkpoint (suspend, preemption); the next run resumes."""
NON_RETRYABLE = (EXIT_DIVERGED, EXIT_CONFIG)
