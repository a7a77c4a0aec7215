"""kopf's bookkeeping of handlers, kept in the operator's memory instead of on each FineTuneJob.

By default kopf writes each handler's progress and the last handled spec (the "diff-base") into annotations: an
extra patch of every new FineTuneJob (each one re-validated by the API server, CEL rules included) and a copy of
the whole spec in its metadata, which every later watch event then carries. Here both live in this process:

- the create/resume handler is idempotent (an existing child is success; a finished job makes none), and the
  suspend handler compares spec.suspend with the worker Job itself, so an operator that restarts and forgets
  this bookkeeping only runs the create handler once more per job, which finds the children and changes nothing;
- a handler retried after a delay (a missing reference) is still woken by kopf's "touch" annotation, the one
  write this storage makes, and only on that path; its retry count starts again after a restart.

Set in the startup handler, before any object is processed: ``settings.persistence.progress_storage =
MemoryProgressStorage(prefix)`` and ``settings.persistence.diffbase_storage = MemoryDiffBaseStorage()``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import kopf


def _uid(body: kopf.Body) -> str:
    return str(body.get("metadata", {}).get("uid") or "")


class MemoryProgressStorage(kopf.AnnotationsProgressStorage):
    """Handler progress records in a dict keyed by (object uid, handler id); touches stay annotations."""

    def __init__(self, prefix: str) -> None:
        super().__init__(prefix=prefix, v1=False)
        self._records: dict[tuple[str, str], kopf.ProgressRecord] = {}

    def fetch(self, *, key: Any, body: kopf.Body) -> kopf.ProgressRecord | None:
        record = self._records.get((_uid(body), str(key)))
        return kopf.ProgressRecord(**record) if record is not None else None

    def store(self, *, key: Any, record: kopf.ProgressRecord, body: kopf.Body, patch: kopf.Patch) -> None:
        self._records[(_uid(body), str(key))] = kopf.ProgressRecord(**record)

    def purge(self, *, key: Any, body: kopf.Body, patch: kopf.Patch) -> None:
        self._records.pop((_uid(body), str(key)), None)

    def forget(self, uid: str) -> None:
        """Drop a deleted object's records (those of handlers that never finished)."""
        for key in [k for k in self._records if k[0] == uid]:
            del self._records[key]


class MemoryDiffBaseStorage(kopf.DiffBaseStorage):
    """The last handled essence of each object, as compact JSON, keyed by its uid."""

    def __init__(self) -> None:
        super().__init__()
        self._essences: dict[str, str] = {}

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> Any:
        """kopf's essence (spec, labels, annotations) of the body without the status and the rest of the
        metadata: kopf deep-copies the whole body on every watch event before dropping those, managedFields and
        all, which was the largest part of the operator's CPU per event. Extra fields (none outside the spec
        here) still get the whole body."""
        fields = list(extra_fields or [])
        if any((f.split(".") if isinstance(f, str) else list(f))[:1] != ["spec"] for f in fields):
            return super().build(body=body, extra_fields=fields)
        meta = body.get("metadata", {})
        slim = {k: v for k, v in body.items() if k not in ("metadata", "status")}
        slim["metadata"] = {k: meta[k] for k in ("labels", "annotations") if k in meta}
        return super().build(body=slim, extra_fields=fields)  # type: ignore[arg-type]

    def fetch(self, *, body: kopf.Body) -> Any:
        encoded = self._essences.get(_uid(body))
        return json.loads(encoded) if encoded is not None else None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        self._essences[_uid(body)] = json.dumps(essence, separators=(",", ":"))

    def forget(self, uid: str) -> None:
        self._essences.pop(uid, None)
