"""Fill the chart's values.schema.json with each value's description and default, from values.yaml.

values.yaml documents every value with a ``# -- `` comment above its key (helm-docs' convention; continuation
lines start with ``#``). The schema keeps its own constraints (types, enums, patterns, additionalProperties);
this writes ``description`` (the comment) and ``default`` (the value in values.yaml) into the property of each
key. A key without a comment, or a schema property values.yaml does not have, is an error.

``python3 hack/values_schema.py`` rewrites the schema (``make values-schema``); ``--check`` exits 1 when it is
not up to date (the chart tests run it).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[1] / "charts" / "kubetune"
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w-]*):")


def comments(values_text: str) -> dict[tuple[str, ...], str]:
    """Each key path's ``# --`` comment, joined into one line."""
    found: dict[tuple[str, ...], str] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] = []
    for line in values_text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
        elif stripped.startswith("#") and pending:
            pending.append(stripped[1:].strip())
        elif match := KEY.match(line):
            indent = len(match["indent"])
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, match["key"]))
            if pending:
                found[tuple(key for _, key in stack)] = " ".join(pending)
            pending = []
        elif not stripped:
            continue
        else:
            pending = []
    return found


def fill(
    schema: dict[str, Any], values: Any, notes: dict[tuple[str, ...], str], path: tuple[str, ...] = ()
) -> list[str]:
    """Set description and default on every property under ``schema``; returns the problems found."""
    problems = []
    for key, prop in (schema.get("properties") or {}).items():
        here = (*path, key)
        name = ".".join(here)
        if not isinstance(values, dict) or key not in values:
            problems.append(f"{name}: in values.schema.json but not in values.yaml")
            continue
        if here not in notes:
            problems.append(f"{name}: no `# --` comment above it in values.yaml")
        else:
            prop["description"] = notes[here]
        prop["default"] = values[key]
        problems += fill(prop, values[key], notes, here)
    return problems


def generate() -> tuple[str, list[str]]:
    """The filled schema's text and the problems found."""
    text = (CHART / "values.yaml").read_text()
    schema = json.loads((CHART / "values.schema.json").read_text())
    problems = fill(schema, yaml.safe_load(text), comments(text))
    return json.dumps(schema, indent=2) + "\n", problems


def main() -> int:
    filled, problems = generate()
    for problem in problems:
        print(problem, file=sys.stderr)
    target = CHART / "values.schema.json"
    if "--check" in sys.argv:
        stale = target.read_text() != filled
        if stale:
            print(f"{target} is not up to date: run `make values-schema`", file=sys.stderr)
        return int(stale or bool(problems))
    target.write_text(filled)
    return int(bool(problems))


if __name__ == "__main__":
    sys.exit(main())
