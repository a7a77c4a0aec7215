"""The docs and the API agree: every condition reason the docs name exists, and ``kubectl explain`` lists every
condition type."""

from __future__ import annotations

import re

import yaml

from kubetune.api import ConditionType
from kubetune.api.reasons import Reason
from tests.support.paths import ROOT

TYPES = "|".join(kind.value for kind in ConditionType)
AFTER_TYPE = re.compile(rf"`(?:{TYPES})`(?: is (?:True|False))? \(([^()]*)\)")
"""``Running`` (``Training``, ``Evaluating``): the reasons in parentheses after a condition type."""
AFTER_WORD = re.compile(r"\b(?:reasons?|True|False) \(?`(\w+)`")
"""reason ``InvalidSpec``, True ``GatePassed``, False (``GateFailed``."""


def named_reasons(text: str) -> set[str]:
    text = " ".join(text.split())  # a list may wrap onto the next line
    names = set(AFTER_WORD.findall(text))
    for group in AFTER_TYPE.findall(text):
        names |= set(re.findall(r"`(\w+)`", group))
    return names


def test_every_reason_the_docs_name_exists() -> None:
    known = {reason.value for reason in Reason}
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    named = {path.name: named_reasons(path.read_text()) for path in files}
    assert sum(len(names) for names in named.values()) > 20, "the pattern no longer finds the docs' reasons"
    unknown = {name: sorted(names - known) for name, names in named.items() if names - known}
    assert not unknown, f"docs name reasons that do not exist in kubetune.api.reasons: {unknown}"


def test_the_reason_finder_reads_the_docs_forms() -> None:
    text = "`Running` (`Training`,\n  `Evaluating`), reason `InvalidSpec`, `Promotable` is True (`GatePassed`, or"
    assert named_reasons(text) == {"Training", "Evaluating", "InvalidSpec", "GatePassed"}


def condition_type_descriptions(node: object) -> list[str]:
    """The description of ``conditions[].type`` wherever a schema has conditions."""
    found = []
    if isinstance(node, dict):
        if isinstance(conditions := node.get("conditions"), dict) and "items" in conditions:
            found.append(conditions["items"]["properties"]["type"]["description"])
        for value in node.values():
            found += condition_type_descriptions(value)
    elif isinstance(node, list):
        for value in node:
            found += condition_type_descriptions(value)
    return found


def test_kubectl_explain_lists_every_condition_type() -> None:
    for crd in sorted((ROOT / "crds").glob("kubetune.dev_*.yaml")):
        descriptions = condition_type_descriptions(list(yaml.safe_load_all(crd.read_text())))
        assert descriptions, crd.name
        for description in descriptions:
            assert all(kind.value in description for kind in ConditionType), (crd.name, description)
