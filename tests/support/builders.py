"""Test builders (after JobSet's): a fluent FineTuneJob manifest builder, and the observed objects the operator
reads (worker Jobs, their pods, a sweep's trials)."""

from __future__ import annotations

import copy
import re
from typing import Any

from kubetune.api.sweep import FineTuneSweep
from kubetune.operator import sweeps

_SEGMENT = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _walk(doc: dict[str, Any], path: str) -> tuple[Any, str | int]:
    parts: list[str | int] = [int(i) if i else name for name, i in _SEGMENT.findall(path)]
    node: Any = doc
    for part in parts[:-1]:
        node = node[part] if isinstance(part, int) else node.setdefault(part, {})
    return node, parts[-1]


class JobBuilder:
    """Builds a valid minimal FineTuneJob manifest; ``set``/``drop`` change it by dotted path."""

    def __init__(self, name: str = "demo") -> None:
        self.doc: dict[str, Any] = {
            "apiVersion": "kubetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": name},
            "spec": {
                "model": {"cached": "kubetune/tiny-llama"},
                "data": {"datasets": [{"name": "train", "pvc": {"claimName": "data", "path": "train.jsonl"}}]},
            },
        }

    def set(self, path: str, value: Any) -> JobBuilder:
        node, key = _walk(self.doc, path)
        if isinstance(node, list) and key == len(node):
            node.append(value)
        else:
            node[key] = value
        return self

    def drop(self, path: str) -> JobBuilder:
        node, key = _walk(self.doc, path)
        del node[key]
        return self

    def build(self) -> dict[str, Any]:
        return copy.deepcopy(self.doc)


def make_job(**overrides: Any) -> dict[str, Any]:
    """A valid manifest with ``overrides`` applied; keys are dotted paths with ``__`` for dots."""
    builder = JobBuilder()
    for key, value in overrides.items():
        builder.set(key.replace("__", "."), value)
    return builder.build()


# Observed objects


def worker_job(*conditions: str, suspend: bool = False, **counts: int) -> dict[str, Any]:
    """An observed worker Job: its conditions (True), its suspend flag and status counts (active, failed...)."""
    return {
        "spec": {"suspend": suspend},
        "status": {
            "startTime": "2026-11-25T11:00:00Z",
            **counts,
            "conditions": [
                {"type": c, "status": "True", "lastTransitionTime": "2026-11-25T11:59:00Z"} for c in conditions
            ],
        },
    }


def pod(index: int, phase: str, code: int | None = None, message: str = "", reason: str = "") -> dict[str, Any]:
    """An observed worker pod of completion index ``index``; ``code``: its trainer container terminated with it,
    ``message`` (the termination message) and the kubelet's ``reason`` (``OOMKilled``, ``Error``)."""
    container: dict[str, Any] = {"name": "trainer"}
    if code is not None:
        finished = f"2026-11-25T11:30:0{index}Z"
        terminated = {"exitCode": code, "message": message, "finishedAt": finished}
        container["state"] = {"terminated": {**terminated, **({"reason": reason} if reason else {})}}
    return {
        "metadata": {
            "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
            "creationTimestamp": f"2026-11-25T11:0{index}:00Z",
        },
        "status": {"phase": phase, "containerStatuses": [container]},
    }


def trial(
    s: FineTuneSweep,
    index: int,
    phase: str,
    best: float | None = None,
    percent: int = 0,
    test: dict[str, float] | None = None,
) -> dict[str, Any]:
    """An observed trial FineTuneJob of sweep ``s``: its phase, best validation metric, progress and test metrics."""
    manifest = sweeps.trial_job(s, index, sweeps.space(s)[index])
    status: dict[str, Any] = {"phase": phase, "progress": {"percentage": percent}}
    if best is not None:
        status["metrics"] = {"bestValidationMetric": best}
    if test:
        status["evaluation"] = {"test": test}
    return {"metadata": manifest["metadata"], "status": status}
