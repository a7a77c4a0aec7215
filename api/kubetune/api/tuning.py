"""Tuning beyond one dataset: sequential stages, the catastrophic-forgetting guard, and context extension."""

from __future__ import annotations

from pydantic import Field

from .base import ApiModel
from .enums import DataFormat, RegressionAction, RopeScaling
from .sources import DNS_LABEL
from .training import Task, Training


class Stage(ApiModel):
    """One stage of sequential tuning. It starts from the previous stage's output (the base model for the
    first), trains on its own datasets, and inherits whatever it leaves unset from the job's spec."""

    name: str = Field(
        min_length=1, max_length=63, pattern=DNS_LABEL, description="Name of the stage, unique in the job."
    )
    datasets: list[str] = Field(
        min_length=1,
        max_length=32,
        description="Names of spec.data.datasets this stage trains, validates and tests on (General datasets "
        "always join for the forgetting guard).",
    )
    format: DataFormat | None = Field(
        default=None, description="Row format of this stage; spec.data.format when unset."
    )
    task: Task | None = Field(default=None, description="Task of this stage; spec.task when unset.")
    training: Training | None = Field(
        default=None, description="Hyperparameters of this stage, as a whole; spec.training when unset."
    )


class ForgettingGuard(ApiModel):
    """Guards general abilities while tuning (CausalLM). The rows of datasets with usage General are split into
    a replay pool, mixed into training, and a held-out retention set, whose loss is measured before and after
    tuning; the relative rise is the regression."""

    replay_ratio: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Replayed rows added to each epoch, per training row (0: no replay, retention check only).",
    )
    replay_earlier_stages: bool = Field(
        default=True, description="With stages, earlier stages' training rows join the replay pool."
    )
    retention_ratio: float = Field(
        default=0.5,
        gt=0,
        lt=1,
        description="Share of the General rows held out for the retention evaluation (never replayed).",
    )
    max_regression: float | None = Field(
        default=None,
        ge=0,
        le=10,
        description="Largest relative rise of the retention loss allowed (0.02: 2 %); no threshold when unset.",
    )
    on_regression: RegressionAction = Field(
        default=RegressionAction.MARK_NOT_PROMOTABLE,
        description="Fail: the job fails. MarkNotPromotable: it succeeds with condition Promotable=False.",
    )


class ContextExtension(ApiModel):
    """Stretch the model's context with RoPE scaling, train on long (packed) sequences, and check passkey
    retrieval at the new length."""

    rope_scaling: RopeScaling = Field(description="Linear, Dynamic (NTK) or YaRN.")
    target_length: int = Field(
        ge=32, le=1_048_576, description="New context length in tokens; the scaling factor is this over the model's."
    )
    passkey_samples: int = Field(
        default=5,
        ge=0,
        le=1000,
        description="Passkey-retrieval prompts of the target length evaluated on the base and tuned model (0: none).",
    )
