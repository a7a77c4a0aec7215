"""Guards read from the run's own figures: overfitting (validation loss rising while training loss falls) and
the forgetting guard's retention regression. Pure functions over histories and losses."""

from __future__ import annotations

from typing import Any

from kubetune.api.tuning import ForgettingGuard

RISE = 0.01
"""Validation loss counts as risen when it is more than 1 % above its best."""


def _mean_train_loss(train: list[dict[str, Any]], upto: int, window: int) -> float | None:
    losses = [row["loss"] for row in train if upto - window < row["step"] <= upto]
    return sum(losses) / len(losses) if losses else None


def overfitting(train: list[dict[str, Any]], validation: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether the latest validation loss rose above its best while training loss fell over the same steps.

    Training loss is averaged over the steps since the validation before each point, so one noisy step does
    not decide. Returns ``{"detected": False}`` or the figures that show it.
    """
    if len(validation) < 2:
        return {"detected": False}
    best = min(validation, key=lambda row: row["loss"])
    last = validation[-1]
    window = max(validation[1]["step"] - validation[0]["step"], 1)
    train_at_best = _mean_train_loss(train, best["step"], window)
    train_now = _mean_train_loss(train, last["step"], window)
    risen = last["step"] > best["step"] and last["loss"] > best["loss"] * (1 + RISE)
    if not risen or train_at_best is None or train_now is None or train_now >= train_at_best:
        return {"detected": False}
    return {
        "detected": True,
        "bestStep": best["step"],
        "bestValidationLoss": round(best["loss"], 6),
        "step": last["step"],
        "validationLoss": round(last["loss"], 6),
        "trainLossAtBest": round(train_at_best, 6),
        "trainLoss": round(train_now, 6),
    }


def retention(before: float, after: float, guard: ForgettingGuard) -> dict[str, Any]:
    """The retention result: losses, relative regression, the threshold and whether it held."""
    regression = (after - before) / before if before > 0 else 0.0
    limit = guard.max_regression
    return {
        "before": round(before, 6),
        "after": round(after, 6),
        "regression": round(regression, 6),
        "maxRegression": limit,
        "passed": limit is None or regression <= limit,
    }
