"""Base model and cross-field rules shared by every FineTuneJob API type.

Every API model is strict (no type coercion: the CRD schema does not coerce either), forbids unknown
fields, and exposes camelCase aliases over snake_case attributes. Cross-field rules are declared once as
:class:`Rule` objects: pydantic runs their Python check, and the CRD generator emits their CEL expression
as ``x-kubernetes-validations``, so operator, trainer and API server enforce the same rule with the same
message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel


@dataclass(frozen=True)
class Rule:
    """A cross-field rule: a CEL expression for the API server and the same check in Python.

    ``check`` receives the validated model and returns True when the object is valid. ``message`` names
    the fields involved, with paths relative to the object the rule sits on (as the API server prefixes
    the object's own path).
    """

    cel: str
    message: str
    check: Callable[[Any], bool]
    message_expression: str | None = None
    """CEL building the API server's message from the object (``self``), when the message names a value."""
    explain: Callable[[Any], str] | None = None
    """The same message in Python, from the validated model."""

    def wire(self) -> dict[str, str]:
        """The rule as an ``x-kubernetes-validations`` entry."""
        entry = {"rule": self.cel, "message": self.message}
        if self.message_expression is not None:
            entry["messageExpression"] = self.message_expression
        return entry


@dataclass(frozen=True)
class TransitionRule:
    """A rule on updates only (CEL with ``oldSelf``); the API server enforces it, Python cannot."""

    cel: str
    message: str


class ApiModel(BaseModel):
    """Base for all API types: strict, closed, camelCase on the wire."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        strict=True,
        use_enum_values=False,
        validate_default=False,
    )

    rules: ClassVar[tuple[Rule, ...]] = ()
    transition_rules: ClassVar[tuple[TransitionRule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        for rule in type(self).rules:
            if not rule.check(self):
                raise ValueError(rule.explain(self) if rule.explain is not None else rule.message)
        return self

    def to_wire(self) -> dict[str, Any]:
        """The object as it appears in a manifest: camelCase keys, unset optional fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def name_rule(limit: int) -> Rule:
    """metadata.name may be at most ``limit`` characters (room for the children's suffixes)."""
    return Rule(
        cel=f"!has(self.metadata.name) || self.metadata.name.size() <= {limit}",
        message=f"metadata.name must be at most {limit} characters",
        check=lambda s: len(s.metadata.get("name", "")) <= limit,
    )


class Resource(ApiModel):
    """A kubetune.dev object: its metadata as a plain mapping, and its name and namespace."""

    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard object metadata.")

    @property
    def name(self) -> str:
        """The object's name."""
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str:
        """The object's namespace ('default' when unset)."""
        return str(self.metadata.get("namespace") or "default")
