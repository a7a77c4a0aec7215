"""The promotion gate: a succeeded job's test results and retention against spec.promotion (and the forgetting
guard's own threshold when it marks instead of failing). Pure: results in, checks out."""

from __future__ import annotations

from kubetune.api.enums import RegressionAction, ValidationMetric
from kubetune.api.spec import FineTuneJobSpec
from kubetune.api.status import EvaluationResults, GateCheck, RetentionResults


def evaluate(
    spec: FineTuneJobSpec, evaluation: EvaluationResults | None, retention: RetentionResults | None
) -> tuple[bool, list[GateCheck]]:
    """(promotable, checks): every declared check, each with its measured value; no checks means promotable."""
    test = evaluation.test if evaluation else {}
    base = evaluation.baseline if evaluation else {}
    checks: list[GateCheck] = []
    promotion = spec.promotion
    for threshold in promotion.thresholds if promotion else []:
        value = test.get(threshold.metric)
        if threshold.min is not None:
            ok = value is not None and value >= threshold.min
            checks.append(GateCheck(name=f"test {threshold.metric} >= {threshold.min:g}", value=value, passed=ok))
        if threshold.max is not None:
            ok = value is not None and value <= threshold.max
            checks.append(GateCheck(name=f"test {threshold.metric} <= {threshold.max:g}", value=value, passed=ok))
    if promotion and promotion.beat_base_model:
        metric = {ValidationMetric.LOSS: "loss", ValidationMetric.ACCURACY: "accuracy", ValidationMetric.F1: "f1"}[
            spec.validation.metric
        ]
        tuned, before = test.get(metric), base.get(metric)
        better = tuned is not None and before is not None and (tuned < before if metric == "loss" else tuned > before)
        checks.append(GateCheck(name=f"test {metric} beats the base model ({before})", value=tuned, passed=better))
    limits = []
    if promotion and promotion.max_retention_regression is not None:
        limits.append(promotion.max_retention_regression)
    guard = spec.forgetting_guard
    if guard and guard.max_regression is not None and guard.on_regression == RegressionAction.MARK_NOT_PROMOTABLE:
        limits.append(guard.max_regression)
    if limits:
        limit = min(limits)
        value = retention.regression if retention else None
        ok = value is not None and value <= limit
        checks.append(GateCheck(name=f"retention regression <= {limit:.1%}", value=value, passed=ok))
    return all(c.passed for c in checks), checks
