"""Where and how the training pods run: workers, GPUs, requests, scheduling and the trainer image."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field

from .base import ApiModel, Rule
from .enums import TaintEffect, TolerationOperator
from .sources import DNS_LABEL, DNS_SUBDOMAIN

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?"
IMAGE = (
    rf"^(?:{_HOST}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)
"""An OCI image reference: [registry[:port]/]name[/name...][:tag][@algorithm:digest] (distribution's grammar)."""
IMAGE_MESSAGE = (
    "image must be an OCI image reference, [registry[:port]/]name[:tag][@sha256:digest], e.g. "
    "ghcr.io/kubetune/trainer:0.1.0 (lower-case name, no spaces or shell characters)"
)

IMAGE_RULE = Rule(
    cel=f"!has(self.image) || self.image.matches(r'{IMAGE}')",
    message=IMAGE_MESSAGE,
    check=lambda s: s.image is None or re.match(IMAGE, s.image) is not None,
)
"""On any type with an ``image`` field (training workers, the model server)."""

QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
MAX_SECONDS = 2**31 - 1
"""The most seconds a duration field takes (68 years; the Kubernetes int32 limit)."""
Quantity = Annotated[int, Field(ge=0)] | Annotated[str, Field(max_length=64, pattern=QUANTITY)]
"""A Kubernetes quantity: a non-negative integer, or a string such as "500m", "1.5" or "8Gi"."""


RESERVED_ENV = (
    "NNODES",
    "NPROC_PER_NODE",
    "NODE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TMPDIR",
    "OMP_NUM_THREADS",
    "HF_HUB_OFFLINE",
    "HF_TOKEN",
)
"""Variables the operator sets in every worker (with every ``KUBETUNE_`` one): spec.resources.env may not set them."""
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_RESERVED_CEL = "[" + ", ".join(f"'{name}'" for name in RESERVED_ENV) + "]"
_RESERVED_TEXT = ", ".join(RESERVED_ENV) + " and every KUBETUNE_ one"


class SecretOrConfigMapKey(ApiModel):
    """A key of a Secret or a ConfigMap in the FineTuneJob's namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="Name of the object.")
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="Key of the object.")


class EnvVarSource(ApiModel):
    """Where a variable's value comes from. Exactly one of secretKeyRef or configMapKeyRef."""

    secret_key_ref: SecretOrConfigMapKey | None = Field(default=None, description="A key of a Secret.")
    config_map_key_ref: SecretOrConfigMapKey | None = Field(default=None, description="A key of a ConfigMap.")

    rules = (
        Rule(
            cel="has(self.secretKeyRef) != has(self.configMapKeyRef)",
            message="exactly one of secretKeyRef or configMapKeyRef must be set",
            check=lambda s: (s.secret_key_ref is None) != (s.config_map_key_ref is None),
        ),
    )


class EnvVar(ApiModel):
    """An environment variable of the workers: a value, or a key of a Secret or ConfigMap."""

    name: str = Field(min_length=1, max_length=253, pattern=ENV_NAME, description="Variable name.")
    value: str | None = Field(default=None, max_length=32768, description="Literal value.")
    value_from: EnvVarSource | None = Field(default=None, description="A Secret or ConfigMap key.")

    rules = (
        Rule(
            cel="has(self.value) != has(self.valueFrom)",
            message="exactly one of value or valueFrom must be set",
            check=lambda s: (s.value is None) != (s.value_from is None),
        ),
        Rule(
            cel=f"!(self.name in {_RESERVED_CEL}) && !self.name.startsWith('KUBETUNE_')",
            message=f"name must not be a variable the operator sets ({_RESERVED_TEXT})",
            check=lambda s: s.name not in RESERVED_ENV and not s.name.startswith("KUBETUNE_"),
            message_expression=f"'name ' + self.name + ' is a variable the operator sets ({_RESERVED_TEXT})'",
            explain=lambda s: f"name {s.name} is a variable the operator sets ({_RESERVED_TEXT})",
        ),
    )


class ObjectRef(ApiModel):
    """A Secret or ConfigMap by name."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="Name of the object.")


class EnvFromSource(ApiModel):
    """Every key of a Secret or ConfigMap as a variable (the operator's own variables take precedence)."""

    secret_ref: ObjectRef | None = Field(default=None, description="A Secret.")
    config_map_ref: ObjectRef | None = Field(default=None, description="A ConfigMap.")
    prefix: str | None = Field(default=None, max_length=253, pattern=ENV_NAME, description="Prefix of every name.")

    rules = (
        Rule(
            cel="has(self.secretRef) != has(self.configMapRef)",
            message="exactly one of secretRef or configMapRef must be set",
            check=lambda s: (s.secret_ref is None) != (s.config_map_ref is None),
        ),
        Rule(
            cel="!has(self.prefix) || !self.prefix.startsWith('KUBETUNE_')",
            message="prefix must not start with KUBETUNE_",
            check=lambda s: s.prefix is None or not s.prefix.startswith("KUBETUNE_"),
        ),
    )


class Toleration(ApiModel):
    """A Kubernetes toleration for the training pods."""

    key: str | None = Field(default=None, max_length=316, description="Taint key; empty with Exists matches all.")
    operator: TolerationOperator = Field(default=TolerationOperator.EQUAL, description="Exists or Equal.")
    value: str | None = Field(default=None, max_length=63, description="Taint value (Equal only).")
    effect: TaintEffect | None = Field(default=None, description="Taint effect to match; all when unset.")
    toleration_seconds: int | None = Field(
        default=None, ge=0, le=MAX_SECONDS, description="How long a NoExecute taint is tolerated."
    )

    rules = (
        Rule(
            cel="self.operator != 'Exists' || !has(self.value)",
            message="value must be unset when operator is Exists",
            check=lambda s: s.operator != TolerationOperator.EXISTS or s.value is None,
        ),
    )


class Resources(ApiModel):
    """Worker pods: how many, what each gets, where they may run, which image."""

    workers: int = Field(default=1, ge=1, le=64, description="Training pods (torchrun nodes), one process per GPU.")
    gpus_per_worker: int = Field(default=0, ge=0, le=16, description="nvidia.com/gpu per worker; 0 trains on CPU.")
    cpu: Quantity = Field(default="2", description="CPU request and limit of each worker.")
    memory: Quantity = Field(default="8Gi", description="Memory request and limit of each worker.")
    node_selector: dict[str, str] | None = Field(
        default=None, max_length=64, description="Node labels the workers must run on."
    )
    tolerations: list[Toleration] | None = Field(default=None, max_length=32, description="Tolerations of the workers.")
    priority_class_name: str | None = Field(
        default=None, max_length=253, pattern=DNS_SUBDOMAIN, description="PriorityClass of the workers."
    )
    queue: str | None = Field(
        default=None,
        max_length=63,
        pattern=DNS_LABEL,
        description="Kueue LocalQueue name, set as the kueue.x-k8s.io/queue-name label.",
    )
    image: str | None = Field(
        default=None, min_length=1, max_length=1024, description="Trainer image; the operator's default when unset."
    )
    service_account_name: str | None = Field(
        default=None, max_length=253, pattern=DNS_SUBDOMAIN, description="ServiceAccount of the workers."
    )
    env: list[EnvVar] | None = Field(
        default=None, max_length=64, description="Extra environment variables of the workers (not the operator's)."
    )
    env_from: list[EnvFromSource] | None = Field(
        default=None,
        max_length=16,
        description="Secrets and ConfigMaps whose keys become variables of the workers; the operator's variables "
        "and spec.resources.env take precedence.",
    )

    rules = (
        IMAGE_RULE,
        Rule(
            cel="!has(self.env) || self.env.all(a, self.env.exists_one(b, b.name == a.name))",
            message="env names must be unique",
            check=lambda s: s.env is None or len({e.name for e in s.env}) == len(s.env),
        ),
    )
