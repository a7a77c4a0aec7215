"""The trainer-to-operator contract: rank 0's ``/progress`` document and its termination summary.

The trainer builds these models and writes them as camelCase JSON; the operator parses them once, where it reads
them (``kube.progress``, ``children.termination``), and works with typed fields from there on. Unlike the API's
own types, a wire document ignores fields it does not know, so an operator reads the documents of a newer trainer
image (a user's ``spec.image``) without failing; the trainer checks its own field names (``wire_fields``).
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from .enums import TestMetric

HEADLINE: tuple[str, ...] = tuple(metric.value for metric in TestMetric)
"""The headline test metrics, in this order: what summaries, statuses, metrics and model cards carry."""


class WireModel(BaseModel):
    """A wire document: camelCase JSON, unknown fields ignored (see the module docstring)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def to_wire(self) -> dict[str, Any]:
        """The document as JSON-ready camelCase data, unset parts left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    @classmethod
    def read(cls, data: Any) -> Self | None:
        """The document of ``data`` (a dict, or JSON text); None when it is not one."""
        try:
            if isinstance(data, str | bytes):
                return cls.model_validate_json(data)
            return cls.model_validate(data)
        except ValidationError:
            return None


def wire_fields(model: type[WireModel]) -> set[str]:
    """Every name a field of ``model`` may be given by: its attribute name and its camelCase alias."""
    names = set(model.model_fields)
    return names | {field.alias for field in model.model_fields.values() if field.alias}


class Overfitting(WireModel):
    """Whether validation loss rose while training loss fell, with the figures that show it."""

    detected: bool = False
    best_step: int | None = None
    best_validation_loss: float | None = None
    step: int | None = None
    validation_loss: float | None = None
    train_loss_at_best: float | None = None
    train_loss: float | None = None


class Retention(WireModel):
    """The forgetting guard's losses on held-out general rows, before and after tuning."""

    before: float
    after: float
    regression: float
    max_regression: float | None = None
    passed: bool = True


class StageResult(WireModel):
    """One stage of sequential tuning."""

    name: str
    phase: str = "Pending"
    steps: int | None = None
    test: dict[str, float] = Field(default_factory=dict)


class PreparedDataRef(WireModel):
    """The prepared-data cache the run read: its fingerprint, and whether it was there already."""

    fingerprint: str
    reused: bool


class Verdicts(WireModel):
    """What both documents may carry about the run as a whole: stages, overfitting, data warnings, retention."""

    stage: str | None = None
    stage_index: int | None = None
    stages: list[StageResult] | None = None
    overfitting: Overfitting | None = None
    data_warnings: list[str] | None = None
    retention: Retention | None = None
    prepared_data: PreparedDataRef | None = None


class TrainerProgress(Verdicts):
    """Rank 0's ``/progress``: the phase and the latest step's figures."""

    phase: str = "Preparing"
    """Preparing, Downloading, EvaluatingBaseModel, Training, Evaluating, Saving, Succeeded or Failed."""
    download: dict[str, Any] | None = None
    preparation: dict[str, Any] | None = None
    """While Preparing: ``rowsRead``, ``bytesRead`` and ``rowsPerSecond``, or ``waitingSeconds`` (another process
    prepares the data); then ``preparedData`` says which cache the run reads."""
    resumed_from_step: int | None = None
    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    validation_loss: float | None = None
    best_validation_metric: float | None = None
    best_step: int | None = None
    checkpoint_step: int | None = None
    checkpoint_time: float | None = None
    """Unix time the checkpoint of ``checkpointStep`` was written."""
    updated: float | None = None
    """Unix time of the latest step's report."""


class FinalFigures(WireModel):
    """The last step's figures in the summary, so a run that ends between two reads of ``/progress`` reports
    them; the names are those of the status's ``metrics``."""

    epoch: float | None = None
    loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    tokens_per_second: float | None = None
    validation_loss: float | None = None
    best_validation_metric: float | None = None
    best_step: int | None = None
    last_validation_metric: float | None = None
    delivered_step: int | None = None
    checkpoint_step: int | None = None
    """The last checkpoint written, so ``status.checkpoint`` does not depend on the operator reading
    ``/progress`` between that checkpoint and the run's end."""
    checkpoint_time: float | None = None


class TrainerSummary(Verdicts):
    """The termination message of the trainer container: how the run ended and what it measured."""

    phase: str = "Failed"
    """Succeeded or Failed."""
    reason: str | None = None
    """Failed: the error's class (ConfigError, DivergedError, RegressedError)."""
    message: str | None = None
    output: str | None = None
    steps: int | None = None
    final: FinalFigures | None = None
    test: dict[str, float] | None = None
    baseline: dict[str, float] | None = None
    few_shot: dict[str, float] | None = None
    few_shot_k: int | None = None
    tasks: dict[str, dict[str, float]] | None = None
    samples: int | None = None
    """Test rows evaluated."""


SUMMARY_OPTIONAL = (
    "tasks",
    "stages",
    "overfitting",
    "fewShot",
    "final",
    "baseline",
    "retention",
    "dataWarnings",
    "preparedData",
    "test",
    "output",
)
"""Summary parts left out of the termination message, in this order, until it fits its limit."""
