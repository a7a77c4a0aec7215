"""The FineTuneJob resource (kubetune.dev/v1alpha1): its spec and the whole-object rules."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field

from .base import ApiModel, Resource, Rule, TransitionRule, name_rule
from .data import Data
from .enums import DataFormat, DatasetUsage, Distributed, MethodType, TaskType, ValidationMetric
from .release import Deploy, Promotion
from .resources import MAX_SECONDS, Resources
from .sources import ModelSource, OutputLocation
from .status import FineTuneJobStatus
from .training import Checkpointing, Evaluation, Method, Task, Training, Validation
from .tuning import ContextExtension, ForgettingGuard, Stage

GROUP = "kubetune.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
MAX_NAME_LENGTH = 52
"""Leaves room for the child suffixes (e.g. "-workers") within Kubernetes' 63-character label values."""

MUTABLE_FIELDS = ("suspend", "ttlSecondsAfterFinished")
"""Spec fields that may change after creation; every other field is immutable."""


def _classification_consistent(s: FineTuneJobSpec) -> bool:
    return (s.task.type == TaskType.CLASSIFICATION) == (s.data.format == DataFormat.CLASSIFICATION)


def _stages_consistent(s: FineTuneJobSpec) -> bool:
    for stage in s.stages or []:
        task = (stage.task or s.task).type
        if (task == TaskType.CLASSIFICATION) != ((stage.format or s.data.format) == DataFormat.CLASSIFICATION):
            return False
    return True


def _has_general(s: FineTuneJobSpec) -> bool:
    return any(d.usage == DatasetUsage.GENERAL for d in s.data.datasets)


class FineTuneJobSpec(ApiModel):
    """Desired state of a FineTuneJob: what to train, on what, how, where, and for how long."""

    model: ModelSource = Field(description="The base model.")
    data: Data = Field(description="Datasets, row format, cleaning and split.")
    task: Task = Field(default_factory=Task, description="CausalLM or Classification.")
    method: Method = Field(default_factory=Method, description="Full, LoRA or QLoRA.")
    training: Training = Field(default_factory=Training, description="Hyperparameters.")
    validation: Validation = Field(default_factory=Validation, description="Validation and early stopping.")
    evaluation: Evaluation = Field(default_factory=Evaluation, description="Test-set evaluation.")
    resources: Resources = Field(default_factory=Resources, description="Workers, GPUs, scheduling, image.")
    output: OutputLocation | None = Field(
        default=None,
        description="Where results are written; the pod's scratch space (lost at exit) when unset, "
        "runs/<name>/ for local runs.",
    )
    checkpointing: Checkpointing = Field(default_factory=Checkpointing, description="Resumable checkpoints.")
    suspend: bool = Field(
        default=False, description="Suspend: running workers are stopped; resuming continues from the last checkpoint."
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, le=MAX_SECONDS, description="Fail the job when it has run longer than this."
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SECONDS,
        description="Delete the FineTuneJob this long after it succeeded or failed.",
    )
    max_restarts: int = Field(
        default=3, ge=0, le=100, description="Worker failures retried (from the last checkpoint) before the job fails."
    )
    stages: list[Stage] | None = Field(
        default=None,
        min_length=1,
        max_length=8,
        description="Sequential tuning: stages run in order, each from the previous stage's output; "
        "a failed stage resumes from its own checkpoint. One run on spec.data when unset.",
    )
    forgetting_guard: ForgettingGuard | None = Field(
        default=None, description="Replay of general data and a retention check (needs a General dataset)."
    )
    context_extension: ContextExtension | None = Field(
        default=None, description="RoPE scaling to a longer context, with a passkey-retrieval check."
    )
    promotion: Promotion | None = Field(
        default=None,
        description="The evaluation gate behind condition Promotable; a succeeded job is promotable when unset.",
    )
    deploy: Deploy | None = Field(
        default=None, description="Serve the tuned model once it is promotable (needs output.pvc; CausalLM)."
    )

    rules = (
        Rule(
            cel="(self.task.type == 'Classification') == (self.data.format == 'Classification')",
            message="task.type Classification and data.format Classification go together",
            check=_classification_consistent,
        ),
        Rule(
            cel="self.task.type == 'Classification' || self.validation.metric == 'Loss'",
            message="validation.metric Accuracy or F1 requires task.type Classification",
            check=lambda s: s.task.type == TaskType.CLASSIFICATION or s.validation.metric == ValidationMetric.LOSS,
        ),
        Rule(
            cel="self.training.distributed != 'FSDP' || self.method.type == 'Full'",
            message="training.distributed FSDP requires method.type Full",
            check=lambda s: s.training.distributed != Distributed.FSDP or s.method.type == MethodType.FULL,
        ),
        Rule(
            cel="!has(self.stages) || self.stages.all(a, self.stages.exists_one(b, b.name == a.name))",
            message="stages[].name must be unique",
            check=lambda s: s.stages is None or len({t.name for t in s.stages}) == len(s.stages),
        ),
        Rule(
            cel="!has(self.stages) || self.stages.all(t, t.datasets.all(n, self.data.datasets.exists(d, d.name == n)))",
            message="stages[].datasets must name datasets of data.datasets",
            check=lambda s: (
                s.stages is None or all(n in {d.name for d in s.data.datasets} for t in s.stages for n in t.datasets)
            ),
        ),
        Rule(
            cel="!has(self.stages) || self.stages.all(t, "
            "((has(t.task) ? t.task.type : self.task.type) == 'Classification') == "
            "((has(t.format) ? t.format : self.data.format) == 'Classification'))",
            message="stages[]: task.type Classification and format Classification go together",
            check=_stages_consistent,
        ),
        Rule(
            cel="has(self.forgettingGuard) == self.data.datasets.exists(d, d.usage == 'General')",
            message="forgettingGuard and a data.datasets entry with usage General go together",
            check=lambda s: (s.forgetting_guard is not None) == _has_general(s),
        ),
        Rule(
            cel="!has(self.forgettingGuard) || self.task.type == 'CausalLM'",
            message="forgettingGuard requires task.type CausalLM (the retention check is a language-model loss)",
            check=lambda s: s.forgetting_guard is None or s.task.type == TaskType.CAUSAL_LM,
        ),
        Rule(
            cel="!has(self.evaluation.fewShot) || self.task.type == 'CausalLM'",
            message="evaluation.fewShot requires task.type CausalLM",
            check=lambda s: s.evaluation.few_shot is None or s.task.type == TaskType.CAUSAL_LM,
        ),
        Rule(
            cel="!has(self.deploy) || (has(self.output) && has(self.output.pvc) && self.task.type == 'CausalLM')",
            message="deploy requires output.pvc and task.type CausalLM",
            check=lambda s: (
                s.deploy is None
                or (s.output is not None and s.output.pvc is not None and s.task.type == TaskType.CAUSAL_LM)
            ),
        ),
        Rule(
            cel="!has(self.deploy) || !self.deploy.merged || self.method.type == 'Full' || "
            "(has(self.output) && self.output.mergeAdapter)",
            message="deploy.merged requires method.type Full or output.mergeAdapter",
            check=lambda s: (
                s.deploy is None
                or not s.deploy.merged
                or s.method.type == MethodType.FULL
                or (s.output is not None and s.output.merge_adapter)
            ),
        ),
        Rule(
            cel="!has(self.promotion) || !has(self.promotion.maxRetentionRegression) || has(self.forgettingGuard)",
            message="promotion.maxRetentionRegression requires forgettingGuard",
            check=lambda s: (
                s.promotion is None or s.promotion.max_retention_regression is None or s.forgetting_guard is not None
            ),
        ),
        Rule(
            cel="!has(self.contextExtension) || self.training.maxSeqLength <= self.contextExtension.targetLength",
            message="training.maxSeqLength must not exceed contextExtension.targetLength",
            check=lambda s: (
                s.context_extension is None or s.training.max_seq_length <= s.context_extension.target_length
            ),
        ),
    )


def _immutability_rules() -> tuple[TransitionRule, ...]:
    fields = [f.alias or name for name, f in FineTuneJobSpec.model_fields.items()]
    return tuple(
        TransitionRule(
            cel=f"has(self.{field}) == has(oldSelf.{field}) && (!has(self.{field}) || self.{field} == oldSelf.{field})",
            message=f"{field} is immutable after creation; only {' and '.join(MUTABLE_FIELDS)} may change",
        )
        for field in fields
        if field not in MUTABLE_FIELDS
    )


FineTuneJobSpec.transition_rules = _immutability_rules()


class FineTuneJob(Resource):
    """A fine-tuning run of one base model on one or more datasets."""

    api_version: Literal["kubetune.dev/v1alpha1"] = Field(description="kubetune.dev/v1alpha1")
    kind: Literal["FineTuneJob"] = Field(description="FineTuneJob")
    spec: FineTuneJobSpec = Field(description="Desired state.")
    status: FineTuneJobStatus | None = Field(default=None, description="Observed state, written by the operator.")

    rules = (name_rule(MAX_NAME_LENGTH),)


def parse_job(manifest: dict[str, Any]) -> FineTuneJob:
    """Validate a manifest (as decoded from YAML or JSON) exactly as the API server would.

    Validation goes through JSON so that strict mode treats enums, numbers and strings as JSON does,
    and never coerces ``"3"`` into ``3``.
    """
    return FineTuneJob.model_validate_json(json.dumps(manifest))


def parse_spec(spec: dict[str, Any]) -> FineTuneJobSpec:
    """Validate only a spec (as kopf hands it to a handler)."""
    return FineTuneJobSpec.model_validate_json(json.dumps(spec))
