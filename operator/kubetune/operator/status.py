"""Pure status computation: what exists now (the worker Job, its pods, rank 0's progress) and ``now`` in,
the FineTuneJob's status out, with the condition transitions a handler turns into Events.

Nothing here remembers events: the status is recomputed from the children each time, keeping only what the
children cannot tell again (the last progress of a suspended job, transition times, the start time).

``compute`` takes the first branch that holds, as JobSet names each terminal transition:

=============================  ===========  ===========================================================
worker Job                     phase        conditions
=============================  ===========  ===========================================================
not created yet                Pending      (none new)
Complete=True                  Succeeded    Succeeded=True, Running=False (Completed); Promotable (gate)
Failed=True                    Failed       Failed=True, Running=False; the reason from the exit code:
                                            ConfigurationError, Diverged, RetentionRegressed, else
                                            DeadlineExceeded, OutOfMemory (the last failure was an
                                            OOMKilled worker) or RestartsExhausted
spec.suspend                   Suspended    Suspended=True, Running=False (Suspended)
otherwise, all workers Running Running      Running=True (Training or Evaluating)
otherwise                      Pending      Running=False: WorkerFailed (restarting), OutOfMemory
                                            (restarting), MissingReference, or WorkersPending
=============================  ===========  ===========================================================
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from kubetune.api.data import SMALL_SPLIT_ROWS
from kubetune.api.enums import ConditionType, Phase
from kubetune.api.exitcodes import EXIT_CONFIG, EXIT_DIVERGED, EXIT_REGRESSED
from kubetune.api.reasons import Reason, message
from kubetune.api.spec import FineTuneJob
from kubetune.api.status import (
    CheckpointStatus,
    EvaluationResults,
    FineTuneJobStatus,
    GateCheck,
    LatestMetrics,
    PreparedDataStatus,
    Progress,
    RetentionResults,
    StageStatus,
    WorkerCounts,
)
from kubetune.api.wire import FinalFigures, Overfitting, TrainerProgress, TrainerSummary, Verdicts

from . import children, gate
from .conditions import Conditions, Transition, is_true

MESSAGE_LIMIT = 2000
"""Characters of a worker's termination message (its summary or last log lines) kept in a condition message."""


def compute(
    job: FineTuneJob,
    worker_job: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    report: TrainerProgress | None,
    now: datetime,
    mounts: dict[str, str] | None = None,
) -> tuple[FineTuneJobStatus, list[Transition]]:
    """The status of ``job`` given its worker Job (None: not created yet), that Job's pods, rank 0's
    ``/progress`` document (None: not reachable) and the kubelet's mount failures by pod name."""
    previous = job.status or FineTuneJobStatus()
    generation = job.metadata.get("generation")
    status = previous.model_copy(deep=True)
    status.observed_generation = generation
    status.output_location = output_location(job)
    conditions = Conditions(status, generation, now)
    status.progress, status.metrics, status.checkpoint = _progress(job, previous, report, now)
    if report:
        _verdicts(report, status, conditions, finished=False)
    if worker_job is None:
        status.phase = Phase.PENDING
        return status, conditions.transitions
    counts = worker_job.get("status") or {}
    status.workers = WorkerCounts(
        active=int(counts.get("active", 0)),
        succeeded=int(counts.get("succeeded", 0)),
        failed=int(counts.get("failed", 0)),
    )
    status.restarts = math.ceil(status.workers.failed / job.spec.resources.workers)
    status.start_time = status.start_time or children.time(counts.get("startTime"))
    if (done := children.job_condition(worker_job, "Complete")) is not None:
        _succeeded(job, status, conditions, pods, done, counts, now)
    elif (failed := children.job_condition(worker_job, "Failed")) is not None:
        _failed(job, status, conditions, worker_job, pods, failed, now)
    elif worker_job.get("spec", {}).get("suspend"):
        _suspended(status, conditions)
    else:
        _active(job, status, conditions, pods, report, mounts or {})
    return status, conditions.transitions


def _succeeded(
    job: FineTuneJob,
    status: FineTuneJobStatus,
    conditions: Conditions,
    pods: list[dict[str, Any]],
    done: dict[str, Any],
    counts: dict[str, Any],
    now: datetime,
) -> None:
    """Complete: rank 0's final summary gives the evaluation, verdicts and last figures; the gate decides
    Promotable."""
    rank0 = next((p for p in pods if children.index(p) == 0 and children.phase(p) == "Succeeded"), None)
    summary = (children.termination(rank0)[2] if rank0 else None) or TrainerSummary(phase="Succeeded")
    if summary.test or summary.baseline:
        status.evaluation = EvaluationResults(
            test=summary.test or {},
            baseline=summary.baseline or {},
            few_shot=summary.few_shot or {},
            tasks=summary.tasks or {},
            samples=summary.samples,
        )
    _verdicts(summary, status, conditions, finished=True)
    passed, checks = gate.evaluate(job.spec, status.evaluation, status.retention)
    status.gate = checks or None
    _promotable(conditions, passed, checks)
    final = summary.final or FinalFigures()
    if summary.steps is not None:  # a short run may end between two progress reads
        total = status.progress.total_steps if status.progress else None
        epoch = final.epoch if final.epoch is not None else (status.progress.epoch if status.progress else 0.0)
        status.progress = Progress(
            step=summary.steps, total_steps=total or summary.steps, percentage=100, epoch=epoch, update_time=now
        )
    if summary.final is not None:
        status.metrics = _final_metrics(status.metrics, summary.final)
        written = _checkpoint(job, final.checkpoint_step, final.checkpoint_time, now)
        status.checkpoint = written or status.checkpoint
    finished = children.time(counts.get("completionTime")) or children.time(done.get("lastTransitionTime"))
    status.completion_time = finished or now
    text = message(Reason.COMPLETED, status.output_location)
    conditions.set(ConditionType.RUNNING, False, Reason.COMPLETED, text)
    conditions.set(ConditionType.SUCCEEDED, True, Reason.COMPLETED, text)
    status.phase = Phase.SUCCEEDED


def _failed(
    job: FineTuneJob,
    status: FineTuneJobStatus,
    conditions: Conditions,
    worker_job: dict[str, Any],
    pods: list[dict[str, Any]],
    failed: dict[str, Any],
    now: datetime,
) -> None:
    """Failed: the reason from the failing worker's exit code and words."""
    reason, text = _failure(worker_job, pods, job)
    status.completion_time = children.time(failed.get("lastTransitionTime")) or now
    status.restarts = max(status.restarts - 1, 0)  # the last round of failures was not restarted
    conditions.set(ConditionType.RUNNING, False, reason, text)
    conditions.set(ConditionType.FAILED, True, reason, text)
    status.phase = Phase.FAILED


def _suspended(status: FineTuneJobStatus, conditions: Conditions) -> None:
    conditions.set(ConditionType.RUNNING, False, Reason.SUSPENDED)
    conditions.set(ConditionType.SUSPENDED, True, Reason.SUSPENDED)
    status.phase = Phase.SUSPENDED


def _active(
    job: FineTuneJob,
    status: FineTuneJobStatus,
    conditions: Conditions,
    pods: list[dict[str, Any]],
    report: TrainerProgress | None,
    mounts: dict[str, str],
) -> None:
    """Neither finished nor suspended: Running once every worker runs, else Pending with what it waits for."""
    workers, running = job.spec.resources.workers, len(children.running(pods))
    if is_true(status, ConditionType.SUSPENDED):
        conditions.set(ConditionType.SUSPENDED, False, Reason.RESUMED)
    status.phase = Phase.RUNNING if running >= workers else Phase.PENDING
    if running >= workers and report is not None and report.phase == "Evaluating":
        conditions.set(ConditionType.RUNNING, True, Reason.EVALUATING)
    elif running >= workers:
        step = status.progress.step if status.progress else 0
        total = status.progress.total_steps if status.progress else None
        conditions.set(ConditionType.RUNNING, True, Reason.TRAINING, message(Reason.TRAINING, step, total or "?"))
    elif status.workers and status.workers.failed:
        _, text, summary = children.last_failure(pods, workers)
        detail = ((summary.message if summary else None) or text).strip()[-MESSAGE_LIMIT:]
        used = message(Reason.WORKER_FAILED, status.restarts, job.spec.max_restarts)
        if oom := _out_of_memory(job, pods, used):
            conditions.set(ConditionType.RUNNING, False, Reason.OUT_OF_MEMORY, oom)
        else:
            conditions.set(ConditionType.RUNNING, False, Reason.WORKER_FAILED, f"{used} {detail}".strip())
    elif unresolved := children.unresolved(pods):  # a Secret or key the kubelet cannot find: wait, naming it
        text = message(Reason.MISSING_REFERENCE, unresolved)[:MESSAGE_LIMIT]
        conditions.set(ConditionType.RUNNING, False, Reason.MISSING_REFERENCE, text)
    elif mounts:  # a volume the kubelet cannot attach or mount: its words, as for a missing Secret
        failed = "; ".join(f"{pod}: {words}" for pod, words in sorted(mounts.items()))
        conditions.set(
            ConditionType.RUNNING,
            False,
            Reason.VOLUME_MOUNT_FAILED,
            message(Reason.VOLUME_MOUNT_FAILED, failed)[:MESSAGE_LIMIT],
        )
    else:
        pending = message(Reason.WORKERS_PENDING, workers - running)
        conditions.set(ConditionType.RUNNING, False, Reason.WORKERS_PENDING, pending)


def output_location(job: FineTuneJob) -> str:
    """Where the results are, as a user would address them."""
    out = job.spec.output
    if out is None:
        return "scratch space of the workers (not kept; set spec.output)"
    if out.uri is not None:
        return out.uri
    assert out.pvc is not None
    return f"pvc://{out.pvc.claim_name}/{out.pvc.path}".rstrip("/")


def _failure(worker_job: dict[str, Any], pods: list[dict[str, Any]], job: FineTuneJob) -> tuple[Reason, str]:
    """Why the worker Job failed, with the failing worker's own words (its summary or last log lines)."""
    code, text, summary = children.last_failure(pods, job.spec.resources.workers)
    detail = ((summary.message if summary else None) or text or "no message from the worker").strip()[-MESSAGE_LIMIT:]
    condition = children.job_condition(worker_job, "Failed") or {}
    by_code = {
        EXIT_CONFIG: Reason.CONFIGURATION_ERROR,
        EXIT_DIVERGED: Reason.DIVERGED,
        EXIT_REGRESSED: Reason.RETENTION_REGRESSED,
    }
    by_error = {"DataChangedError": Reason.DATA_CHANGED, "OutputExistsError": Reason.OUTPUT_EXISTS}
    if code == EXIT_CONFIG and summary is not None and summary.reason in by_error:
        return by_error[summary.reason], message(by_error[summary.reason], detail)
    if code in by_code:
        return by_code[code], message(by_code[code], detail)
    if condition.get("reason") == "DeadlineExceeded":
        return Reason.DEADLINE_EXCEEDED, message(Reason.DEADLINE_EXCEEDED, job.spec.active_deadline_seconds)
    failures = (worker_job.get("status") or {}).get("failed", 0)
    if oom := _out_of_memory(job, pods, message(Reason.RESTARTS_EXHAUSTED, failures)):
        return Reason.OUT_OF_MEMORY, oom
    return Reason.RESTARTS_EXHAUSTED, f"{message(Reason.RESTARTS_EXHAUSTED, failures)} Last worker output: {detail}"


def _out_of_memory(job: FineTuneJob, pods: list[dict[str, Any]], then: str) -> str:
    """The OutOfMemory message when the latest failure was a worker killed at its memory limit, else ""."""
    pod = children.oom_killed(pods, job.spec.resources.workers)
    if pod is None:
        return ""
    return message(Reason.OUT_OF_MEMORY, children.index(pod), job.spec.resources.memory, then)[:MESSAGE_LIMIT]


def _progress(
    job: FineTuneJob, previous: FineTuneJobStatus, report: TrainerProgress | None, now: datetime
) -> tuple[Progress | None, LatestMetrics | None, CheckpointStatus | None]:
    """Progress, metrics and checkpoint from rank 0's report; the previous ones when there is no report."""
    if report is None or report.step is None:
        return previous.progress, previous.metrics, previous.checkpoint
    step, total = report.step, report.total_steps or 0
    progress = Progress(
        step=step,
        total_steps=total or None,
        epoch=report.epoch or 0.0,
        percentage=min(100, math.floor(100 * step / total)) if total else 0,
        estimated_completion_time=now + timedelta(seconds=report.eta_seconds)
        if report.eta_seconds is not None
        else None,
        update_time=now,
    )
    last_validation = previous.metrics.validation_loss if previous.metrics else None
    metrics = LatestMetrics(
        loss=report.loss,
        learning_rate=report.learning_rate,
        grad_norm=report.grad_norm,
        tokens_per_second=report.tokens_per_second,
        validation_loss=report.validation_loss if report.validation_loss is not None else last_validation,
        best_validation_metric=report.best_validation_metric,
        best_step=report.best_step,
    )
    checkpoint = _checkpoint(job, report.checkpoint_step, report.checkpoint_time, now) or previous.checkpoint
    return progress, metrics, checkpoint


def _checkpoint(job: FineTuneJob, step: int | None, written: float | None, now: datetime) -> CheckpointStatus | None:
    """The checkpoint of ``step`` (written at Unix time ``written``; on a URI, uploaded then) when the run keeps its
    output on a claim or a URI."""
    out = job.spec.output
    if not step or out is None:
        return None
    return CheckpointStatus(
        step=step,
        location=f"{output_location(job)}/checkpoints/step-{step:08d}",
        time=datetime.fromtimestamp(written, now.tzinfo) if written else now,
    )


def _final_metrics(previous: LatestMetrics | None, final: FinalFigures) -> LatestMetrics:
    """The latest metrics updated with the last step's figures from rank 0's final summary (those the metrics
    have: the epoch and the checkpoint go to status.progress and status.checkpoint)."""
    update = final.model_dump(exclude_none=True, include=set(LatestMetrics.model_fields))
    return (previous or LatestMetrics()).model_copy(update=update)


def _stages(report: Verdicts) -> list[StageStatus] | None:
    if not report.stages:
        return None
    return [StageStatus(name=s.name, phase=s.phase, steps=s.steps, test=s.test) for s in report.stages]


def _verdicts(report: Verdicts, status: FineTuneJobStatus, conditions: Conditions, finished: bool) -> None:
    """Stages, the overfitting verdict, the data warnings and the retention results from rank 0's progress or
    final summary."""
    if (stages := _stages(report)) is not None:
        status.stages = stages
        status.current_stage = None if finished else report.stage
    if (overfit := report.overfitting) is not None:
        _overfitting(overfit, conditions)
    if (warnings := report.data_warnings) is not None:
        if warnings:
            text = message(Reason.SMALL_SPLITS, "; ".join(warnings))[:MESSAGE_LIMIT]
            conditions.set(ConditionType.DATA_SUFFICIENT, False, Reason.SMALL_SPLITS, text)
        else:
            text = message(Reason.SPLITS_SUFFICIENT, SMALL_SPLIT_ROWS)
            conditions.set(ConditionType.DATA_SUFFICIENT, True, Reason.SPLITS_SUFFICIENT, text)
    if (prepared := report.prepared_data) is not None:
        status.prepared_data = PreparedDataStatus(fingerprint=prepared.fingerprint, reused=prepared.reused)
    if (kept := report.retention) is not None:
        status.retention = RetentionResults(
            before=kept.before, after=kept.after, regression=kept.regression, max_regression=kept.max_regression
        )


def _overfitting(overfit: Overfitting, conditions: Conditions) -> None:
    if not overfit.detected:
        conditions.set(ConditionType.OVERFITTING, False, Reason.NO_OVERFITTING)
        return
    figures = (overfit.best_validation_loss, overfit.best_step, overfit.validation_loss, overfit.step)
    text = message(Reason.VALIDATION_LOSS_RISING, *figures, overfit.train_loss_at_best, overfit.train_loss)
    conditions.set(ConditionType.OVERFITTING, True, Reason.VALIDATION_LOSS_RISING, text)


def _promotable(conditions: Conditions, passed: bool, checks: list[GateCheck]) -> None:
    names = ", ".join(c.name for c in checks if c.passed == passed)
    if not checks:
        conditions.set(ConditionType.PROMOTABLE, True, Reason.NO_GATE)
    elif passed:
        conditions.set(ConditionType.PROMOTABLE, True, Reason.GATE_PASSED, message(Reason.GATE_PASSED, names))
    else:
        conditions.set(ConditionType.PROMOTABLE, False, Reason.GATE_FAILED, message(Reason.GATE_FAILED, names))


def finished(status: FineTuneJobStatus | None) -> bool:
    return status is not None and status.phase in (Phase.SUCCEEDED, Phase.FAILED)


def expires_at(status: FineTuneJobStatus | None, ttl_seconds: int | None) -> datetime | None:
    """When a finished job outlives spec.ttlSecondsAfterFinished (None: never, or not finished)."""
    if ttl_seconds is None or status is None or not finished(status) or status.completion_time is None:
        return None
    return status.completion_time + timedelta(seconds=ttl_seconds)


def due(deadline: datetime | None, now: datetime) -> bool:
    """True once ``deadline`` (None: never) has come."""
    return deadline is not None and now >= deadline


def inputs_version(job: Any, worker_job: dict[str, Any] | None, pods: list[dict[str, Any]]) -> tuple[Any, ...]:
    """The resource versions of everything ``compute`` reads but rank 0's report: equal versions, equal status."""
    return (
        job.get("metadata", {}).get("resourceVersion"),
        (worker_job or {}).get("metadata", {}).get("resourceVersion"),
        tuple(sorted(str(p.get("metadata", {}).get("resourceVersion")) for p in pods)),
    )
