"""Parse-or-reject, once for FineTuneJobs and FineTuneSweeps: the typed object, or a rejection that says why.

A rejected object gets ``Accepted=False`` with reason ``InvalidSpec`` and the message naming each field, a
Warning Event, and a ``kopf.PermanentError`` (kopf does not retry it: only a new spec can fix it).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import NoReturn, TypeVar

import kopf
from pydantic import ValidationError

from kubetune.api.errors import describe
from kubetune.api.reasons import Reason, message

from . import conditions

T = TypeVar("T")


def parse_or_reject(
    body: kopf.Body, patch: kopf.Patch, parse: Callable[[kopf.Body], T], problems: Callable[[T], list[str]]
) -> T:
    """``parse(body)`` when it validates and ``problems`` of it finds none; otherwise :func:`reject` with the
    validation error (fields under ``spec``) or the problems."""
    try:
        parsed = parse(body)
    except ValidationError as error:
        reject(body, patch, describe(error, prefix="spec"))
    found = problems(parsed)
    if found:
        reject(body, patch, "; ".join(found))
    return parsed


def reject(body: kopf.Body, patch: kopf.Patch, text: str) -> NoReturn:
    """Accepted=False (InvalidSpec: ``text``) in the status patch, a Warning Event, and a PermanentError."""
    patch.status.update(conditions.rejected(text, body.get("metadata", {}).get("generation"), datetime.now(UTC)))
    kopf.event(body, type="Warning", reason=Reason.INVALID_SPEC, message=message(Reason.INVALID_SPEC, text))
    raise kopf.PermanentError(message(Reason.INVALID_SPEC, text))
