"""Guards read from the run's own figures: the divergence guard and early stopping (small classes the loop keeps
one of each), overfitting (validation loss rising while training loss falls) and the forgetting guard's retention
regression (pure functions over histories and losses)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from kubetune.api.training import EarlyStopping as EarlyStoppingSpec
from kubetune.api.tuning import ForgettingGuard

from .checkpoint import TrainerState
from .errors import DivergedError


class DivergenceGuard:
    """Stops a run whose loss is not a number, or stays above ``FACTOR`` x the first step's for ``STEPS`` steps."""

    FACTOR = 5.0
    STEPS = 5

    def __init__(self) -> None:
        self.exploding = 0

    def check(self, loss: float, step: int, first_loss: float) -> None:
        """Raise DivergedError when step ``step``'s ``loss`` shows divergence; ``first_loss`` is the run's first."""
        if not math.isfinite(loss):
            raise DivergedError(f"loss became {loss} at step {step}; lower spec.training.learningRate")
        self.exploding = self.exploding + 1 if loss > self.FACTOR * first_loss else 0
        if self.exploding >= self.STEPS:
            raise DivergedError(
                f"loss {loss:.4g} at step {step} has stayed above {self.FACTOR:g}x the first "
                f"step's ({first_loss:.4g}) for {self.STEPS} steps; lower spec.training.learningRate"
            )


@dataclass
class EarlyStopping:
    """The best validation value so far and the patience left (kept in the TrainerState, so a resume continues)."""

    higher_is_better: bool
    settings: EarlyStoppingSpec | None

    def update(self, state: TrainerState, value: float) -> bool:
        """Record validation ``value`` at ``state.step``; True when it is the new best (its weights are kept)."""
        best, delta = state.best_value, self.settings.min_delta if self.settings else 0.0
        improved = best is None or (value > best + delta if self.higher_is_better else value < best - delta)
        if improved:
            state.best_value, state.best_step, state.bad_validations = value, state.step, 0
        else:
            state.bad_validations += 1
        state.stopped_early = self.settings is not None and state.bad_validations >= self.settings.patience
        return improved


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
