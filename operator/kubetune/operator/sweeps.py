"""FineTuneSweep policy, pure: the search space, each trial's FineTuneJob, and one reconcile step (which trials
to create, which to stop, the leaderboard) from the trials as they are and ``now``.

Trials are FineTuneJobs named ``<sweep>-NNN`` (NNN: the trial's index in the search space), labelled with the
sweep and owned by it, each writing to its own output directory (``<output path>/<trial>``). At most
``maxParallel`` run at once, ``maxTrials`` are made in all. Median stopping suspends a running trial (it keeps its
checkpoint and could be resumed) whose best validation metric, past ``afterPercent`` of its steps, is worse than
the median of the finished trials'.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import statistics
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from kubetune.api.enums import ConditionType, Phase, SearchAlgorithm, ValidationMetric
from kubetune.api.errors import describe
from kubetune.api.reasons import Reason, message
from kubetune.api.spec import API_VERSION, KIND, parse_spec
from kubetune.api.sweep import FineTuneSweep, FineTuneSweepStatus, Parameter, Trial

from .conditions import Conditions, Transition
from .naming import LABEL_MANAGED_BY

LABEL_SWEEP = "kubetune.dev/finetunesweep"
LABEL_TRIAL = "kubetune.dev/trial"
PARAMETERS = "kubetune.dev/parameters"
STOPPED = "kubetune.dev/stopped"
LOWER_IS_BETTER = ("loss", "perplexity", "Loss")


def wire(status: FineTuneSweepStatus) -> dict[str, Any]:
    """The status as patched: unset fields left out, integral parameter values as integers (as the API server
    keeps them, so kopf's check of the patch finds what it sent)."""
    doc = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    for values in [t["parameters"] for t in doc.get("trials", [])] + [doc.get("bestParameters") or {}]:
        values.update({k: int(v) for k, v in values.items() if float(v).is_integer()})
    return doc


def _draw(parameter: Parameter, rng: random.Random) -> float:
    if parameter.values is not None:
        return rng.choice(parameter.values)
    assert parameter.min is not None and parameter.max is not None
    if parameter.log:
        value = math.exp(rng.uniform(math.log(parameter.min), math.log(parameter.max)))
    else:
        value = rng.uniform(parameter.min, parameter.max)
    return float(round(value)) if parameter.integer else float(f"{value:.6g}")


def space(sweep: FineTuneSweep) -> list[dict[str, float]]:
    """Every trial's parameter values, in trial order, within the budget."""
    spec = sweep.spec
    if spec.algorithm == SearchAlgorithm.GRID:
        grid = itertools.product(*[p.values or [] for p in spec.parameters])
        return [
            dict(zip([p.path for p in spec.parameters], combo, strict=True))
            for combo in itertools.islice(grid, spec.max_trials)
        ]
    rng = random.Random(spec.seed)
    return [{p.path: _draw(p, rng) for p in spec.parameters} for _ in range(spec.max_trials)]


def trial_name(sweep: FineTuneSweep, index: int) -> str:
    return f"{sweep.name}-{index:03d}"


def _set(doc: dict[str, Any], path: str, value: float) -> None:
    *parents, leaf = path.split(".")
    for key in parents:
        doc = doc.setdefault(key, {})
        if not isinstance(doc, dict):
            raise ValueError(f"{path}: {key} is not an object")
    doc[leaf] = int(value) if float(value).is_integer() else value


def trial_job(sweep: FineTuneSweep, index: int, values: dict[str, float]) -> dict[str, Any]:
    """The trial's FineTuneJob manifest; a ValueError names the trial and parameter when the spec is invalid."""
    spec = sweep.spec.template.to_wire()
    name = trial_name(sweep, index)
    for path, value in values.items():
        _set(spec, path, value)
    output = spec.get("output") or {}
    if "pvc" in output:
        output["pvc"]["path"] = f"{output['pvc'].get('path', '')}/{name}".lstrip("/")
    elif "uri" in output:
        output["uri"] = f"{output['uri'].rstrip('/')}/{name}"
    try:
        parse_spec(spec)
    except ValidationError as error:
        shown = ", ".join(f"{k}={v:g}" for k, v in values.items())
        raise ValueError(f"trial {index} ({shown}): {describe(error, prefix='spec.template')}") from error
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": sweep.namespace,
            "labels": {LABEL_SWEEP: sweep.name, LABEL_TRIAL: str(index), LABEL_MANAGED_BY: "kubetune"},
            "annotations": {PARAMETERS: json.dumps(values, sort_keys=True)},
        },
        "spec": spec,
    }


def check(sweep: FineTuneSweep) -> list[str]:
    """Every invalid trial, as messages naming the trial and the field; empty when the sweep can run."""
    problems = []
    for index, values in enumerate(space(sweep)):
        try:
            trial_job(sweep, index, values)
        except ValueError as error:
            problems.append(str(error))
    return problems[:5]


def goal_lower(sweep: FineTuneSweep) -> bool:
    """Whether a lower objective value is better."""
    objective = sweep.spec.objective
    if objective.goal is not None:
        return objective.goal == "Minimize"
    if objective.metric == "bestValidationMetric":
        return sweep.spec.template.validation.metric == ValidationMetric.LOSS
    return objective.metric.split(".")[-1] in LOWER_IS_BETTER or objective.metric == "validationLoss"


def objective(sweep: FineTuneSweep, trial: dict[str, Any]) -> float | None:
    """A trial's objective value from its status (the latest while it runs; test metrics once it succeeded)."""
    status = trial.get("status") or {}
    metric = sweep.spec.objective.metric
    if metric.startswith("test."):
        value = ((status.get("evaluation") or {}).get("test") or {}).get(metric[5:])
    else:
        value = (status.get("metrics") or {}).get(metric)
    return float(value) if isinstance(value, int | float) else None


def _validation(trial: dict[str, Any]) -> float | None:
    value = ((trial.get("status") or {}).get("metrics") or {}).get("bestValidationMetric")
    return float(value) if isinstance(value, int | float) else None


def _phase(trial: dict[str, Any]) -> str:
    annotations = trial["metadata"].get("annotations") or {}
    if annotations.get(STOPPED):
        return "Stopped"
    return str((trial.get("status") or {}).get("phase") or Phase.PENDING)


@dataclass
class Step:
    """One reconcile step: trials to create and to stop, the new status and the Events."""

    create: list[dict[str, Any]] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)
    status: FineTuneSweepStatus = field(default_factory=FineTuneSweepStatus)
    transitions: list[Transition] = field(default_factory=list)


def reconcile(sweep: FineTuneSweep, trials: list[dict[str, Any]], now: datetime) -> Step:
    """What to do next, given the sweep's trials as they are (from the index)."""
    plan = space(sweep)
    by_index = {int(t["metadata"]["labels"][LABEL_TRIAL]): t for t in trials}
    phases = {i: _phase(t) for i, t in by_index.items()}
    active = [i for i, p in phases.items() if p in (Phase.PENDING, Phase.RUNNING)]
    step = Step(status=(sweep.status or FineTuneSweepStatus()).model_copy(deep=True))
    lower = goal_lower(sweep)

    # Median stopping: compares the validation metric, the one value every trial reports while it runs.
    stopping = sweep.spec.early_stopping
    finished = [v for i, t in by_index.items() if phases[i] == Phase.SUCCEEDED and (v := _validation(t)) is not None]
    validation_lower = sweep.spec.template.validation.metric == ValidationMetric.LOSS
    if stopping is not None and len(finished) >= stopping.min_trials:
        median = statistics.median(finished)
        for i in active:
            t = by_index[i]
            progress = ((t.get("status") or {}).get("progress") or {}).get("percentage") or 0
            value = _validation(t)
            worse = value is not None and (value > median if validation_lower else value < median)
            if progress >= stopping.after_percent and worse:
                step.stop.append(t["metadata"]["name"])
                phases[i] = "Stopped"
                text = message(Reason.TRIAL_STOPPED, t["metadata"]["name"], value, median)
                step.transitions.append(Transition(ConditionType.RUNNING, Reason.TRIAL_STOPPED, text))
        active = [i for i in active if phases[i] != "Stopped"]

    # New trials, in order, up to maxParallel running and maxTrials in all.
    index = max(by_index, default=-1) + 1
    while index < len(plan) and len(active) < sweep.spec.max_parallel:
        step.create.append(trial_job(sweep, index, plan[index]))
        phases[index] = Phase.PENDING
        active.append(index)
        index += 1

    # The leaderboard.
    rows = []
    for i in sorted(phases):
        found = by_index.get(i)
        values = plan[i] if i < len(plan) else {}
        progress = (((found or {}).get("status") or {}).get("progress") or {}).get("percentage")
        rows.append(
            Trial(
                name=trial_name(sweep, i),
                parameters=values,
                phase=phases[i],
                metric=objective(sweep, found) if found else None,
                progress=progress,
            )
        )
    ranked = sorted(rows, key=lambda r: (r.metric is None, (r.metric or 0.0) * (1 if lower else -1)))
    status = step.status
    status.trials, status.created, status.total = ranked, len(rows), len(plan)
    best = next((r for r in ranked if r.phase == Phase.SUCCEEDED and r.metric is not None), None)
    status.best_trial, status.best_metric = (best.name, best.metric) if best else (None, None)
    status.best_parameters = best.parameters if best else None
    status.observed_generation = sweep.metadata.get("generation")

    conditions = Conditions(status, sweep.metadata.get("generation"), now, step.transitions)
    done = len(rows) == len(plan) and not active
    if not done:
        running = len(active)
        conditions.set(
            ConditionType.RUNNING,
            True,
            Reason.TRIALS_RUNNING,
            message(Reason.TRIALS_RUNNING, running, len(rows), len(plan)),
        )
        status.phase = Phase.RUNNING
    elif best is None:
        succeeded = any(r.phase == Phase.SUCCEEDED for r in rows)
        reason = Reason.NO_OBJECTIVE if succeeded else Reason.NO_TRIAL_SUCCEEDED
        text = message(reason, sweep.spec.objective.metric)
        conditions.set(ConditionType.RUNNING, False, reason, text)
        conditions.set(ConditionType.FAILED, True, reason, text)
        status.phase, status.completion_time = Phase.FAILED, status.completion_time or now
    else:
        text = message(Reason.SWEEP_COMPLETED, best.name, best.metric, json.dumps(best.parameters))
        conditions.set(ConditionType.RUNNING, False, Reason.SWEEP_COMPLETED, text)
        conditions.set(ConditionType.SUCCEEDED, True, Reason.SWEEP_COMPLETED, text)
        status.phase, status.completion_time = Phase.SUCCEEDED, status.completion_time or now
    return step
