"""Credentials of uri locations (``credentialsSecretRef``): which variables carry them into the workers.

Every Secret a job names gets a slot (in name order); the operator puts its keys into the workers as
``KUBETUNE_CREDENTIALS_<slot>_<KEY>`` (by ``secretKeyRef``, so the operator never reads them), and the trainer
reads the slot of each location back, so two locations may use different keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .spec import FineTuneJobSpec

REQUIRED_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
OPTIONAL_KEYS = ("AWS_SESSION_TOKEN",)
PREFIX = "KUBETUNE_CREDENTIALS_"


def locations(spec: FineTuneJobSpec) -> Iterator[tuple[str, Any]]:
    """(field, location) of every uri location of ``spec``: the model, each dataset, the output."""
    yield "spec.model", spec.model
    for i, dataset in enumerate(spec.data.datasets):
        yield f"spec.data.datasets[{i}]", dataset
    if spec.output is not None:
        yield "spec.output", spec.output


def slots(spec: FineTuneJobSpec) -> dict[str, int]:
    """Secret name -> slot, for every credentialsSecretRef of ``spec``."""
    names = sorted({loc.credentials_secret_ref.name for _, loc in locations(spec)
                    if getattr(loc, "uri", None) and loc.credentials_secret_ref is not None})  # fmt: skip
    return {name: slot for slot, name in enumerate(names)}


def variable(slot: int, key: str) -> str:
    return f"{PREFIX}{slot}_{key}"
