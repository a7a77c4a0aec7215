"""The trainer's exit codes: a contract between the trainer (which exits with them) and the operator (whose
Job pod failure policy reads them). 78 (configuration), 3 (diverged) and 4 (retention regressed) fail the
FineTuneJob at once, since a retry would fail the same way; any other failure is retried from the last checkpoint.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_DIVERGED = 3
"""The loss became NaN or infinite, or stayed far above its start: the same spec would diverge again."""
EXIT_REGRESSED = 4
"""The forgetting guard's retention loss rose beyond spec.forgettingGuard.maxRegression (onRegression Fail);
the outputs are saved, and a retry would train the same model."""
EXIT_HUNG = 5
"""A rank hung: the step-time watchdog (spec.training.stepTimeoutSeconds) stopped the round; retried from the last
checkpoint."""
EXIT_CONFIG = 78
"""EX_CONFIG: the spec or the data is wrong; retrying cannot help."""
EXIT_PREEMPTED = 143
"""Stopped by SIGTERM after writing a checkpoint (suspend, preemption); the next run resumes."""
NON_RETRYABLE = (EXIT_DIVERGED, EXIT_CONFIG, EXIT_REGRESSED)
