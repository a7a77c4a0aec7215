"""One writer per output location: which unfinished FineTuneJob, if any, holds the location a job would write.

A location is a claim in a namespace and a path on it, or a URI (global: two namespaces may name one bucket).
Two locations overlap when one equals or contains the other (``out`` and ``out/trial-1``). Jobs are ordered by
creation time, then namespace and name, and a job waits only for an older unfinished job (one of them always runs,
so no two jobs wait for each other); a job whose worker Job exists is never stopped by this check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

FINISHED_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True)
class Holder:
    """What the check needs of a FineTuneJob: who it is, when it was made, where it writes, whether it finished."""

    namespace: str
    name: str
    uid: str
    created: str
    location: tuple[str, ...]
    finished: bool

    @property
    def order(self) -> tuple[str, str, str]:
        return (self.created, self.namespace, self.name)


def location(namespace: str, spec: dict[str, Any]) -> tuple[str, ...]:
    """The output location of a spec (as stored: camelCase) as path parts; () without an output (scratch)."""
    output = spec.get("output") or {}
    if output.get("pvc"):
        claim = output["pvc"]
        return ("pvc", namespace, claim.get("claimName", ""), *_parts(claim.get("path", "")))
    if output.get("uri"):
        parts = urlsplit(output["uri"])
        return ("uri", parts.scheme, parts.netloc, *_parts(parts.path))
    return ()


def _parts(path: str) -> tuple[str, ...]:
    return tuple(p for p in path.split("/") if p not in ("", "."))


def overlaps(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Whether one location equals or contains the other."""
    if not a or not b:
        return False
    shorter = min(len(a), len(b))
    return a[:shorter] == b[:shorter]


def holder_of(body: dict[str, Any]) -> Holder:
    """The Holder of a FineTuneJob object (as the API server returns it)."""
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    namespace = meta.get("namespace") or "default"
    return Holder(
        namespace=namespace,
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        created=meta.get("creationTimestamp") or "",
        location=location(namespace, body.get("spec") or {}),
        finished=status.get("phase") in FINISHED_PHASES,
    )


def blocking(job: Holder, others: list[Holder]) -> Holder | None:
    """The oldest unfinished job older than ``job`` whose location overlaps ``job``'s; None: ``job`` may write."""
    found = [
        other
        for other in others
        if other.uid != job.uid
        and not other.finished
        and other.order < job.order
        and overlaps(other.location, job.location)
    ]
    return min(found, key=lambda h: h.order, default=None)


def describe(location: tuple[str, ...]) -> str:
    """A location as a user writes it: pvc://claim/path (namespace ns) or the URI."""
    if location[:1] == ("pvc",):
        return f"pvc://{'/'.join(location[2:])} (namespace {location[1]})"
    return f"{location[1]}://{'/'.join(location[2:])}"
