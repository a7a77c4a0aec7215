"""Faults a test installs into the trainer through its hooks (``kubetune.trainer.hooks``): ``kill_after(step)`` is
the environment of a trainer process that SIGKILLs itself, like an OOM kill, right after optimizer step ``step``
(and that step's checkpoint, when one is due)."""

from __future__ import annotations

import os
import signal

from kubetune.trainer.checkpoint import TrainerState
from kubetune.trainer.hooks import ENV, Hooks

STEP = "KUBETUNE_FAULT_AFTER_STEP"


def kill_after(step: int) -> dict[str, str]:
    """The environment variables that make a trainer process (and its torchrun workers) die after ``step``."""
    return {ENV: "tests.support.faults:install", STEP: str(step)}


def install(hooks: Hooks) -> None:
    step = int(os.environ[STEP])

    def kill(state: TrainerState) -> None:
        if state.step == step:
            os.kill(os.getpid(), signal.SIGKILL)

    hooks.after_step.append(kill)
