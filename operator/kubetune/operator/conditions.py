"""Conditions as Kubernetes API conventions keep them: one per type, lastTransitionTime moved only when the status
changes, and each change worth telling a Transition (one Kubernetes Event: Normal, or Warning for the reasons in
``WARNING_REASONS``). Shared by FineTuneJob, FineTuneSweep and deployment status."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from kubetune.api.enums import ConditionStatus, ConditionType, Phase
from kubetune.api.reasons import Reason, message
from kubetune.api.status import Condition

WARNING_REASONS = {
    Reason.INVALID_SPEC,
    Reason.WORKER_FAILED,
    Reason.RESTARTS_EXHAUSTED,
    Reason.CONFIGURATION_ERROR,
    Reason.DATA_CHANGED,
    Reason.DEADLINE_EXCEEDED,
    Reason.DIVERGED,
    Reason.MISSING_REFERENCE,
    Reason.VOLUME_MOUNT_FAILED,
    Reason.VALIDATION_LOSS_RISING,
    Reason.RETENTION_REGRESSED,
    Reason.SMALL_SPLITS,
    Reason.GATE_FAILED,
    Reason.NO_TRIAL_SUCCEEDED,
    Reason.NO_OBJECTIVE,
}


class WithConditions(Protocol):
    """A status with conditions: a FineTuneJob's or a FineTuneSweep's."""

    conditions: list[Condition]


@dataclass(frozen=True)
class Transition:
    """A condition that changed status or reason: one Kubernetes Event."""

    type: str
    reason: str
    message: str

    @property
    def event_type(self) -> str:
        return "Warning" if self.reason in WARNING_REASONS else "Normal"


@dataclass
class Conditions:
    """The conditions of one ``status`` being computed at ``now``, and the transitions their changes make."""

    status: WithConditions
    generation: int | None
    now: datetime
    transitions: list[Transition] = field(default_factory=list)

    def set(self, kind: ConditionType, ok: bool, reason: Reason, text: str | None = None) -> None:
        """Set condition ``kind``; a change that succeeds, or fails with a warning reason, becomes a transition."""
        text = text if text is not None else message(reason)
        state = ConditionStatus.TRUE if ok else ConditionStatus.FALSE
        changed = set_condition(self.status.conditions, kind, state, reason, text, self.generation, self.now)
        if changed and (ok or reason in WARNING_REASONS):
            self.transitions.append(Transition(kind, reason, text))


def set_condition(
    conditions: list[Condition],
    kind: ConditionType,
    status: ConditionStatus,
    reason: Reason,
    text: str,
    generation: int | None,
    now: datetime,
) -> bool:
    """Set one condition in place; lastTransitionTime moves only when status changes. True when status or
    reason changed (worth an Event)."""
    for i, old in enumerate(conditions):
        if old.type == kind:
            moved = old.last_transition_time if old.status == status else now
            conditions[i] = Condition(
                type=kind,
                status=status,
                reason=reason,
                message=text,
                observed_generation=generation,
                last_transition_time=moved,
            )
            return old.status != status or old.reason != reason
    conditions.append(
        Condition(
            type=kind,
            status=status,
            reason=reason,
            message=text,
            observed_generation=generation,
            last_transition_time=now,
        )
    )
    return True


def is_true(current: WithConditions | None, kind: ConditionType) -> bool:
    """Whether ``current`` (a FineTuneJob's or FineTuneSweep's status, or None) has condition ``kind`` True."""
    return current is not None and any(c.type == kind and c.status == ConditionStatus.TRUE for c in current.conditions)


def rejected(text: str, generation: int | None, now: datetime) -> dict[str, Any]:
    """The status patch of an object whose spec is invalid: Accepted=False (InvalidSpec), phase Failed."""
    conditions: list[Condition] = []
    set_condition(
        conditions,
        ConditionType.ACCEPTED,
        ConditionStatus.FALSE,
        Reason.INVALID_SPEC,
        message(Reason.INVALID_SPEC, text),
        generation,
        now,
    )
    return {
        "conditions": [c.model_dump(mode="json", by_alias=True) for c in conditions],
        "phase": Phase.FAILED.value,
        "observedGeneration": generation,
    }
