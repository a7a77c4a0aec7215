"""Deterministic, 63-character-safe names and labels of a FineTuneJob's children."""

from __future__ import annotations

import hashlib

MAX_NAME = 63
LABEL_JOB = "kubetune.dev/finetunejob"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"


def child_name(job_name: str, suffix: str) -> str:
    """``<job>-<suffix>``, shortened with a stable hash when it would pass 63 characters."""
    name = f"{job_name}-{suffix}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    keep = MAX_NAME - len(suffix) - len(digest) - 2
    return f"{job_name[:keep].rstrip('-')}-{digest}-{suffix}"


def labels(job_name: str, component: str) -> dict[str, str]:
    """Labels every child of a FineTuneJob carries (selectable, bounded values)."""
    return {LABEL_JOB: job_name, LABEL_COMPONENT: component, LABEL_MANAGED_BY: "kubetune"}
