"""The limit and the floor that benchmarks/operator_scale.py compares the operator with, in the same run.

The limit arm: a plain client, no kopf, that does for each FineTuneJob exactly the writes a minimal operator must
make: create the spec ConfigMap, the headless Service and the worker Job (the same bodies the operator builds, from
``kubetune.operator.builders``), then one status patch (Accepted, phase Pending). It watches FineTuneJobs and hands
each new one to as many threads as the operator has handler threads, on kept-alive connections. It makes no reads
(the operator also looks up the claims and ConfigMaps a spec names) and keeps nothing per object.

The floor (``python -m kopf run -m benchmarks.operator_limit``): the same kopf operator doing nothing per object:
the three resources the operator watches (FineTuneJobs, the worker Jobs, their pods) with a handler that returns,
kopf's in-memory persistence and the operator's handler-thread count. Its RSS idle and with every object seen is
kopf's own memory per object, which the operator's per-job memory is compared with.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import kopf

from kubetune.api.enums import ConditionStatus, ConditionType, Phase
from kubetune.api.reasons import Reason, message
from kubetune.api.spec import GROUP, PLURAL, VERSION, parse_job
from kubetune.operator import builders, persistence
from kubetune.operator import settings as operator_settings
from kubetune.operator.naming import LABEL_COMPONENT, LABEL_JOB

USER_AGENT = "kubetune-limit"


class Client(Protocol):
    def send(self, method: str, path: str, body: dict[str, Any], content_type: str = ...) -> dict[str, Any]: ...

    def watch(self, path: str, stop: threading.Event, types: tuple[str, ...] = ()) -> Any: ...


def collection(child: dict[str, Any]) -> str:
    """The API path a child is POSTed to."""
    kind, namespace = child["kind"], child["metadata"]["namespace"]
    prefix = "/apis/batch/v1" if kind == "Job" else "/api/v1"
    return f"{prefix}/namespaces/{namespace}/{kind.lower()}s"


def reconcile(api: Client, body: dict[str, Any], config: operator_settings.Settings) -> None:
    """The minimal operator's writes for one new FineTuneJob: three creates and one status patch."""
    job = parse_job({key: value for key, value in body.items() if key != "status"})
    meta = body["metadata"]
    owner = {
        "apiVersion": body["apiVersion"],
        "kind": body["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    for child in builders.children(job, config):
        child["metadata"].setdefault("namespace", meta["namespace"])
        child["metadata"]["ownerReferences"] = [owner]
        api.send("POST", collection(child), child)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    accepted = {
        "type": ConditionType.ACCEPTED.value,
        "status": ConditionStatus.TRUE.value,
        "reason": Reason.SPEC_VALID.value,
        "message": message(Reason.SPEC_VALID),
        "observedGeneration": meta.get("generation", 1),
        "lastTransitionTime": now,
    }
    status = {"phase": Phase.PENDING.value, "observedGeneration": meta.get("generation", 1), "conditions": [accepted]}
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{meta['namespace']}/{PLURAL}/{meta['name']}/status"
    api.send("PATCH", path, {"status": status}, "application/merge-patch+json")


class LimitArm:
    """Watches FineTuneJobs of a namespace and reconciles each new one with :func:`reconcile` on ``workers``
    threads; ``errors`` keeps what failed (the benchmark reports it)."""

    def __init__(self, api: Client, namespace: str, workers: int) -> None:
        self.api, self.namespace, self.workers = api, namespace, workers
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.config = operator_settings.current()
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()

    def start(self) -> LimitArm:
        threading.Thread(target=self._watch, daemon=True).start()
        for _ in range(self.workers):
            threading.Thread(target=self._work, daemon=True).start()
        return self

    def close(self) -> None:
        self.stop.set()
        for _ in range(self.workers):
            self._queue.put(None)

    def _watch(self) -> None:
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/{PLURAL}"
        for event in self.api.watch(path, self.stop, types=("ADDED",)):
            self._queue.put(event["object"])

    def _work(self) -> None:
        while (body := self._queue.get()) is not None:
            try:
                reconcile(self.api, body, self.config)
            except Exception as error:  # reported, never lost in a thread
                self.errors.append(f"{body['metadata']['name']}: {error}")


# The floor: kopf doing nothing per object. Handlers register only when kopf runs this module; the number of
# events seen goes to $KUBETUNE_FLOOR_COUNT twice a second.
if os.environ.get("KUBETUNE_KOPF_FLOOR") == "1":
    _seen = [0]

    def _write_count(path: Path) -> None:
        while True:
            path.write_text(str(_seen[0]))
            time.sleep(0.5)

    @kopf.on.startup()
    def _configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.progress_storage = persistence.MemoryProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = persistence.MemoryDiffBaseStorage()
        settings.execution.max_workers = operator_settings.current().max_workers
        settings.posting.enabled = False
        count = Path(os.environ["KUBETUNE_FLOOR_COUNT"])
        threading.Thread(target=_write_count, args=(count,), daemon=True).start()

    def _count(**_: Any) -> None:
        _seen[0] += 1  # one event loop thread calls it: no lock

    kopf.on.event(GROUP, VERSION, PLURAL)(_count)
    kopf.on.event("batch", "v1", "jobs", labels={LABEL_JOB: kopf.PRESENT, LABEL_COMPONENT: "workers"})(_count)
    kopf.on.event("", "v1", "pods", labels={LABEL_JOB: kopf.PRESENT, LABEL_COMPONENT: "worker"})(_count)
