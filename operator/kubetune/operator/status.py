"""Pure status computation: what exists now (the worker Job, its pods, rank 0's progress) and ``now`` in,
the FineTuneJob's status out, with the condition transitions a handler turns into Events.

Nothing here remembers events: the status is recomputed from the children each time, keeping only what the
children cannot tell again (the last progress of a suspended job, transition times, the start time).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kubetune.api.data import SMALL_SPLIT_ROWS
from kubetune.api.enums import ConditionStatus, ConditionType, Phase
from kubetune.api.exitcodes import EXIT_CONFIG, EXIT_DIVERGED, EXIT_REGRESSED
from kubetune.api.reasons import Reason, message
from kubetune.api.spec import FineTuneJob
from kubetune.api.status import (
    CheckpointStatus,
    Condition,
    EvaluationResults,
    FineTuneJobStatus,
    GateCheck,
    LatestMetrics,
    Progress,
    RetentionResults,
    StageStatus,
    WorkerCounts,
)

from . import gate
from .builders import CONTAINER

MESSAGE_LIMIT = 2000
"""Characters of a worker's termination message (its summary or last log lines) kept in a condition message."""
WARNING_REASONS = {
    Reason.INVALID_SPEC, Reason.WORKER_FAILED, Reason.RESTARTS_EXHAUSTED, Reason.CONFIGURATION_ERROR,
    Reason.DEADLINE_EXCEEDED, Reason.DIVERGED, Reason.MISSING_REFERENCE, Reason.VALIDATION_LOSS_RISING,
    Reason.RETENTION_REGRESSED, Reason.SMALL_SPLITS, Reason.GATE_FAILED, Reason.NO_TRIAL_SUCCEEDED, Reason.NO_OBJECTIVE,
}  # fmt: skip


@dataclass(frozen=True)
class Transition:
    """A condition that changed status or reason: one Kubernetes Event."""

    type: str
    reason: str
    message: str

    @property
    def event_type(self) -> str:
        return "Warning" if self.reason in WARNING_REASONS else "Normal"


def is_true(current: Any, kind: ConditionType) -> bool:
    """Whether ``current`` (a FineTuneJob's or FineTuneSweep's status, or None) has condition ``kind`` True."""
    return current is not None and any(c.type == kind and c.status == ConditionStatus.TRUE for c in current.conditions)


def rejected(text: str, generation: int | None, now: datetime) -> dict[str, Any]:
    """The status patch of an object whose spec is invalid: Accepted=False (InvalidSpec), phase Failed."""
    conditions: list[Condition] = []
    set_condition(conditions, ConditionType.ACCEPTED, ConditionStatus.FALSE, Reason.INVALID_SPEC,
                  message(Reason.INVALID_SPEC, text), generation, now)  # fmt: skip
    return {"conditions": [c.model_dump(mode="json", by_alias=True) for c in conditions],
            "phase": Phase.FAILED.value, "observedGeneration": generation}  # fmt: skip


def conditioner(status: Any, transitions: list[Transition], generation: int | None, now: datetime) -> Any:
    """``condition(kind, ok, reason, text=None)``: sets a condition of ``status`` (a FineTuneJob's or a
    FineTuneSweep's); a change that succeeds, or
    fails with a warning reason, is appended to ``transitions`` (an Event)."""

    def condition(kind: ConditionType, ok: bool, reason: Reason, text: str | None = None) -> None:
        text = text if text is not None else message(reason)
        state = ConditionStatus.TRUE if ok else ConditionStatus.FALSE
        if set_condition(status.conditions, kind, state, reason, text, generation, now) and (
            ok or reason in WARNING_REASONS
        ):
            transitions.append(Transition(kind, reason, text))

    return condition


def set_condition(
    conditions: list[Condition],
    kind: ConditionType,
    status: ConditionStatus,
    reason: Reason,
    text: str,
    generation: int | None,
    now: datetime,
) -> bool:
    """Set one condition in place; lastTransitionTime moves only when status changes. True when status or
    reason changed (worth an Event)."""
    for i, old in enumerate(conditions):
        if old.type == kind:
            changed = old.status != status or old.reason != reason
            moved = old.last_transition_time if old.status == status else now
            conditions[i] = Condition(
                type=kind, status=status, reason=reason, message=text,
                observed_generation=generation, last_transition_time=moved,
            )  # fmt: skip
            return changed
    conditions.append(
        Condition(type=kind, status=status, reason=reason, message=text,
                  observed_generation=generation, last_transition_time=now)
    )  # fmt: skip
    return True


def output_location(job: FineTuneJob) -> str:
    """Where the results are, as a user would address them."""
    out = job.spec.output
    if out is None:
        return "scratch space of the workers (not kept; set spec.output)"
    if out.uri is not None:
        return out.uri
    assert out.pvc is not None
    return f"pvc://{out.pvc.claim_name}/{out.pvc.path}".rstrip("/")


def termination(pod: dict[str, Any]) -> tuple[int | None, str, dict[str, Any]]:
    """(exit code, raw message, parsed summary) of the trainer container's last termination."""
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        if container.get("name") != CONTAINER:
            continue
        state = (container.get("state") or {}).get("terminated") or {}
        if not state:
            continue
        text = state.get("message") or ""
        try:
            summary = json.loads(text)
        except ValueError:
            summary = {}
        return state.get("exitCode"), text, summary if isinstance(summary, dict) else {}
    return None, "", {}


def _last_failure(pods: list[dict[str, Any]], workers: int) -> tuple[int | None, str, dict[str, Any]]:
    """The termination that explains the latest failure: one that left a summary (rank 0 does) if any, else
    the first to end among the latest round of failures (the others usually died of losing that peer)."""
    failed = sorted(_failed(pods), key=_finished)
    with_summary = [t for t in map(termination, failed) if t[2].get("message")]
    if with_summary:
        return with_summary[-1]
    latest_round = failed[-workers:]
    return termination(latest_round[0]) if latest_round else (None, "", {})


def _finished(pod: dict[str, Any]) -> str:
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        state = (container.get("state") or {}).get("terminated") or {}
        if state.get("finishedAt"):
            return str(state["finishedAt"])
    return str(pod.get("metadata", {}).get("creationTimestamp") or "")


def _failed(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"]


def _index(pod: dict[str, Any]) -> int:
    annotations = pod.get("metadata", {}).get("annotations") or {}
    return int(annotations.get("batch.kubernetes.io/job-completion-index", "0"))


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _job_condition(worker_job: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for condition in (worker_job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return dict(condition)
    return None


def _failure(worker_job: dict[str, Any], pods: list[dict[str, Any]], job: FineTuneJob) -> tuple[Reason, str]:
    """Why the worker Job failed, with the failing worker's own words (its summary or last log lines)."""
    code, text, summary = _last_failure(pods, job.spec.resources.workers)
    detail = (summary.get("message") or text or "no message from the worker").strip()[-MESSAGE_LIMIT:]
    condition = _job_condition(worker_job, "Failed") or {}
    if code == EXIT_CONFIG:
        return Reason.CONFIGURATION_ERROR, message(Reason.CONFIGURATION_ERROR, detail)
    if code == EXIT_DIVERGED:
        return Reason.DIVERGED, message(Reason.DIVERGED, detail)
    if code == EXIT_REGRESSED:
        return Reason.RETENTION_REGRESSED, message(Reason.RETENTION_REGRESSED, detail)
    if condition.get("reason") == "DeadlineExceeded":
        return Reason.DEADLINE_EXCEEDED, message(Reason.DEADLINE_EXCEEDED, job.spec.active_deadline_seconds)
    failures = (worker_job.get("status") or {}).get("failed", 0)
    return Reason.RESTARTS_EXHAUSTED, f"{message(Reason.RESTARTS_EXHAUSTED, failures)} Last worker output: {detail}"


def _progress(
    job: FineTuneJob, previous: FineTuneJobStatus, report: dict[str, Any] | None, now: datetime
) -> tuple[Progress | None, LatestMetrics | None, CheckpointStatus | None]:
    """Progress, metrics and checkpoint from rank 0's report; the previous ones when there is no report."""
    if not report or "step" not in report:
        return previous.progress, previous.metrics, previous.checkpoint
    step, total = int(report["step"]), int(report.get("totalSteps") or 0)
    eta = report.get("etaSeconds")
    progress = Progress(
        step=step,
        total_steps=total or None,
        epoch=float(report.get("epoch", 0)),
        percentage=min(100, math.floor(100 * step / total)) if total else 0,
        estimated_completion_time=now + timedelta(seconds=float(eta)) if eta is not None else None,
        update_time=now,
    )
    metrics = LatestMetrics(
        loss=report.get("loss"),
        learning_rate=report.get("learningRate"),
        tokens_per_second=report.get("tokensPerSecond"),
        validation_loss=report.get("validationLoss", previous.metrics.validation_loss if previous.metrics else None),
        best_validation_metric=report.get("bestValidationMetric"),
        best_step=report.get("bestStep"),
    )
    checkpoint = previous.checkpoint
    out = job.spec.output
    if report.get("checkpointStep") and out is not None and out.pvc is not None:
        step_dir = f"checkpoints/step-{int(report['checkpointStep']):08d}"
        checkpoint = CheckpointStatus(
            step=int(report["checkpointStep"]),
            location=f"{output_location(job)}/{step_dir}",
            time=datetime.fromtimestamp(float(report["checkpointTime"]), now.tzinfo)
            if report.get("checkpointTime")
            else now,
        )
    return progress, metrics, checkpoint


def _final_metrics(previous: LatestMetrics | None, final: dict[str, Any]) -> LatestMetrics:
    """The latest metrics updated with the last step's figures from rank 0's final summary."""
    fields = {"loss": "loss", "learningRate": "learning_rate", "tokensPerSecond": "tokens_per_second",
              "validationLoss": "validation_loss", "bestValidationMetric": "best_validation_metric",
              "bestStep": "best_step", "lastValidationMetric": "last_validation_metric",
              "deliveredStep": "delivered_step"}  # fmt: skip
    update = {name: final[key] for key, name in fields.items() if final.get(key) is not None}
    return (previous or LatestMetrics()).model_copy(update=update)


def _stages(report: dict[str, Any]) -> list[StageStatus] | None:
    stages = report.get("stages")
    if not stages:
        return None
    return [
        StageStatus(name=str(s["name"]), phase=str(s["phase"]), steps=s.get("steps"),
                    test={k: float(v) for k, v in (s.get("test") or {}).items()})
        for s in stages
    ]  # fmt: skip


def _verdicts(report: dict[str, Any], status: FineTuneJobStatus, condition: Any, finished: bool) -> None:
    """Stages, the overfitting verdict, the data warnings and the retention results from rank 0's progress or
    final summary."""
    if (stages := _stages(report)) is not None:
        status.stages = stages
        status.current_stage = None if finished else report.get("stage")
    overfit = report.get("overfitting")
    if overfit is not None:
        if overfit.get("detected"):
            text = message(
                Reason.VALIDATION_LOSS_RISING,
                overfit["bestValidationLoss"],
                overfit["bestStep"],
                overfit["validationLoss"],
                overfit["step"],
                overfit["trainLossAtBest"],
                overfit["trainLoss"],
            )
            condition(ConditionType.OVERFITTING, True, Reason.VALIDATION_LOSS_RISING, text)
        else:
            condition(ConditionType.OVERFITTING, False, Reason.NO_OVERFITTING)
    if (warnings := report.get("dataWarnings")) is not None:
        if warnings:
            condition(ConditionType.DATA_SUFFICIENT, False, Reason.SMALL_SPLITS, message(Reason.SMALL_SPLITS,
                      "; ".join(warnings))[:MESSAGE_LIMIT])  # fmt: skip
        else:
            condition(ConditionType.DATA_SUFFICIENT, True, Reason.SPLITS_SUFFICIENT,
                      message(Reason.SPLITS_SUFFICIENT, SMALL_SPLIT_ROWS))  # fmt: skip
    if (kept := report.get("retention")) is not None:
        status.retention = RetentionResults(
            before=kept["before"],
            after=kept["after"],
            regression=kept["regression"],
            max_regression=kept.get("maxRegression"),
        )


def _promotable(condition: Any, passed: bool, checks: list[GateCheck]) -> None:
    names = ", ".join(c.name for c in checks if c.passed == passed)
    if not checks:
        condition(ConditionType.PROMOTABLE, True, Reason.NO_GATE)
    elif passed:
        condition(ConditionType.PROMOTABLE, True, Reason.GATE_PASSED, message(Reason.GATE_PASSED, names))
    else:
        condition(ConditionType.PROMOTABLE, False, Reason.GATE_FAILED, message(Reason.GATE_FAILED, names))


def compute(
    job: FineTuneJob,
    worker_job: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    report: dict[str, Any] | None,
    now: datetime,
) -> tuple[FineTuneJobStatus, list[Transition]]:
    """The status of ``job`` given its worker Job (None: not created yet), that Job's pods and rank 0's
    ``/progress`` document (None: not reachable)."""
    previous = job.status or FineTuneJobStatus()
    generation = job.metadata.get("generation")
    status = previous.model_copy(deep=True)
    status.observed_generation = generation
    status.output_location = output_location(job)
    transitions: list[Transition] = []

    condition = conditioner(status, transitions, generation, now)

    status.progress, status.metrics, status.checkpoint = _progress(job, previous, report, now)
    if report:
        _verdicts(report, status, condition, finished=False)
    if worker_job is None:
        status.phase = Phase.PENDING
        return status, transitions

    counts = worker_job.get("status") or {}
    workers = job.spec.resources.workers
    status.workers = WorkerCounts(
        active=int(counts.get("active", 0)), succeeded=int(counts.get("succeeded", 0)),
        failed=int(counts.get("failed", 0)),
    )  # fmt: skip
    status.restarts = math.ceil(status.workers.failed / workers)
    status.start_time = status.start_time or _time(counts.get("startTime"))
    running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running" and not _deleting(p)]
    suspended = bool(worker_job.get("spec", {}).get("suspend"))

    if (done := _job_condition(worker_job, "Complete")) is not None:
        rank0 = next((p for p in pods if _index(p) == 0 and p["status"].get("phase") == "Succeeded"), None)
        _, _, summary = termination(rank0) if rank0 else (None, "", {})
        if summary.get("test") or summary.get("baseline"):
            status.evaluation = EvaluationResults(
                test=summary.get("test", {}),
                baseline=summary.get("baseline", {}),
                few_shot={k: v for k, v in (summary.get("fewShot") or {}).items() if k != "k"},
                tasks=summary.get("tasks") or {},
            )
        _verdicts(summary, status, condition, finished=True)
        passed, checks = gate.evaluate(job.spec, status.evaluation, status.retention)
        status.gate = checks or None
        _promotable(condition, passed, checks)
        final = summary.get("final") or {}
        if summary.get("steps") is not None:  # a short run may end between two progress reads
            steps = int(summary["steps"])
            total = status.progress.total_steps if status.progress else None
            epoch = final.get("epoch", status.progress.epoch if status.progress else 0.0)
            status.progress = Progress(
                step=steps, total_steps=total or steps, percentage=100, epoch=float(epoch), update_time=now
            )
        if final:
            status.metrics = _final_metrics(status.metrics, final)
        status.completion_time = _time(counts.get("completionTime")) or _time(done.get("lastTransitionTime")) or now
        condition(ConditionType.RUNNING, False, Reason.COMPLETED, message(Reason.COMPLETED, status.output_location))
        condition(ConditionType.SUCCEEDED, True, Reason.COMPLETED, message(Reason.COMPLETED, status.output_location))
        status.phase = Phase.SUCCEEDED
    elif (failed := _job_condition(worker_job, "Failed")) is not None:
        reason, text = _failure(worker_job, pods, job)
        status.completion_time = _time(failed.get("lastTransitionTime")) or now
        status.restarts = max(status.restarts - 1, 0)  # the last round of failures was not restarted
        condition(ConditionType.RUNNING, False, reason, text)
        condition(ConditionType.FAILED, True, reason, text)
        status.phase = Phase.FAILED
    elif suspended:
        condition(ConditionType.RUNNING, False, Reason.SUSPENDED)
        condition(ConditionType.SUSPENDED, True, Reason.SUSPENDED)
        status.phase = Phase.SUSPENDED
    else:
        if is_true(status, ConditionType.SUSPENDED):
            condition(ConditionType.SUSPENDED, False, Reason.RESUMED)
        if len(running) >= workers:
            phase = (report or {}).get("phase")
            if phase == "Evaluating":
                condition(ConditionType.RUNNING, True, Reason.EVALUATING)
            else:
                step = status.progress.step if status.progress else 0
                total = status.progress.total_steps if status.progress else None
                condition(ConditionType.RUNNING, True, Reason.TRAINING, message(Reason.TRAINING, step, total or "?"))
        elif status.workers.failed:
            _, text, summary = _last_failure(pods, workers)
            detail = (summary.get("message") or text).strip()[-MESSAGE_LIMIT:]
            used = message(Reason.WORKER_FAILED, status.restarts, job.spec.max_restarts)
            condition(ConditionType.RUNNING, False, Reason.WORKER_FAILED, f"{used} {detail}".strip())
        elif unresolved := _unresolved(pods):  # a Secret or key the kubelet cannot find: wait, naming it
            condition(ConditionType.RUNNING, False, Reason.MISSING_REFERENCE,
                      message(Reason.MISSING_REFERENCE, unresolved)[:MESSAGE_LIMIT])  # fmt: skip
        else:
            pending = workers - len(running)
            condition(ConditionType.RUNNING, False, Reason.WORKERS_PENDING, message(Reason.WORKERS_PENDING, pending))
        status.phase = Phase.RUNNING if len(running) >= workers else Phase.PENDING
    return status, transitions


def _unresolved(pods: list[dict[str, Any]]) -> str:
    """What the kubelet could not resolve for a worker's container (a missing Secret or ConfigMap, or key),
    from its waiting state: the operator learns it without reading any Secret."""
    found = []
    for pod in sorted(pods, key=_index):
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") == "CreateContainerConfigError":
                found.append(f"worker {_index(pod)}: {waiting.get('message') or 'a referenced object is missing'}")
    return "; ".join(dict.fromkeys(found))


def _deleting(pod: dict[str, Any]) -> bool:
    return bool(pod.get("metadata", {}).get("deletionTimestamp"))


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
