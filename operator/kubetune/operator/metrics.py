"""The operator's Prometheus metrics (``kubetune_*``, base units, bounded labels).

Per-job series are labelled by namespace and FineTuneJob name (bounded by the jobs that exist: a deleted job's
series are removed) and, for evaluation, by a metric name from a fixed list.
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Iterator
from contextlib import contextmanager

import kopf
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from kubetune.api.enums import ConditionStatus, ConditionType, Phase
from kubetune.api.status import FineTuneJobStatus
from kubetune.api.sweep import FineTuneSweepStatus
from kubetune.api.wire import HEADLINE

MODELS = ("tuned", "base", "fewshot")
"""The models whose headline test metrics (``wire.HEADLINE``) are exported."""

registry = CollectorRegistry()
JOB = ("namespace", "finetunejob")

jobs = Gauge("kubetune_finetunejobs", "FineTuneJobs by phase.", ("phase",), registry=registry)
phase = Gauge(
    "kubetune_finetunejob_status_phase",
    "1 for the job's current phase, 0 for the others.",
    (*JOB, "phase"),
    registry=registry,
)
workers = Gauge(
    "kubetune_finetunejob_workers",
    "Worker pods by state (active: running or pending).",
    (*JOB, "state"),
    registry=registry,
)
completion_time = Gauge(
    "kubetune_finetunejob_estimated_completion_timestamp_seconds",
    "When training is expected to end (Unix time), from the trainer's ETA.",
    JOB,
    registry=registry,
)
progress_ratio = Gauge(
    "kubetune_finetunejob_progress_ratio", "Training steps done / planned (0-1).", JOB, registry=registry
)
train_loss = Gauge("kubetune_finetunejob_train_loss", "Training loss of the latest step.", JOB, registry=registry)
validation_loss = Gauge(
    "kubetune_finetunejob_validation_loss", "Loss on the validation split, latest validation.", JOB, registry=registry
)
tokens_per_second = Gauge(
    "kubetune_finetunejob_tokens_per_second", "Training throughput over all workers.", JOB, registry=registry
)
restarts = Gauge(
    "kubetune_finetunejob_restarts", "Times the workers were restarted after a failure.", JOB, registry=registry
)
evaluation = Gauge(
    "kubetune_finetunejob_eval_metric",
    "Test-set metric of the tuned model (model=tuned), the base model (model=base) or the base model prompted "
    "few-shot (model=fewshot).",
    (*JOB, "metric", "model"),
    registry=registry,
)
retention_regression = Gauge(
    "kubetune_finetunejob_retention_regression_ratio",
    "Forgetting guard: relative rise of the loss on held-out general data after tuning (0.02: 2 %).",
    JOB,
    registry=registry,
)
overfitting = Gauge(
    "kubetune_finetunejob_overfitting",
    "1 while the validation loss has risen above its best as the training loss fell, else 0.",
    JOB,
    registry=registry,
)
SWEEP = ("namespace", "finetunesweep")
sweep_trials = Gauge(
    "kubetune_finetunesweep_trials", "A sweep's trials by phase.", (*SWEEP, "phase"), registry=registry
)
sweep_best = Gauge(
    "kubetune_finetunesweep_best_metric", "Objective value of a sweep's best finished trial.", SWEEP, registry=registry
)
TRIAL_PHASES = ("Pending", "Running", "Succeeded", "Failed", "Stopped", "Suspended")
reconcile_seconds = Histogram(
    "kubetune_reconcile_duration_seconds",
    "Time spent in one handler call.",
    ("handler",),
    registry=registry,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
errors = Counter(
    "kubetune_reconcile_errors_total",
    "Handler calls that raised, by outcome: error (an operator fault), temporary (waiting for something a user "
    "makes, e.g. a missing ConfigMap; kopf retries), permanent (an invalid spec; no retries).",
    ("handler", "outcome"),
    registry=registry,
)
HANDLERS = ("create", "suspend", "status", "deploy", "sweep")
OUTCOMES = ("error", "temporary", "permanent")
for _handler in HANDLERS:  # export zeros from the start, so rates and alerts see every handler
    for _outcome in OUTCOMES:
        errors.labels(handler=_handler, outcome=_outcome)
for _phase in Phase:
    jobs.labels(phase=_phase.value)

_phases: dict[tuple[str, str], str] = {}
_phase_counts: collections.Counter[str] = collections.Counter()
_PER_JOB = (
    progress_ratio,
    train_loss,
    validation_loss,
    tokens_per_second,
    restarts,
    completion_time,
    retention_regression,
    overfitting,
)
WORKER_STATES = ("active", "succeeded", "failed")


def serve(port: int) -> None:
    if port:
        start_http_server(port, registry=registry)


@contextmanager
def timed(handler: str) -> Iterator[None]:
    """Observe a handler call's duration; count it when it raises, under its outcome: kopf's TemporaryError and
    PermanentError are what a user's objects cause (the operator reports them in the status), anything else is an
    operator fault (the alert's outcome)."""
    started = time.perf_counter()
    try:
        yield
    except kopf.TemporaryError:
        errors.labels(handler=handler, outcome="temporary").inc()
        raise
    except kopf.PermanentError:
        errors.labels(handler=handler, outcome="permanent").inc()
        raise
    except Exception:
        errors.labels(handler=handler, outcome="error").inc()
        raise
    finally:
        reconcile_seconds.labels(handler=handler).observe(time.perf_counter() - started)


def _move(key: tuple[str, str], new: str | None) -> None:
    """Record a job's phase (None: gone) and adjust the per-phase job counts: O(1) per call, not O(jobs)."""
    old = _phases.pop(key, None) if new is None else _phases.get(key)
    if old == new:
        return
    if new is not None:
        _phases[key] = new
    for value, step in ((old, -1), (new, 1)):
        if value is not None:
            _phase_counts[value] += step
            jobs.labels(phase=value).set(_phase_counts[value])


def observe(namespace: str, name: str, status: FineTuneJobStatus) -> None:
    """Export one job's status."""
    key = (namespace, name)
    _move(key, status.phase.value if status.phase else Phase.PENDING.value)
    for each in Phase:
        phase.labels(*key, each.value).set(1 if each.value == _phases[key] else 0)
    if status.workers is not None:
        for state in WORKER_STATES:
            workers.labels(*key, state).set(getattr(status.workers, state))
    if status.progress is not None and status.progress.total_steps:
        progress_ratio.labels(*key).set(min(status.progress.step / status.progress.total_steps, 1.0))
    if status.progress is not None and status.progress.estimated_completion_time is not None:
        completion_time.labels(*key).set(status.progress.estimated_completion_time.timestamp())
    m = status.metrics
    for gauge, value in (
        (train_loss, m.loss if m else None),
        (validation_loss, m.validation_loss if m else None),
        (tokens_per_second, m.tokens_per_second if m else None),
        (restarts, status.restarts),
        (retention_regression, status.retention.regression if status.retention else None),
        (overfitting, _overfitting(status)),
    ):
        if value is not None:
            gauge.labels(*key).set(value)
    if status.evaluation is not None:
        e = status.evaluation
        for model, values in (("tuned", e.test), ("base", e.baseline), ("fewshot", e.few_shot)):
            for metric, value in values.items():
                if metric in HEADLINE:
                    evaluation.labels(*key, metric, model).set(value)


def _overfitting(status: FineTuneJobStatus) -> int | None:
    found = next((c for c in status.conditions if c.type == ConditionType.OVERFITTING), None)
    return None if found is None else int(found.status == ConditionStatus.TRUE)


def forget(namespace: str, name: str) -> None:
    """Remove a deleted job's series."""
    key = (namespace, name)
    _move(key, None)
    for gauge in _PER_JOB:
        with contextlib.suppress(KeyError):
            gauge.remove(*key)
    for labelled, values in ((phase, [p.value for p in Phase]), (workers, list(WORKER_STATES))):
        for value in values:
            with contextlib.suppress(KeyError):
                labelled.remove(*key, value)
    for metric in HEADLINE:
        for model in MODELS:
            with contextlib.suppress(KeyError):
                evaluation.remove(*key, metric, model)


def observe_sweep(namespace: str, name: str, status: FineTuneSweepStatus) -> None:
    """Export one sweep: its trials by phase and its best objective value."""
    counts = collections.Counter(t.phase for t in status.trials)
    for value in TRIAL_PHASES:
        sweep_trials.labels(namespace, name, value).set(counts.get(value, 0))
    if status.best_metric is not None:
        sweep_best.labels(namespace, name).set(status.best_metric)


def forget_sweep(namespace: str, name: str) -> None:
    """Remove a deleted sweep's series."""
    with contextlib.suppress(KeyError):
        sweep_best.remove(namespace, name)
    for value in TRIAL_PHASES:
        with contextlib.suppress(KeyError):
            sweep_trials.remove(namespace, name, value)
