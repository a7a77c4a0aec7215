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
    names = sorted(
        {
            loc.credentials_secret_ref.name
            for _, loc in locations(spec)
            if getattr(loc, "uri", None) and loc.credentials_secret_ref is not None
        }
    )
    return {name: slot for slot, name in enumerate(names)}


def variable(slot: int, key: str) -> str:
    return f"{PREFIX}{slot}_{key}"


HUB_TOKEN_PREFIX = "KUBETUNE_HUB_TOKEN_"


def hub_tokens(spec: FineTuneJobSpec) -> dict[tuple[str, str], str]:
    """(Secret name, key) -> variable of each Hub dataset's tokenSecretRef (the model's token is HF_TOKEN)."""
    found = [d.hugging_face.token_secret_ref for d in spec.data.datasets if d.hugging_face is not None]
    refs = sorted({(ref.name, ref.key) for ref in found if ref is not None})
    return {ref: f"{HUB_TOKEN_PREFIX}{slot}" for slot, ref in enumerate(refs)}


def uses_hub(spec: FineTuneJobSpec) -> bool:
    """Whether the model or a dataset comes from the Hugging Face Hub (the workers then go online)."""
    return spec.model.hugging_face is not None or any(d.hugging_face is not None for d in spec.data.datasets)
