"""Turns pydantic validation errors into one line per problem, each naming the field as a manifest path."""

from __future__ import annotations

import re

from pydantic import ValidationError

UNION_TAG = re.compile(r"^(int|float|str|bool|constrained-\w+|function-.*|json-or-python.*|union\[.*|\w+\[.*\])$")
"""Parts pydantic adds to an error's location for the member of a union that failed (``spec.resources.memory.int``):
not fields of the spec (those are camelCase words)."""


def field_path(loc: tuple[int | str, ...]) -> str:
    """``('spec', 'data', 'datasets', 0, 'name')`` -> ``spec.data.datasets[0].name``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not UNION_TAG.match(part):
            out += f".{part}" if out else part
    return out


def describe(error: ValidationError, prefix: str = "") -> str:
    """Every problem in ``error``, one per line, as ``<field path>: <message>``."""
    lines = []
    for item in error.errors(include_url=False):
        path = field_path(tuple(item["loc"]))
        if prefix:
            path = f"{prefix}.{path}" if path else prefix
        text = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            text = f'unknown field "{path}"'
        lines.append(f"{path}: {text}" if path else text)
    return "\n".join(lines)
