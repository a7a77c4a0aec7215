"""A fluent FineTuneJob manifest builder for tests (after JobSet's test builders)."""

from __future__ import annotations

import copy
import re
from typing import Any

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
