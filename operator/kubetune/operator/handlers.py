"""kopf handlers: thin glue between FineTuneJob events and the pure builders and status functions.

Run: ``kopf run -m kubetune.operator.handlers --all-namespaces`` (the image's entrypoint).
"""

from __future__ import annotations

import copy
import json
import logging
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import kopf
from pydantic import ValidationError

from kubetune.api.enums import ConditionStatus, ConditionType, Phase
from kubetune.api.reasons import Reason, message
from kubetune.api.spec import GROUP, PLURAL, VERSION, FineTuneJob, FineTuneJobSpec
from kubetune.api.status import FineTuneJobStatus

from . import (
    admission,
    builders,
    children,
    conditions,
    kube,
    lineage,
    locations,
    metrics,
    persistence,
    serving,
    settings,
    status,
    validation,
)
from . import sweep_handlers as sweep_handlers  # the FineTuneSweep handlers, registered with kopf on import
from .naming import LABEL_COMPONENT, LABEL_JOB

SETTINGS = settings.current()
RESOURCE = (GROUP, VERSION, PLURAL)
MOUNT_GRACE = timedelta(seconds=10)
"""How long a bound worker may be ContainerCreating before the status looks for the kubelet's mount failures."""
Children = kopf.Index[tuple[str | None, str], dict[str, Any]]
"""An index of FineTuneJobs' children, keyed by (namespace, job name): what ``_summary`` keeps of each."""
Holders = kopf.Index[str, locations.Holder]
"""Every FineTuneJob's output location under one key (a URI location is shared across namespaces)."""
PROGRESS, DIFFBASE = persistence.MemoryProgressStorage(prefix=GROUP), persistence.MemoryDiffBaseStorage()
# All handlers of a cause in one cycle (kopf's default runs one per cycle): a new job's create and field handlers
# then share one annotation patch. Set at import: `kopf run` reads it before the startup handlers.
kopf.set_default_lifecycle(kopf.lifecycles.all_at_once)


class _QuietTimers(logging.Filter):
    """Drops kopf's "Timer 'refresh_status' succeeded." line: one per job per interval says nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(("Timer 'refresh_status' succeeded", "Timer 'sweep_refresh' succ"))


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.peering.name = SETTINGS.peering
    settings.peering.mandatory = True  # the chart installs kopf's peering CRDs: replicas never both act
    # kopf pauses every replica when two share a priority, so each process draws its own: the highest is
    # active, the others stand by. A replica killed without notice blocks the others for one lifetime.
    settings.peering.priority = SETTINGS.peering_priority or random.randint(1, 2**30)
    settings.peering.lifetime = 15
    settings.persistence.progress_storage = PROGRESS  # in memory: no bookkeeping patches (see persistence)
    settings.persistence.diffbase_storage = DIFFBASE
    settings.execution.max_workers = SETTINGS.max_workers  # sync handlers wait on the API, not on the CPU
    logging.getLogger("kopf.objects").addFilter(_QuietTimers())
    settings.posting.level = logging.WARNING  # our own Events mark transitions; no "handler succeeded" noise
    kube.ensure_peering(SETTINGS.peering)
    metrics.serve(SETTINGS.metrics_port)


@kopf.on.login()
async def login(**kwargs: Any) -> kopf.AiohttpSession | None:
    """kopf's default login (the kubernetes client's in-cluster config, else the kubeconfig), on a pool of at
    most ``$KUBETUNE_MAX_CONNECTIONS`` connections: kopf's default pool is unbounded, and a burst of new jobs
    opened hundreds of TLS connections, each holding its buffers for good."""
    info = kopf.login_via_client(**kwargs)
    if info is None:
        return None
    connector = aiohttp.TCPConnector(limit=SETTINGS.max_connections, ssl=info.as_ssl_context())
    session = aiohttp.ClientSession(
        connector=connector, headers=info.as_http_headers(), auth=info.as_aiohttp_basic_auth()
    )
    return kopf.AiohttpSession(
        aiohttp_session=session,
        server=info.server,
        default_namespace=info.default_namespace,
        expiration=info.expiration,
        priority=info.priority,
    )


@kopf.index("batch", "v1", "jobs", labels={LABEL_JOB: kopf.PRESENT, LABEL_COMPONENT: "workers"})
def worker_jobs(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """Each FineTuneJob's worker Job, kept current from the watch: a status refresh reads no API."""
    return {(namespace, labels[LABEL_JOB]): _summary(body, ("suspend",))}


@kopf.index("", "v1", "pods", labels={LABEL_JOB: kopf.PRESENT, LABEL_COMPONENT: "worker"})
def worker_pods(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """Each FineTuneJob's worker pods, kept current from the watch."""
    return {(namespace, labels[LABEL_JOB]): _summary(body, ("nodeName",))}


@kopf.index("apps", "v1", "deployments", labels={LABEL_JOB: kopf.PRESENT, LABEL_COMPONENT: serving.COMPONENT})
def servers(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """Each FineTuneJob's inference Deployment (spec.deploy), kept current from the watch."""
    return {(namespace, labels[LABEL_JOB]): _summary(body)}


@kopf.index(*RESOURCE)
def output_holders(body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """Each FineTuneJob's output location, kept current from the watch (the one-writer check)."""
    return {"all": locations.holder_of(_plain(body))}


@kopf.on.create(*RESOURCE)
@kopf.on.resume(*RESOURCE)  # type: ignore[arg-type]  # kopf's protocols omit index kwargs
def create_children(
    body: kopf.Body,
    patch: kopf.Patch,
    namespace: str | None,
    worker_jobs: Children,
    output_holders: Holders,
    **_: Any,
) -> None:
    """Validate, wait for the references and for the output location to be free, then create the spec ConfigMap,
    the headless Service and the worker Job (idempotently). A finished job's children are never made again (on a
    resume after they were deleted, say)."""
    with metrics.timed("create"):
        job = admission.parse_or_reject(body, patch, _job, lambda job: validation.problems(job.spec))
        namespace = namespace or "default"
        if status.finished(job.status):
            return
        job = _from_job(body, patch, job, namespace)
        _wait_for_references(job, patch, namespace)
        if _indexed(worker_jobs, namespace, job.name) is None:  # a job that started keeps its location
            _wait_for_location(body, patch, job, list(output_holders.get("all", [])))
        created: dict[str, Any] | None = None
        for child in builders.children(job, SETTINGS):
            kopf.adopt(child, owner=body)
            obj, new = kube.create(child)
            created = obj if new and child["kind"] == "Job" else created
        job.status = _accepted(job, patch, True, Reason.SPEC_VALID, message(Reason.SPEC_VALID))
        if created is not None:  # a new job's whole first status in this one patch, not in the timer's next
            _patch_status(body, patch, job, status.compute(job, created, [], None, datetime.now(UTC)))


@kopf.on.field(*RESOURCE, field="spec.suspend")  # type: ignore[arg-type]  # kopf's protocols omit index kwargs
def suspend_changed(new: Any, namespace: str | None, name: str, worker_jobs: Children, **_: Any) -> None:
    """spec.suspend is mirrored to the worker Job (level-triggered: compared with the Job as the index has it,
    so a change made while the operator was down is applied too); the Job controller stops or restarts the pods."""
    worker = _indexed(worker_jobs, namespace or "default", name)
    if worker is None or bool(worker["spec"].get("suspend")) == bool(new):  # none yet: it is made from the spec
        return
    with metrics.timed("suspend"):
        kube.set_suspend(worker["metadata"]["namespace"], worker["metadata"]["name"], bool(new))


@kopf.timer(*RESOURCE, interval=SETTINGS.status_interval_seconds, initial_delay=1)  # type: ignore[arg-type]
def refresh_status(
    body: kopf.Body,
    patch: kopf.Patch,
    namespace: str | None,
    name: str,
    memo: kopf.Memo,
    worker_jobs: Children,
    worker_pods: Children,
    **_: Any,
) -> None:
    """Recompute the status from the worker Job, its pods (both from the indexes above) and rank 0's progress;
    patch it when it changed. A tick whose inputs are the same as the last one's (no object changed, rank 0 not
    running, no TTL due) does nothing: with hundreds of waiting jobs that is most ticks."""
    namespace = namespace or "default"
    worker = _indexed(worker_jobs, namespace, name)
    pods = list(worker_pods.get((namespace, name), []))
    rank0, now = children.rank0_ip(pods), datetime.now(UTC)
    stuck = children.creating(pods, now, MOUNT_GRACE)  # its events are read, and the tick is never skipped
    inputs = status.inputs_version(body, worker, pods)
    if not (rank0 or stuck) and memo.get("status_inputs") == inputs and not status.due(memo.get("status_expires"), now):
        return
    with metrics.timed("status"):
        job = _job(body)
        expires = status.expires_at(job.status, job.spec.ttl_seconds_after_finished)
        memo["status_inputs"], memo["status_expires"] = inputs, expires
        if not _is_accepted(job.status) or status.finished(job.status):
            if status.due(expires, now):
                kube.delete_finetunejob(namespace, name)
            metrics.observe(namespace, name, job.status or FineTuneJobStatus())
            return
        report = (
            kube.progress(rank0, SETTINGS.trainer_metrics_port, SETTINGS.progress_timeout_seconds) if rank0 else None
        )
        mounts = kube.mount_failures(namespace, stuck) if stuck else {}
        computed = status.compute(job, worker, pods, report, now, mounts)
        metrics.observe(namespace, name, _patch_status(body, patch, job, computed))


def _deployable(body: kopf.Body, **_: Any) -> bool:
    return body.spec.get("deploy") is not None and body.status.get("phase") == Phase.SUCCEEDED.value


@kopf.timer(*RESOURCE, interval=SETTINGS.status_interval_seconds, initial_delay=1, when=_deployable)  # type: ignore[arg-type]
def deploy(
    body: kopf.Body, patch: kopf.Patch, namespace: str | None, name: str, memo: kopf.Memo, servers: Children, **_: Any
) -> None:
    """spec.deploy of a succeeded job: create the inference server (once the job is promotable) and report on it
    in the Deployed condition. A tick that sees the same job and server as the last one does nothing."""
    server = _indexed(servers, namespace or "default", name)
    inputs = (body.metadata.get("resourceVersion"), (server or {}).get("metadata", {}).get("resourceVersion"))
    if memo.get("deploy_inputs") == inputs:
        return
    with metrics.timed("deploy"):
        job, now = _job(body), datetime.now(UTC)
        if server is None and serving.promotable(job.status):
            for child in serving.children(job, SETTINGS):
                kopf.adopt(child, owner=body)
                kube.create(child)
        new = _patch_status(body, patch, job, serving.with_server(job, server, now))
        metrics.observe(namespace or "default", name, new)
        memo["deploy_inputs"] = inputs  # only once all went through: a failed create is tried again next tick


@kopf.on.event(*RESOURCE, when=lambda type, **_: type == "DELETED")
def forget_deleted(namespace: str | None, name: str, uid: str, **_: Any) -> None:
    """A deleted job's metric series and handler bookkeeping go with it (garbage collection deletes the
    children)."""
    metrics.forget(namespace or "default", name)
    PROGRESS.forget(uid)
    DIFFBASE.forget(uid)


# Helpers of the handlers above


def _indexed(index: Children, namespace: str, name: str) -> dict[str, Any] | None:
    """A FineTuneJob's child as an index keyed by (namespace, job) has it: its worker Job or its server (None:
    not seen yet)."""
    return next(iter(index.get((namespace, name), [])), None)


def _plain(body: kopf.Body) -> dict[str, Any]:
    """The object as plain JSON data (kopf's Body holds views that pydantic and the builders do not take)."""
    return dict(json.loads(json.dumps(dict(body))))


def _summary(body: kopf.Body, spec_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """What status computation reads of a child: a few metadata fields, some spec, the whole status."""
    meta = body.metadata
    return copy.deepcopy(
        {
            "metadata": {
                "name": meta.name,
                "namespace": meta.namespace,
                "uid": meta.uid,
                "resourceVersion": meta.get("resourceVersion"),
                "labels": dict(meta.labels),
                "annotations": dict(meta.annotations),
                "creationTimestamp": meta.get("creationTimestamp"),
                "deletionTimestamp": meta.get("deletionTimestamp"),
            },
            "spec": {k: body.spec.get(k) for k in spec_keys},
            "status": dict(body.status),
        }
    )


def _from_job(body: kopf.Body, patch: kopf.Patch, job: FineTuneJob, namespace: str) -> FineTuneJob:
    """The job as its workers see it: spec.model.fromJob resolved to the earlier job's model (waiting for it)."""
    if job.spec.model.from_job is None:
        return job
    try:
        return lineage.resolve(job, kube.get_finetunejob(namespace, job.spec.model.from_job))
    except lineage.NotReadyError as error:
        _accepted(job, patch, False, Reason.MISSING_REFERENCE, str(error))
        raise kopf.TemporaryError(message(Reason.MISSING_REFERENCE, error), delay=15) from error
    except lineage.ImpossibleError as error:
        admission.reject(body, patch, str(error))


def _wait_for_references(job: FineTuneJob, patch: kopf.Patch, namespace: str) -> None:
    """Accepted=False and a retry while a claim or ConfigMap the spec names is missing (MissingReference), or a
    claim cannot be mounted by every worker (ClaimAccessMode: a claim's modes cannot change, but it may be made
    again)."""
    modes = kube.claim_modes(namespace)
    keys = kube.config_map_keys(namespace, {name for _, name, _ in validation.config_maps(job.spec)})
    missing = validation.missing_references(job.spec, SETTINGS.model_cache_claim, set(modes), keys)
    if missing:
        _accepted(job, patch, False, Reason.MISSING_REFERENCE, "; ".join(missing))
        raise kopf.TemporaryError(message(Reason.MISSING_REFERENCE, "; ".join(missing)), delay=15)
    unmountable = validation.access_problems(job.spec, SETTINGS.model_cache_claim, modes)
    if unmountable:
        _accepted(job, patch, False, Reason.CLAIM_ACCESS_MODE, "; ".join(unmountable))
        raise kopf.TemporaryError(message(Reason.CLAIM_ACCESS_MODE, "; ".join(unmountable)), delay=30)


def _wait_for_location(body: kopf.Body, patch: kopf.Patch, job: FineTuneJob, holders: list[locations.Holder]) -> None:
    """Accepted=False (OutputInUse) and a retry while an older unfinished job writes where this one would."""
    this = locations.holder_of(_plain(body))
    other = locations.blocking(this, holders)
    if other is None:
        return
    where = (locations.describe(this.location), f"{other.namespace}/{other.name}", locations.describe(other.location))
    text = message(Reason.OUTPUT_IN_USE, *where)
    _accepted(job, patch, False, Reason.OUTPUT_IN_USE, text)
    raise kopf.TemporaryError(text, delay=15)


def _job(body: kopf.Body) -> FineTuneJob:
    """The FineTuneJob of an accepted body; a status that does not parse is treated as empty."""
    raw = _plain(body)
    raw_status = raw.pop("status", None)
    job = FineTuneJob.model_validate({**raw, "spec": FineTuneJobSpec.model_validate_json(json.dumps(raw["spec"]))})
    try:
        job.status = FineTuneJobStatus.model_validate_json(json.dumps(raw_status)) if raw_status else None
    except ValidationError:
        job.status = None
    return job


ACCEPTED_FIELDS = ("conditions", "phase", "observed_generation", "output_location")
"""What validating a job settles in its status; the rest is the status timer's."""


def _accepted(job: FineTuneJob, patch: kopf.Patch, ok: bool, reason: Reason, text: str) -> FineTuneJobStatus:
    """Patch the Accepted condition (with the phase, observed generation and output location); the new status."""
    current = job.status or FineTuneJobStatus()
    listed = list(current.conditions)
    state = ConditionStatus.TRUE if ok else ConditionStatus.FALSE
    generation = job.metadata.get("generation")
    conditions.set_condition(listed, ConditionType.ACCEPTED, state, reason, text, generation, datetime.now(UTC))
    new = current.model_copy(
        update={
            "conditions": listed,
            "phase": current.phase or Phase.PENDING,
            "observed_generation": generation,
            "output_location": status.output_location(job),
        }
    )
    patch.status.update(new.model_dump(mode="json", by_alias=True, include=set(ACCEPTED_FIELDS)))
    return new


def _patch_status(
    body: kopf.Body,
    patch: kopf.Patch,
    job: FineTuneJob,
    computed: tuple[FineTuneJobStatus, list[conditions.Transition]],
) -> FineTuneJobStatus:
    """Post the transitions as Events and patch the computed status where it differs from the job's."""
    new, transitions = computed
    for t in transitions:
        kopf.event(body, type=t.event_type, reason=t.reason, message=t.message)
    if new != job.status:
        patch.status.update(new.model_dump(mode="json", by_alias=True))
    return new


def _is_accepted(current: FineTuneJobStatus | None) -> bool:
    return conditions.is_true(current, ConditionType.ACCEPTED)
