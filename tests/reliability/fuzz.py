"""Seeded mutations of the example FineTuneJobs, and the verdicts of pydantic and of the real API server on each.

``mutants(seed, count)`` takes the examples (``examples/*.yaml``) round-robin and applies one mutation to each copy,
cycling through ``KINDS``: wrong types, out-of-range numbers, unknown fields, missing fields, huge strings and lists,
unicode, path traversal, shell metacharacters, long names. Each mutant records the field it changed, so a verdict
can be checked for naming it.

``verdicts(api, mutant)`` sends it through pydantic (``tests.api.cases.pydantic_verdict``) and the server's dry
run (``dryRun=All``, ``fieldValidation=Strict``, as ``kubectl apply --dry-run=server`` sends it). Agreement: both
accept, or both reject with messages that name the same field (``fields`` pulls the dotted paths out of either message).
"""

from __future__ import annotations

import copy
import http.client
import json
import random
import re
import ssl
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from kubetune.api.errors import field_path
from kubetune.api.spec import GROUP, PLURAL, VERSION
from tests.api.cases import pydantic_verdict
from tests.support.paths import ROOT

KINDS = (
    "wrong-type",
    "out-of-range",
    "unknown-field",
    "missing-field",
    "huge-string",
    "huge-list",
    "unicode",
    "path-traversal",
    "shell-metacharacters",
    "long-name",
)
HOSTILE_STRINGS = (
    "../../etc/passwd",
    "/etc/shadow",
    "a/../../../root",
    "x; rm -rf / #",
    "$(id)",
    "`reboot`",
    "a | nc evil 1",
    "a && b",
    "name\nwith\nnewlines",
    "nul\x00byte",
)
UNICODE = ("名前", "é\u0301", "🙂", "\u202eevil", "Ω≈ç√", "\ufeffbom")
NUMBERS = (-1, 0, -0.5, 1e-30, 1e12, -1e12, 2**63, 3.5, float(2**53) + 1)
Path = tuple[str | int, ...]


@dataclass
class Mutant:
    index: int
    kind: str
    field: str
    """The dotted path the mutation changed, e.g. ``spec.training.learningRate`` or ``spec.datasets[0]``."""
    doc: dict[str, Any]


def examples() -> list[dict[str, Any]]:
    """Every FineTuneJob of the examples (not their ConfigMaps), in file order."""
    docs = []
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "FineTuneJob"]
    return docs


def mutants(seed: int, count: int) -> Iterator[Mutant]:
    rng, bases = random.Random(seed), examples()
    for index in range(count):
        kind = KINDS[index % len(KINDS)]
        doc = copy.deepcopy(bases[index % len(bases)])
        doc["metadata"] = {"name": f"fuzz-{index}"}
        field = MUTATIONS[kind](doc, rng)
        yield Mutant(index, kind, field, doc)


def _nodes(doc: dict[str, Any]) -> list[tuple[Path, Any]]:
    """Every node under spec, with its path (containers and leaves)."""
    found: list[tuple[Path, Any]] = []

    def walk(path: Path, value: Any) -> None:
        found.append((path, value))
        if isinstance(value, dict):
            for key, child in value.items():
                walk((*path, key), child)
        elif isinstance(value, list):
            for i, child in enumerate(value):
                walk((*path, i), child)

    walk(("spec",), doc["spec"])
    return found


def _set(doc: dict[str, Any], path: Path, value: Any) -> None:
    node: Any = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


def _pick(doc: dict[str, Any], rng: random.Random, want: Any) -> tuple[Path, Any] | None:
    choices = [(p, v) for p, v in _nodes(doc) if len(p) > 1 and want(p, v)]
    return rng.choice(choices) if choices else None


def _wrong_type(doc: dict[str, Any], rng: random.Random) -> str:
    path, value = _pick(doc, rng, lambda p, v: True) or (("spec", "training"), {})
    replacements: dict[type, list[Any]] = {
        str: [123, True, ["a"], {"a": 1}],
        bool: ["yes", 1, [True]],
        int: ["3", [1], {"n": 1}, True],
        float: ["high", [0.1], False],
        list: [{"a": 1}, "list", 7],
        dict: ["object", [1, 2], 0],
    }
    _set(doc, path, rng.choice(replacements[type(value)]))
    return field_path(path)


def _out_of_range(doc: dict[str, Any], rng: random.Random) -> str:
    picked = _pick(doc, rng, lambda p, v: isinstance(v, int | float) and not isinstance(v, bool))
    path = picked[0] if picked else ("spec", "training", "epochs")
    _set(doc, path, rng.choice(NUMBERS))
    return field_path(path)


def _unknown_field(doc: dict[str, Any], rng: random.Random) -> str:
    path, node = _pick(doc, rng, lambda p, v: isinstance(v, dict)) or (("spec",), doc["spec"])
    key = rng.choice(["gpus", "learningRat", "__proto__", "x" * 40, "Model", "apiVersion"])
    node[key] = rng.choice([1, "x", {"a": 1}, [1]])
    return field_path((*path, key))


def _missing_field(doc: dict[str, Any], rng: random.Random) -> str:
    path, _ = _pick(doc, rng, lambda p, v: isinstance(p[-1], str)) or (("spec", "model"), None)
    parent: Any = doc
    for part in path[:-1]:
        parent = parent[part]
    del parent[path[-1]]
    return field_path(path)


def _huge_string(doc: dict[str, Any], rng: random.Random) -> str:
    picked = _pick(doc, rng, lambda p, v: isinstance(v, str))
    path = picked[0] if picked else ("spec", "model", "cached")
    _set(doc, path, "a" * rng.choice([300, 5_000, 200_000]))
    return field_path(path)


def _huge_list(doc: dict[str, Any], rng: random.Random) -> str:
    picked = _pick(doc, rng, lambda p, v: isinstance(v, list) and bool(v))
    if picked is None:
        path: Path = ("spec", "data", "datasets")
        value = doc["spec"]["data"]["datasets"]
    else:
        path, value = picked
    _set(doc, path, [copy.deepcopy(value[0]) for _ in range(rng.choice([100, 2_000, 10_000]))])
    return field_path(path)


def _unicode(doc: dict[str, Any], rng: random.Random) -> str:
    picked = _pick(doc, rng, lambda p, v: isinstance(v, str))
    path = picked[0] if picked else ("spec", "model", "cached")
    _set(doc, path, rng.choice(UNICODE) + str(picked[1] if picked else ""))
    return field_path(path)


def _string_field(doc: dict[str, Any], rng: random.Random, names: tuple[str, ...]) -> Path:
    picked = _pick(doc, rng, lambda p, v: isinstance(v, str) and p[-1] in names)
    if picked is None:
        picked = _pick(doc, rng, lambda p, v: isinstance(v, str))
    return picked[0] if picked else ("spec", "model", "cached")


def _path_traversal(doc: dict[str, Any], rng: random.Random) -> str:
    path = _string_field(doc, rng, ("path", "key", "uri", "cached", "name"))
    _set(doc, path, rng.choice(HOSTILE_STRINGS[:3]))
    return field_path(path)


def _shell(doc: dict[str, Any], rng: random.Random) -> str:
    path = _string_field(doc, rng, ("path", "name", "claimName", "key", "cached"))
    _set(doc, path, rng.choice(HOSTILE_STRINGS[3:]))
    return field_path(path)


def _long_name(doc: dict[str, Any], rng: random.Random) -> str:
    length = rng.choice([52, 53, 63, 64, 253, 254])
    doc["metadata"]["name"] = ("n" * length)[:length]
    return "metadata.name"


MUTATIONS = {
    "wrong-type": _wrong_type,
    "out-of-range": _out_of_range,
    "unknown-field": _unknown_field,
    "missing-field": _missing_field,
    "huge-string": _huge_string,
    "huge-list": _huge_list,
    "unicode": _unicode,
    "path-traversal": _path_traversal,
    "shell-metacharacters": _shell,
    "long-name": _long_name,
}

FIELD = re.compile(r"(?:spec|metadata)(?:\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\])*")


def fields(text: str) -> set[str]:
    """The dotted field paths a message names (``spec.training.epochs``, ``spec.data.datasets[0].pvc``)."""
    return {m.group(0) for m in FIELD.finditer(text)}


class DryRun:
    """The API server's verdict on a manifest, as ``kubectl apply --dry-run=server`` gets it, on one kept-alive
    connection (a kubectl process per mutant would take longer than the rest of the test)."""

    def __init__(self, server: str, token: str, namespace: str = "default") -> None:
        url = urllib.parse.urlsplit(server)
        self.host, self.port, self.token = url.hostname or "127.0.0.1", url.port, token
        self.path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}?dryRun=All&fieldValidation=Strict"
        self.connection: http.client.HTTPSConnection | None = None

    def __call__(self, doc: dict[str, Any]) -> tuple[bool, str]:
        body = json.dumps(doc).encode()
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        for attempt in (1, 2):
            if self.connection is None:
                context = ssl._create_unverified_context()
                self.connection = http.client.HTTPSConnection(self.host, self.port, context=context, timeout=60)
            try:
                self.connection.request("POST", self.path, body=body, headers=headers)
                response = self.connection.getresponse()
                text = response.read().decode("utf-8", "replace")
                break
            except (OSError, http.client.HTTPException):
                self.connection.close()
                self.connection = None
                if attempt == 2:
                    raise
        if response.status < 300:
            return True, ""
        try:
            return False, str(json.loads(text).get("message", text))
        except ValueError:
            return False, text


@dataclass
class Verdict:
    mutant: Mutant
    model_ok: bool
    model_message: str
    server_ok: bool
    server_message: str

    @property
    def agree(self) -> bool:
        """Both accept, or both reject naming the same field: equal paths, or one inside the other (a scalar given
        an object is "spec.x: should be a string" to pydantic and "unknown field spec.x.a" to the server)."""
        if self.model_ok != self.server_ok:
            return False
        return self.model_ok or any(
            _same(a, b) for a in fields(self.model_message) for b in fields(self.server_message)
        )


def _same(a: str, b: str) -> bool:
    short, long = sorted((a, b), key=len)
    return long == short or long.startswith((f"{short}.", f"{short}["))


def verdicts(dry_run: DryRun, mutant: Mutant) -> Verdict:
    model_ok, model_message = pydantic_verdict(mutant.doc)
    server_ok, server_message = dry_run(mutant.doc)
    return Verdict(mutant, model_ok, model_message, server_ok, server_message)
