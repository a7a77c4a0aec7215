"""Observed state of a FineTuneJob, following the Kubernetes API conventions for status and conditions."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from .base import ApiModel
from .enums import ConditionStatus, ConditionType, Phase


class Condition(ApiModel):
    """One aspect of the job's state (Kubernetes metav1.Condition)."""

    type: str = Field(max_length=316, description="One of " + ", ".join(kind.value for kind in ConditionType) + ".")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="CamelCase reason for the last transition.",
    )
    message: str = Field(default="", max_length=32768, description="Human-readable details.")
    observed_generation: int | None = Field(default=None, ge=0, description="Spec generation the condition is about.")
    last_transition_time: datetime = Field(description="When status last changed.")


class Progress(ApiModel):
    """Training progress, as reported by rank 0."""

    step: int = Field(default=0, ge=0, description="Optimizer steps done.")
    total_steps: int | None = Field(default=None, ge=0, description="Optimizer steps planned.")
    epoch: float = Field(default=0.0, ge=0, description="Epochs done, fractional.")
    percentage: int = Field(default=0, ge=0, le=100, description="step / totalSteps, in percent.")
    estimated_completion_time: datetime | None = Field(default=None, description="ETA of the end of training.")
    update_time: datetime | None = Field(default=None, description="When rank 0 last reported.")


class LatestMetrics(ApiModel):
    """The latest training and validation figures."""

    loss: float | None = Field(default=None, description="Training loss of the last logged step.")
    learning_rate: float | None = Field(default=None, ge=0, description="Current learning rate.")
    grad_norm: float | None = Field(default=None, ge=0, description="Gradient norm before clipping.")
    tokens_per_second: float | None = Field(default=None, ge=0, description="Training throughput, all workers.")
    validation_loss: float | None = Field(default=None, description="Loss on the validation split, last validation.")
    best_validation_metric: float | None = Field(default=None, description="Best value of spec.validation.metric.")
    best_step: int | None = Field(default=None, ge=0, description="Step of the best validation.")
    last_validation_metric: float | None = Field(
        default=None, description="spec.validation.metric at the last validation (set when training ends)."
    )
    delivered_step: int | None = Field(
        default=None,
        ge=0,
        description="Step whose weights were delivered and tested: bestStep under spec.validation.restoreBest, "
        "else the last step (set when training ends).",
    )


class EvaluationResults(ApiModel):
    """Test-set metrics of the tuned model and of the base model on the same rows."""

    test: dict[str, float] = Field(default_factory=dict, description="Metrics of the fine-tuned model.")
    baseline: dict[str, float] = Field(default_factory=dict, description="Metrics of the base model (zero-shot).")
    few_shot: dict[str, float] = Field(
        default_factory=dict, description="Metrics of the base model prompted with spec.evaluation.fewShot.k examples."
    )
    tasks: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="Test metrics of the fine-tuned model per task (multitask)."
    )
    samples: int | None = Field(default=None, ge=0, description="Test rows evaluated.")


class StageStatus(ApiModel):
    """One stage of sequential tuning."""

    name: str = Field(max_length=63, description="The stage's name.")
    phase: str = Field(max_length=32, description="Pending, Running, Succeeded or Failed.")
    steps: int | None = Field(default=None, ge=0, description="Optimizer steps the stage took.")
    test: dict[str, float] = Field(default_factory=dict, description="The stage's test metrics.")


class RetentionResults(ApiModel):
    """The forgetting guard's retention evaluation: loss on held-out general rows before and after tuning."""

    before: float = Field(description="Retention loss of the base model.")
    after: float = Field(description="Retention loss of the tuned model.")
    regression: float = Field(description="Relative rise of the loss: (after - before) / before.")
    max_regression: float | None = Field(default=None, description="The threshold of spec.forgettingGuard.")


class PreparedDataStatus(ApiModel):
    """The prepared-data cache the job reads (docs/trainer.md, "Splits and the prepared-data cache")."""

    fingerprint: str = Field(max_length=64, description="Key of the cache: what the data was prepared from and how.")
    reused: bool = Field(description="True when the cache held it already (an earlier run, stage or job).")


class CheckpointStatus(ApiModel):
    """The latest resumable checkpoint."""

    step: int = Field(ge=0, description="Optimizer step of the checkpoint.")
    location: str = Field(max_length=4096, description="Where it is stored.")
    time: datetime | None = Field(default=None, description="When it was written.")


class WorkerCounts(ApiModel):
    """Worker pods by state."""

    active: int = Field(default=0, ge=0, description="Pods running or pending.")
    succeeded: int = Field(default=0, ge=0, description="Pods finished successfully.")
    failed: int = Field(default=0, ge=0, description="Pods failed.")


class GateCheck(ApiModel):
    """One check of the promotion gate."""

    name: str = Field(max_length=253, description="What was checked, e.g. 'test f1 >= 0.8'.")
    value: float | None = Field(default=None, description="The measured value (unset when missing).")
    passed: bool = Field(description="Whether the check holds.")


class DeploymentStatus(ApiModel):
    """The inference server of spec.deploy."""

    name: str = Field(max_length=253, description="Deployment and Service name.")
    url: str = Field(max_length=1024, description="In-cluster base URL of the OpenAI-compatible API.")
    model: str = Field(max_length=253, description="Model name to send in requests.")
    ready_replicas: int = Field(default=0, ge=0, description="Server pods ready.")


class FineTuneJobStatus(ApiModel):
    """Observed state of a FineTuneJob."""

    observed_generation: int | None = Field(default=None, ge=0, description="Spec generation last acted on.")
    phase: Phase | None = Field(default=None, description="One-word summary of the conditions.")
    conditions: list[Condition] = Field(default_factory=list, max_length=16, description="Current conditions.")
    progress: Progress | None = Field(default=None, description="Training progress.")
    metrics: LatestMetrics | None = Field(default=None, description="Latest training and validation figures.")
    evaluation: EvaluationResults | None = Field(default=None, description="Test-set results.")
    retention: RetentionResults | None = Field(default=None, description="Forgetting-guard results.")
    prepared_data: PreparedDataStatus | None = Field(default=None, description="The prepared-data cache read.")
    gate: list[GateCheck] | None = Field(default=None, max_length=32, description="Promotion checks, when done.")
    deployment: DeploymentStatus | None = Field(default=None, description="The inference server (spec.deploy).")
    current_stage: str | None = Field(default=None, max_length=63, description="Stage running now (stages).")
    stages: list[StageStatus] | None = Field(default=None, max_length=8, description="Per-stage results (stages).")
    checkpoint: CheckpointStatus | None = Field(default=None, description="Latest checkpoint.")
    output_location: str | None = Field(default=None, max_length=4096, description="Where results were written.")
    workers: WorkerCounts | None = Field(default=None, description="Worker pods by state.")
    restarts: int = Field(default=0, ge=0, description="Times the workers were restarted after a failure.")
    start_time: datetime | None = Field(default=None, description="When training first started.")
    completion_time: datetime | None = Field(default=None, description="When the job succeeded or failed.")
