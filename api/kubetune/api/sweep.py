"""The FineTuneSweep resource (kubetune.dev/v1alpha1): a FineTuneJob template, a search space over its fields,
a budget, and the leaderboard of its trials in the status."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from .base import ApiModel, Resource, Rule, name_rule
from .enums import Phase, SearchAlgorithm
from .spec import FineTuneJobSpec
from .status import Condition

SWEEP_KIND = "FineTuneSweep"
SWEEP_PLURAL = "finetunesweeps"
MAX_SWEEP_NAME = 48
"""Leaves room for the trials' ``-NNN`` suffix within a FineTuneJob's 52 characters."""
PATH = r"^[a-z][A-Za-z0-9]*(\.[a-z][A-Za-z0-9]*)*$"


class Parameter(ApiModel):
    """One searched field of the template's spec: listed values (grid or random choice) or a range (random)."""

    path: str = Field(
        min_length=1,
        max_length=253,
        pattern=PATH,
        description="The spec field, as a camelCase path: training.learningRate, method.lora.rank, "
        "method.lora.alpha, training.epochs, training.perDeviceBatchSize, ...",
    )
    values: list[float] | None = Field(default=None, min_length=1, max_length=64, description="Values to try.")
    min: float | None = Field(default=None, description="Lower end of the range (Random only).")
    max: float | None = Field(default=None, description="Upper end of the range (Random only).")
    log: bool = Field(default=False, description="Sample the range on a log scale (learning rates).")
    integer: bool = Field(default=False, description="Round sampled values to integers (ranks, epochs).")

    rules = (
        Rule(
            cel="has(self.values) != (has(self.min) && has(self.max))",
            message="set either values, or min and max",
            check=lambda s: (s.values is not None) != (s.min is not None and s.max is not None),
        ),
        Rule(
            cel="!has(self.min) || !has(self.max) || (self.min < self.max && (!self.log || self.min > 0.0))",
            message="min must be below max, and above 0 on a log scale",
            check=lambda s: s.min is None or s.max is None or (s.min < s.max and (not s.log or s.min > 0)),
        ),
    )


class Objective(ApiModel):
    """What ranks the trials."""

    metric: str = Field(
        default="bestValidationMetric",
        max_length=64,
        pattern=r"^(bestValidationMetric|validationLoss|test\.[A-Za-z][A-Za-z0-9]*)$",
        description="bestValidationMetric (the template's validation.metric), validationLoss, or test.<metric> "
        "(e.g. test.f1, test.loss).",
    )
    goal: Literal["Minimize", "Maximize"] | None = Field(
        default=None,
        description="Minimize or Maximize; from the metric when unset (losses and perplexity: Minimize).",
    )


class MedianStopping(ApiModel):
    """Median stopping: a running trial whose best validation metric, past a share of its steps, is worse than
    the median final value of the finished trials is suspended (it keeps its checkpoint)."""

    after_percent: int = Field(default=50, ge=1, le=99, description="Compare trials past this share of their steps.")
    min_trials: int = Field(default=2, ge=1, le=100, description="Finished trials needed before any is stopped.")


class FineTuneSweepSpec(ApiModel):
    """A hyperparameter search: trials are FineTuneJobs made from the template with the searched fields set."""

    template: FineTuneJobSpec = Field(description="The FineTuneJob spec every trial starts from.")
    parameters: list[Parameter] = Field(min_length=1, max_length=8, description="The search space.")
    algorithm: SearchAlgorithm = Field(
        default=SearchAlgorithm.GRID,
        description="Grid: every combination of the values, in order. Random: seeded draws from values or ranges.",
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Seed of the random draws.")
    max_trials: int = Field(default=16, ge=1, le=500, description="Budget: trials created at most.")
    max_parallel: int = Field(default=2, ge=1, le=64, description="Trials running at once.")
    objective: Objective = Field(default_factory=Objective, description="What ranks the trials.")
    early_stopping: MedianStopping | None = Field(default=None, description="Median stopping; off when unset.")

    rules = (
        Rule(
            cel="self.algorithm == 'Random' || self.parameters.all(p, has(p.values))",
            message="algorithm Grid needs values on every parameter (ranges are for Random)",
            check=lambda s: s.algorithm == SearchAlgorithm.RANDOM or all(p.values for p in s.parameters),
        ),
        Rule(
            cel="self.parameters.all(a, self.parameters.exists_one(b, b.path == a.path))",
            message="parameters[].path must be unique",
            check=lambda s: len({p.path for p in s.parameters}) == len(s.parameters),
        ),
    )


class Trial(ApiModel):
    """One trial on the leaderboard."""

    name: str = Field(max_length=253, description="The trial's FineTuneJob.")
    parameters: dict[str, float] = Field(default_factory=dict, description="Its values of the searched fields.")
    phase: str = Field(max_length=32, description="Pending, Running, Succeeded, Failed or Stopped.")
    metric: float | None = Field(default=None, description="Its objective value (latest while it runs).")
    progress: int | None = Field(default=None, ge=0, le=100, description="Percent of its steps done.")


class FineTuneSweepStatus(ApiModel):
    """Observed state of a FineTuneSweep."""

    observed_generation: int | None = Field(default=None, ge=0, description="Spec generation last acted on.")
    phase: Phase | None = Field(default=None, description="Pending, Running, Succeeded or Failed.")
    conditions: list[Condition] = Field(default_factory=list, max_length=8, description="Current conditions.")
    trials: list[Trial] = Field(
        default_factory=list, max_length=500, description="Leaderboard: best first, then trials without a metric."
    )
    best_trial: str | None = Field(default=None, max_length=253, description="The best finished trial.")
    best_metric: float | None = Field(default=None, description="Its objective value.")
    best_parameters: dict[str, float] | None = Field(default=None, description="Its values of the searched fields.")
    created: int = Field(default=0, ge=0, description="Trials created so far.")
    total: int = Field(default=0, ge=0, description="Trials the sweep will create (search space within budget).")
    completion_time: datetime | None = Field(default=None, description="When every trial had finished.")


class FineTuneSweep(Resource):
    """A hyperparameter sweep over FineTuneJobs."""

    api_version: Literal["kubetune.dev/v1alpha1"] = Field(description="kubetune.dev/v1alpha1")
    kind: Literal["FineTuneSweep"] = Field(description="FineTuneSweep")
    spec: FineTuneSweepSpec = Field(description="Desired state.")
    status: FineTuneSweepStatus | None = Field(default=None, description="Observed state, written by the operator.")

    rules = (name_rule(MAX_SWEEP_NAME),)


def parse_sweep(manifest: dict[str, Any]) -> FineTuneSweep:
    """Validate a FineTuneSweep manifest as the API server would."""
    return FineTuneSweep.model_validate_json(json.dumps(manifest))
