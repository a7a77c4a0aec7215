"""Condition reasons and their messages, in one place (as JobSet keeps its reasons).

Reasons are CamelCase words; messages are sentences, some with ``{}`` fields filled by ``str.format``.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Every reason a FineTuneJob condition can carry."""

    SPEC_VALID = "SpecValid"
    INVALID_SPEC = "InvalidSpec"
    WORKERS_PENDING = "WorkersPending"
    TRAINING = "Training"
    EVALUATING = "Evaluating"
    COMPLETED = "Completed"
    WORKER_FAILED = "WorkerFailed"
    RESTARTS_EXHAUSTED = "RestartsExhausted"
    OUT_OF_MEMORY = "OutOfMemory"
    CONFIGURATION_ERROR = "ConfigurationError"
    DATA_CHANGED = "DataChanged"
    OUTPUT_IN_USE = "OutputInUse"
    CLAIM_ACCESS_MODE = "ClaimAccessMode"
    OUTPUT_EXISTS = "OutputExists"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"
    DIVERGED = "Diverged"
    MISSING_REFERENCE = "MissingReference"
    VOLUME_MOUNT_FAILED = "VolumeMountFailed"
    VALIDATION_LOSS_RISING = "ValidationLossRising"
    NO_OVERFITTING = "NoOverfitting"
    SPLITS_SUFFICIENT = "SplitsSufficient"
    SMALL_SPLITS = "SmallSplits"
    RETENTION_REGRESSED = "RetentionRegressed"
    GATE_PASSED = "GatePassed"
    GATE_FAILED = "GateFailed"
    NO_GATE = "NoGate"
    SERVING = "Serving"
    SERVER_STARTING = "ServerStarting"
    NOT_PROMOTABLE = "NotPromotable"
    TRIALS_RUNNING = "TrialsRunning"
    TRIAL_STOPPED = "TrialStopped"
    SWEEP_COMPLETED = "SweepCompleted"
    NO_TRIAL_SUCCEEDED = "NoTrialSucceeded"
    NO_OBJECTIVE = "NoObjective"


MESSAGES: dict[Reason, str] = {
    Reason.SPEC_VALID: "The spec is valid.",
    Reason.INVALID_SPEC: "The spec is invalid: {}",
    Reason.WORKERS_PENDING: "Waiting for {} worker(s) to start.",
    Reason.TRAINING: "Training: step {} of {}.",
    Reason.EVALUATING: "Evaluating on the test split.",
    Reason.COMPLETED: "Training finished; outputs are at {}.",
    Reason.WORKER_FAILED: "A worker failed; restarting from the last checkpoint ({} of {} restarts used).",
    Reason.RESTARTS_EXHAUSTED: "Worker pods failed {} times, more than spec.maxRestarts allows.",
    Reason.OUT_OF_MEMORY: "Worker {} was killed for using more memory than its limit, spec.resources.memory ({}) "
    "(OOMKilled); raise spec.resources.memory, or lower spec.training.perDeviceBatchSize or maxSeqLength. {}",
    Reason.CONFIGURATION_ERROR: "The trainer rejected the spec or data: {}",
    Reason.DATA_CHANGED: "The data changed since the checkpoint the job would resume from: {}",
    Reason.OUTPUT_IN_USE: "spec.output ({}) is, holds or lies in the output location of FineTuneJob {} ({}), which "
    "has not finished; this job starts when it finishes or is deleted.",
    Reason.CLAIM_ACCESS_MODE: "A claim cannot be mounted by every worker: {}",
    Reason.OUTPUT_EXISTS: "The output location holds a finished model of another spec: {}",
    Reason.DEADLINE_EXCEEDED: "The job ran longer than spec.activeDeadlineSeconds ({}s).",
    Reason.SUSPENDED: "The job is suspended; workers are stopped.",
    Reason.RESUMED: "The job was resumed.",
    Reason.DIVERGED: "Training diverged (the loss became NaN or stayed far above its start); retrying would too: {}",
    Reason.MISSING_REFERENCE: "Waiting for objects the spec refers to: {}",
    Reason.VOLUME_MOUNT_FAILED: "A worker's volumes cannot be mounted: {} (check the claim, its PersistentVolume and "
    "the storage driver; a ReadWriteOnce volume attached to another node cannot be attached here).",
    Reason.VALIDATION_LOSS_RISING: "Validation loss rose from {} (step {}) to {} (step {}) while training loss fell "
    "from {} to {}; consider early stopping, dropout, label smoothing or fewer epochs.",
    Reason.NO_OVERFITTING: "Validation loss has not risen while training loss fell.",
    Reason.SPLITS_SUFFICIENT: "Every split the job uses has at least {} rows.",
    Reason.SMALL_SPLITS: "Data too small to measure with: {}",
    Reason.RETENTION_REGRESSED: "Retention loss on held-out general data rose more than allowed: {}",
    Reason.GATE_PASSED: "Every promotion check holds: {}.",
    Reason.GATE_FAILED: "Not promotable: {} failed.",
    Reason.NO_GATE: "No promotion checks are declared; the succeeded job is promotable.",
    Reason.SERVING: "Serving {} at {} ({} of {} replicas ready).",
    Reason.SERVER_STARTING: "The inference server {} is starting ({} of {} replicas ready).",
    Reason.NOT_PROMOTABLE: "Not deployed: the job is not promotable.",
    Reason.TRIALS_RUNNING: "{} trial(s) running; {} of {} created.",
    Reason.TRIAL_STOPPED: "Stopped trial {} early: best validation metric {:.4g} is worse than the finished "
    "trials' median {:.4g}.",
    Reason.SWEEP_COMPLETED: "Every trial finished; the best is {} ({:.6g}) with {}.",
    Reason.NO_TRIAL_SUCCEEDED: "Every trial finished and none succeeded.",
    Reason.NO_OBJECTIVE: "Trials succeeded but none reported the objective {} (does the template validate?).",
}


def message(reason: Reason, *args: object) -> str:
    """The message of ``reason`` with its fields filled in."""
    return MESSAGES[reason].format(*args)
