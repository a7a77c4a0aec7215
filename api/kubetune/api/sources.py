"""Where things live: model, dataset and output locations (PVC path, URI, ConfigMap, model cache)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from .base import ApiModel, Rule

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
URI = r"^[a-z][a-z0-9+.-]*://.+$"

ResourceName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
Uri = Annotated[str, Field(min_length=4, max_length=2048, pattern=URI)]


def _relative(path: str) -> bool:
    return not path.startswith("/") and ".." not in path


class PVCLocation(ApiModel):
    """A path inside a PersistentVolumeClaim in the FineTuneJob's namespace."""

    claim_name: ResourceName = Field(description="Name of the PersistentVolumeClaim.")
    path: str = Field(
        default="",
        max_length=1024,
        description="Path relative to the volume's root; empty means the root itself.",
    )

    rules = (
        Rule(
            cel="!self.path.startsWith('/') && !self.path.contains('..')",
            message="path must be relative to the volume root and must not contain '..'",
            check=lambda s: _relative(s.path),
        ),
    )


class ConfigMapKey(ApiModel):
    """One key of a ConfigMap in the FineTuneJob's namespace, holding a small inline dataset."""

    name: ResourceName = Field(description="Name of the ConfigMap.")
    key: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key whose value is the dataset file's content (JSONL or CSV).",
    )


class ModelSource(ApiModel):
    """The base model to fine-tune. Exactly one of pvc, uri, cached or fromJob is set."""

    pvc: PVCLocation | None = Field(
        default=None, description="A Hugging Face model directory on a PersistentVolumeClaim."
    )
    uri: Uri | None = Field(
        default=None,
        description="A model directory at a URI with a scheme (s3://, gs://, file://, ...), copied in before training.",
    )
    cached: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$",
        description="Name of a model directory in the model cache volume the operator mounts "
        "(for example 'meta-llama/Llama-3.2-1B').",
    )
    from_job: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="Continuous tuning: start from the output of this succeeded FineTuneJob (same namespace; its "
        "whole or merged model); the model card and manifest record the lineage.",
    )
    trust_remote_code: bool = Field(
        default=False, description="Allow the model's own Python code to run when loading it."
    )

    rules = (
        Rule(
            cel="[has(self.pvc), has(self.uri), has(self.cached), has(self.fromJob)].filter(x, x).size() == 1",
            message="exactly one of pvc, uri, cached or fromJob must be set",
            check=lambda s: [s.pvc, s.uri, s.cached, s.from_job].count(None) == 3,
        ),
        Rule(
            cel="!has(self.cached) || !self.cached.contains('..')",
            message="cached must not contain '..'",
            check=lambda s: s.cached is None or ".." not in s.cached,
        ),
    )


class OutputLocation(ApiModel):
    """Where the trained adapter or model, metrics and reports are written. Exactly one of pvc or uri."""

    pvc: PVCLocation | None = Field(default=None, description="A directory on a PersistentVolumeClaim.")
    uri: Uri | None = Field(
        default=None, description="A URI with a scheme (s3://, gs://, file://, ...) the outputs are copied to."
    )
    merge_adapter: bool = Field(
        default=False,
        description="Also save the base model with the LoRA/QLoRA adapter merged in (ignored for Full).",
    )

    rules = (
        Rule(
            cel="has(self.pvc) != has(self.uri)",
            message="exactly one of pvc or uri must be set",
            check=lambda s: (s.pvc is None) != (s.uri is None),
        ),
    )
