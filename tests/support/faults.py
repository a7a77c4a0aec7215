"""Faults a test installs into the trainer through its hooks (``kubetune.trainer.hooks``): ``kill_after(step)`` is
the environment of a trainer process that SIGKILLs itself, like an OOM kill, right after optimizer step ``step``
(and that step's checkpoint, when one is due); ``stop_after(step, rank)`` makes one torchrun rank SIGSTOP itself
there instead: a hung rank, for the step-time watchdog; ``grow_after(step)`` allocates memory until the pod's limit
kills it."""

from __future__ import annotations

import os
import signal
import time

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


STOP_STEP, STOP_RANK = "KUBETUNE_FAULT_STOP_AFTER_STEP", "KUBETUNE_FAULT_STOP_RANK"


def stop_after(step: int, rank: int) -> dict[str, str]:
    """The environment that makes torchrun rank ``rank`` SIGSTOP itself after ``step``: a hung rank, alive but
    silent, that holds every other rank in its next all-reduce."""
    return {ENV: "tests.support.faults:install_stop", STOP_STEP: str(step), STOP_RANK: str(rank)}


def install_stop(hooks: Hooks) -> None:
    step, rank = int(os.environ[STOP_STEP]), os.environ[STOP_RANK]

    def stop(state: TrainerState) -> None:
        if state.step == step and os.environ.get("RANK", "0") == rank:
            os.kill(os.getpid(), signal.SIGSTOP)

    hooks.after_step.append(stop)


GROW_STEP, GROW_CAP = "KUBETUNE_FAULT_GROW_AFTER_STEP", 8 << 30


def grow_after(step: int) -> dict[str, str]:
    """The environment that makes a trainer allocate memory in a loop from ``step`` on, as a leak or an oversized
    batch would, until its memory limit kills it (it stops growing at 8 GiB and waits, should nothing kill it)."""
    return {ENV: "tests.support.faults:install_grow", GROW_STEP: str(step)}


def install_grow(hooks: Hooks) -> None:
    step = int(os.environ[GROW_STEP])

    def grow(state: TrainerState) -> None:
        if state.step < step:  # a run resumed past ``step`` grows at its first step
            return
        blocks = []
        while len(blocks) * (64 << 20) < GROW_CAP:
            blocks.append(bytearray(64 << 20))  # zero-filled: every page is touched, so it counts
            time.sleep(0.05)
        time.sleep(3600)

    hooks.after_step.append(grow)
