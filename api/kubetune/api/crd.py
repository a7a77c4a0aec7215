"""Generates the FineTuneJob and FineTuneSweep CustomResourceDefinitions from the pydantic models.

The CRD in ``crds/`` is this module's output (``make crds``); a test fails when the two differ, and another
proves the API server and pydantic accept and reject the same manifests. Pydantic's JSON schema is turned
into a Kubernetes structural schema: references inlined, ``Optional`` unwrapped, ``int | str`` turned into
``x-kubernetes-int-or-string``, defaults taken from the models (nested objects default to ``{}`` so their
own defaults apply), and each model's :class:`~kubetune.api.base.Rule` emitted as CEL.
"""

from __future__ import annotations

import sys
from enum import Enum
from typing import Any

from pydantic import BaseModel

from .base import ApiModel
from .spec import GROUP, KIND, PLURAL, VERSION, FineTuneJob
from .sweep import SWEEP_KIND, SWEEP_PLURAL, FineTuneSweep

Schema = dict[str, Any]

_DROP = {"title", "additionalProperties", "$ref", "anyOf", "const", "exclusiveMinimum", "exclusiveMaximum"}


def _models() -> dict[str, type[ApiModel]]:
    found: dict[str, type[ApiModel]] = {}
    pending: list[type[ApiModel]] = [ApiModel]
    while pending:
        cls = pending.pop()
        for sub in cls.__subclasses__():
            found[sub.__name__] = sub
            pending.append(sub)
    return found


def _default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return {}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, list):
        return [_default(v) for v in value]
    return value


class _Converter:
    def __init__(self, defs: dict[str, Schema]) -> None:
        self.defs = defs
        self.models = _models()

    def node(self, node: Schema) -> Schema:
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            inner = self.definition(name)
            return {**inner, **self._plain(node)}
        if "anyOf" in node:
            branches = [b for b in node["anyOf"] if b.get("type") != "null"]
            if len(branches) == 1:
                return {**self.node(branches[0]), **self._plain(node)}
            types = sorted(b.get("type", "") for b in branches)
            if types == ["integer", "string"]:
                # Structural schemas allow exactly this anyOf; value validations of the branches (the string's
                # pattern and maxLength, the integer's minimum) move up a level, where each applies to its own type.
                moved = {k: v for b in branches for k, v in self._plain(b).items() if k != "type"}
                return {
                    "x-kubernetes-int-or-string": True,
                    "anyOf": [{"type": "integer"}, {"type": "string"}],
                    **moved,
                    **self._plain(node),
                }
            raise ValueError(f"unsupported union in CRD schema: {node}")
        out = self._plain(node)
        if node.get("type") == "object" and "properties" in node:
            out["properties"] = {k: self.node(v) for k, v in node["properties"].items()}
        elif node.get("type") == "object":
            extra = node.get("additionalProperties")
            if isinstance(extra, dict):
                out["additionalProperties"] = self.node(extra)
        if node.get("type") == "array":
            out["items"] = self.node(node["items"])
        return out

    def _plain(self, node: Schema) -> Schema:
        out = {k: v for k, v in node.items() if k not in _DROP and k not in ("properties", "items")}
        if out.get("default", 0) is None:
            del out["default"]
        if "const" in node:
            out["enum"] = [node["const"]]
        for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
            if exclusive in node:
                out[bound] = node[exclusive]
                out[exclusive] = True
        return out

    def definition(self, name: str) -> Schema:
        node = self.defs[name]
        out = self.node(node)
        model = self.models.get(name)
        if model is None:
            return out
        for field_name, field in model.model_fields.items():
            alias = field.alias or field_name
            if field.is_required():
                continue
            value = field.get_default(call_default_factory=True, validated_data={})
            if value is not None:
                out["properties"][alias]["default"] = _default(value)
        rules = [r.wire() for r in model.rules]
        rules += [{"rule": r.cel, "message": r.message} for r in model.transition_rules]
        if rules:
            out["x-kubernetes-validations"] = rules
        return out


def openapi_schema(resource: type[ApiModel] = FineTuneJob) -> Schema:
    """The structural OpenAPI v3 schema of a FineTuneJob (or FineTuneSweep), as the CRD's ``openAPIV3Schema``."""
    kind = resource.__name__
    full = resource.model_json_schema(by_alias=True, mode="validation")
    converter = _Converter(full.get("$defs", {}))
    props = full["properties"]
    status = converter.node(props["status"])
    status["properties"]["conditions"]["x-kubernetes-list-type"] = "map"
    status["properties"]["conditions"]["x-kubernetes-list-map-keys"] = ["type"]
    return {
        "type": "object",
        "description": full["description"],
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "kubetune.dev/v1alpha1"},
            "kind": {"type": "string", "description": kind},
            "metadata": {"type": "object"},
            "spec": converter.node(props["spec"]),
            "status": status,
        },
        "x-kubernetes-validations": [r.wire() for r in resource.rules],
    }


JOB_COLUMNS: list[Schema] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Method", "type": "string", "jsonPath": ".spec.method.type"},
    {
        "name": "Progress",
        "type": "integer",
        "jsonPath": ".status.progress.percentage",
        "description": "Percent of training steps done.",
    },
    {"name": "Loss", "type": "number", "jsonPath": ".status.metrics.loss", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]
SWEEP_COLUMNS: list[Schema] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Trials", "type": "integer", "jsonPath": ".status.created", "description": "Trials created."},
    {"name": "Best", "type": "string", "jsonPath": ".status.bestTrial"},
    {"name": "Metric", "type": "number", "jsonPath": ".status.bestMetric"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def build_crd(kind: str = KIND) -> Schema:
    """The whole CustomResourceDefinition manifest of ``kind`` (FineTuneJob or FineTuneSweep)."""
    kinds: dict[str, tuple[type[ApiModel], str, str, list[Schema]]] = {
        KIND: (FineTuneJob, PLURAL, "ftj", JOB_COLUMNS),
        SWEEP_KIND: (FineTuneSweep, SWEEP_PLURAL, "fts", SWEEP_COLUMNS),
    }
    resource, plural, short, columns = kinds[kind]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["kubetune", "all"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": openapi_schema(resource)},
                }
            ],
        },
    }


HEADER = "# Generated by `python -m kubetune.api.crd` (make crds) from kubetune.api. Do not edit.\n"


def render(kind: str = KIND) -> str:
    """The CRD of ``kind`` as the YAML file kept in crds/."""
    import yaml

    class NoAliases(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    return HEADER + yaml.dump(build_crd(kind), Dumper=NoAliases, sort_keys=False, width=120)


if __name__ == "__main__":
    sys.stdout.write(render(sys.argv[1] if len(sys.argv) > 1 else KIND))
