"""Where things live: model, dataset and output locations (PVC path, URI, ConfigMap, model cache, the Hugging Face
Hub) and the Secret keys that unlock them."""

from __future__ import annotations

from typing import Annotated, Any

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


HUB_REPO = r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$"
HUB_REVISION = r"^[A-Za-z0-9][A-Za-z0-9._/-]*$"


class SecretKeyRef(ApiModel):
    """One key of a Secret in the FineTuneJob's namespace. The kubelet resolves it into the workers that need
    it; the operator never reads it."""

    name: ResourceName = Field(description="Name of the Secret.")
    key: str = Field(
        min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="Key of the Secret holding the value."
    )


class SecretRef(ApiModel):
    """A Secret in the FineTuneJob's namespace, by name."""

    name: ResourceName = Field(description="Name of the Secret.")


URI_ACCESS_FIELDS = "credentialsSecretRef and endpoint"
URI_ACCESS_RULE = Rule(
    cel="(!has(self.credentialsSecretRef) && !has(self.endpoint)) || (has(self.uri) && self.uri.startsWith('s3://'))",
    message=f"{URI_ACCESS_FIELDS} need an s3:// uri",
    check=lambda s: (
        (s.credentials_secret_ref is None and s.endpoint is None) or (s.uri is not None and s.uri.startswith("s3://"))
    ),
)
"""On every type with a ``uri`` and the two fields below (model, dataset and output locations)."""


def credentials_field() -> Any:
    return Field(
        default=None,
        description="Secret with the uri's credentials under the usual variable names: AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY (and optionally AWS_SESSION_TOKEN) for s3://. Only the workers get them, by "
        "reference; the operator never reads the Secret.",
    )


def endpoint_field() -> Any:
    return Field(
        default=None,
        min_length=8,
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
        description="Endpoint of an S3-compatible store (MinIO, Ceph, R2, ...), e.g. https://minio.example:9000.",
    )


class HuggingFaceModel(ApiModel):
    """A model repository on the Hugging Face Hub, downloaded once per job into the model cache or scratch space."""

    repo: str = Field(
        min_length=1, max_length=96, pattern=HUB_REPO, description="Repository id, e.g. HuggingFaceTB/SmolLM2-135M."
    )
    revision: str = Field(
        default="main",
        min_length=1,
        max_length=255,
        pattern=HUB_REVISION,
        description="Branch, tag or commit; resolved to a commit hash that the manifest and model card record.",
    )
    token_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding a Hub access token (gated or private repositories)."
    )

    rules = (
        Rule(
            cel="!self.revision.contains('..')",
            message="revision must not contain '..'",
            check=lambda s: ".." not in s.revision,
        ),
    )


class HuggingFaceDataset(ApiModel):
    """A dataset repository on the Hugging Face Hub: some of its JSONL, CSV or Parquet files, downloaded once per
    job. Exactly one of files or split is set."""

    repo: str = Field(min_length=1, max_length=96, pattern=HUB_REPO, description="Dataset repository id.")
    revision: str = Field(
        default="main",
        min_length=1,
        max_length=255,
        pattern=HUB_REVISION,
        description="Branch, tag or commit; resolved to a commit hash that the manifest records.",
    )
    files: list[Annotated[str, Field(min_length=1, max_length=1024)]] | None = Field(
        default=None, min_length=1, max_length=256, description="Paths of the files to read, in the repository."
    )
    split: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Read the data files of this split: <split>.*, <split>-*, <split>_* or under <split>/.",
    )
    token_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding a Hub access token (gated or private repositories)."
    )

    rules = (
        Rule(
            cel="has(self.files) != has(self.split)",
            message="exactly one of files or split must be set",
            check=lambda s: (s.files is None) != (s.split is None),
        ),
        Rule(
            cel="!has(self.files) || self.files.all(f, !f.startsWith('/') && !f.contains('..'))",
            message="files must be paths inside the repository (no leading '/', no '..')",
            check=lambda s: s.files is None or all(_relative(f) for f in s.files),
        ),
        Rule(
            cel="!self.revision.contains('..')",
            message="revision must not contain '..'",
            check=lambda s: ".." not in s.revision,
        ),
    )


class ModelSource(ApiModel):
    """The base model to fine-tune. Exactly one of pvc, uri, cached, huggingFace or fromJob is set."""

    pvc: PVCLocation | None = Field(
        default=None, description="A Hugging Face model directory on a PersistentVolumeClaim."
    )
    uri: Uri | None = Field(
        default=None,
        description="A model directory at a URI with a scheme (s3://, gs://, file://, ...), copied in before training.",
    )
    credentials_secret_ref: SecretRef | None = credentials_field()
    endpoint: str | None = endpoint_field()
    cached: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$",
        description="Name of a model directory in the model cache volume the operator mounts "
        "(for example 'meta-llama/Llama-3.2-1B').",
    )
    hugging_face: HuggingFaceModel | None = Field(
        default=None, description="A model repository on the Hugging Face Hub (HF_ENDPOINT selects a mirror)."
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
            cel="[has(self.pvc), has(self.uri), has(self.cached), has(self.huggingFace), has(self.fromJob)]"
            ".filter(x, x).size() == 1",
            message="exactly one of pvc, uri, cached, huggingFace or fromJob must be set",
            check=lambda s: [s.pvc, s.uri, s.cached, s.hugging_face, s.from_job].count(None) == 4,
        ),
        URI_ACCESS_RULE,
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
    credentials_secret_ref: SecretRef | None = credentials_field()
    endpoint: str | None = endpoint_field()
    merge_adapter: bool = Field(
        default=False,
        description="Also save the base model with the LoRA/QLoRA adapter merged in (ignored for Full).",
    )
    overwrite: bool = Field(
        default=False,
        description="Replace a finished model of a different spec found at this location (by default the job fails "
        "with reason OutputExists and leaves it as it is).",
    )

    rules = (
        Rule(
            cel="has(self.pvc) != has(self.uri)",
            message="exactly one of pvc or uri must be set",
            check=lambda s: (s.pvc is None) != (s.uri is None),
        ),
        URI_ACCESS_RULE,
    )
