"""Readers of the raw child objects the operator watches (the worker Job and its pods, as dicts): their
conditions, phases, indexes, and the trainer container's termination (exit code, message, summary)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from kubetune.api.wire import TrainerSummary

CONTAINER = "trainer"
"""The trainer container's name in every worker pod (``builders`` names it so)."""
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
"""The annotation an Indexed Job gives each pod: its worker's rank."""


def index(pod: dict[str, Any]) -> int:
    """The worker rank of ``pod``."""
    annotations = pod.get("metadata", {}).get("annotations") or {}
    return int(annotations.get(COMPLETION_INDEX, "0"))


def phase(pod: dict[str, Any]) -> str | None:
    return (pod.get("status") or {}).get("phase")


def deleting(pod: dict[str, Any]) -> bool:
    return bool(pod.get("metadata", {}).get("deletionTimestamp"))


def running(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pods that are Running and not being deleted."""
    return [p for p in pods if phase(p) == "Running" and not deleting(p)]


def failed(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for p in pods if phase(p) == "Failed"]


def finished_at(pod: dict[str, Any]) -> str:
    """When the pod's container ended (its creation time when it has not): sorts pods by their end."""
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        state = (container.get("state") or {}).get("terminated") or {}
        if state.get("finishedAt"):
            return str(state["finishedAt"])
    return str(pod.get("metadata", {}).get("creationTimestamp") or "")


def termination(pod: dict[str, Any]) -> tuple[int | None, str, TrainerSummary | None]:
    """(exit code, raw message, the trainer's summary: None when the message is not one) of the trainer
    container's last termination."""
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        state = (container.get("state") or {}).get("terminated") or {}
        if container.get("name") != CONTAINER or not state:
            continue
        text = state.get("message") or ""
        return state.get("exitCode"), text, TrainerSummary.read(text) if text.startswith("{") else None
    return None, "", None


def oom_killed(pods: list[dict[str, Any]], workers: int) -> dict[str, Any] | None:
    """The pod of the latest round of failures whose container the kernel killed at its memory limit (the
    kubelet's ``OOMKilled``), if one was: the others usually died of losing that peer."""
    for pod in sorted(failed(pods), key=finished_at)[-workers:]:
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated") or {}
            if container.get("name") == CONTAINER and terminated.get("reason") == "OOMKilled":
                return pod
    return None


def last_failure(pods: list[dict[str, Any]], workers: int) -> tuple[int | None, str, TrainerSummary | None]:
    """The termination that explains the latest failure: one that left a summary (rank 0 does) if any, else
    the first to end among the latest round of failures (the others usually died of losing that peer)."""
    ended = sorted(failed(pods), key=finished_at)
    with_summary = [t for t in map(termination, ended) if t[2] is not None and t[2].message]
    if with_summary:
        return with_summary[-1]
    latest_round = ended[-workers:]
    return termination(latest_round[0]) if latest_round else (None, "", None)


def unresolved(pods: list[dict[str, Any]]) -> str:
    """What the kubelet could not resolve for a worker's container (a missing Secret or ConfigMap, or key),
    from its waiting state: the operator learns it without reading any Secret."""
    found = []
    for pod in sorted(pods, key=index):
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") == "CreateContainerConfigError":
                found.append(f"worker {index(pod)}: {waiting.get('message') or 'a referenced object is missing'}")
    return "; ".join(dict.fromkeys(found))


def creating(pods: list[dict[str, Any]], now: datetime, grace: timedelta) -> list[str]:
    """The workers bound to a node for over ``grace`` whose container has not been created (no state but
    ContainerCreating): a volume that fails to attach or mount keeps a pod there, and only the kubelet's events
    say why."""
    found = []
    for pod in sorted(pods, key=index):
        status = pod.get("status") or {}
        if phase(pod) != "Pending" or not (pod.get("spec") or {}).get("nodeName"):
            continue
        waiting = [
            ((c.get("state") or {}).get("waiting") or {}).get("reason") for c in status.get("containerStatuses") or []
        ]
        if any(reason != "ContainerCreating" for reason in waiting):
            continue
        scheduled: dict[str, Any] = next(
            (c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), {}
        )
        since = time(scheduled.get("lastTransitionTime") or pod["metadata"].get("creationTimestamp"))
        if since is not None and now - since >= grace:
            found.append(str(pod["metadata"]["name"]))
    return found


def rank0_ip(pods: list[dict[str, Any]]) -> str | None:
    """The pod IP of rank 0 while it runs (its /progress is worth reading), else None."""
    for pod in pods:
        annotations = pod["metadata"].get("annotations") or {}
        ip = (pod.get("status") or {}).get("podIP")
        if annotations.get(COMPLETION_INDEX) == "0" and ip and phase(pod) == "Running":
            return str(ip)
    return None


def job_condition(worker_job: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The worker Job's condition ``kind`` when it is True."""
    for condition in (worker_job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return dict(condition)
    return None


def time(value: str | None) -> datetime | None:
    """A Kubernetes timestamp ("...Z") as a datetime."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None
