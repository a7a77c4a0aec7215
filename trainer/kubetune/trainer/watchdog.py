"""The step-time watchdog: a rank whose training step runs longer than ``spec.training.stepTimeoutSeconds``, or
that stops beating at all, is hung; the pod's launcher ends the round naming it, and the Job's restart resumes
from the last checkpoint.

Without it a hung rank (a stopped or frozen process, a deadlocked collective) holds every other rank in its
all-reduce until the process group's own timeout: 30 minutes for NCCL and gloo by default. Each worker runs a
``Heartbeat`` thread that writes, every few seconds, a small JSON file for its launcher: when it beat, its rank,
and the training step in progress and since when. A stopped process writes nothing, so its file goes stale; a
rank stuck in a step keeps beating with an old ``stepStarted``. ``supervise`` (``runtime``) reads its pod's files
with ``hung`` and, on a verdict, SIGKILLs torchrun's process group, which closes the hung rank's connections so
the other pods' ranks fail at once instead of waiting out the timeout.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HEARTBEAT_DIR = "KUBETUNE_HEARTBEAT_DIR"
"""Where a launcher's workers write their heartbeats (set by ``supervise``)."""
BEAT_SECONDS = 2.0


class Heartbeat:
    """One worker's heartbeat file, rewritten every ``interval`` seconds by a daemon thread."""

    def __init__(self, directory: Path, rank: int, interval: float = BEAT_SECONDS) -> None:
        self.path, self.rank, self.interval = directory / f"rank-{rank}.json", rank, interval
        self.step: int | None = None
        self.step_started: float | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="kubetune-heartbeat", daemon=True)

    @classmethod
    def from_env(cls, rank: int) -> Heartbeat | None:
        """The process's heartbeat when its launcher watches (``$KUBETUNE_HEARTBEAT_DIR``), else None: started
        on the first call, the same one after (stages train several times in one process). It beats until the
        process ends, evaluation included: a file that stopped would read as a hung rank."""
        global _PROCESS_HEARTBEAT
        directory = os.environ.get(HEARTBEAT_DIR)
        if directory and _PROCESS_HEARTBEAT is None:
            _PROCESS_HEARTBEAT = cls(Path(directory), rank).start()
        return _PROCESS_HEARTBEAT

    def start(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def begin(self, step: int) -> None:
        """Training step ``step`` starts (forward, backward, the gradients' all-reduce, the optimizer)."""
        self.step, self.step_started = step, time.time()
        self.beat()

    def end(self) -> None:
        """The step is done (a rank stopped from here on reads as hung after it, not in it)."""
        self.step_started = None
        self.beat()

    def beat(self) -> None:
        with self._lock:  # the loop and the thread both beat: one temporary file at a time
            doc = {"rank": self.rank, "time": time.time(), "step": self.step, "stepStarted": self.step_started}
            partial = self.path.with_suffix(".tmp")
            partial.write_text(json.dumps(doc))
            partial.replace(self.path)  # the launcher never reads half a file

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except OSError:  # the launcher's directory is gone: it is ending the round
                return


_PROCESS_HEARTBEAT: Heartbeat | None = None


@dataclass
class Hung:
    """The watchdog's verdict: which rank, and why, in a sentence for the job's status."""

    rank: int
    message: str


def read_beats(directory: Path) -> list[dict[str, Any]]:
    """The heartbeats in ``directory`` (a file being replaced is read on the next round)."""
    beats = []
    for path in sorted(directory.glob("rank-*.json")):
        try:
            beats.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return beats


def hung(beats: list[dict[str, Any]], now: float, timeout: float) -> Hung | None:
    """The hung rank among ``beats``, or None. A rank that has not beaten for ``timeout`` seconds is stopped or
    frozen: it is the one to name. Otherwise a rank whose step has run longer than ``timeout`` is stuck (it may be
    waiting on a rank of another pod, whose own launcher names that one); the lowest step, then rank, is named."""
    silent = [b for b in beats if now - float(b["time"]) > timeout]
    if silent:
        beat = min(silent, key=lambda b: (float(b["time"]), int(b["rank"])))
        step = f"in step {beat['step']}" if beat.get("stepStarted") else f"after step {beat['step'] or 0}"
        return Hung(
            int(beat["rank"]),
            f"rank {beat['rank']} hung {step}: no heartbeat for {now - float(beat['time']):.0f} s, over "
            f"spec.training.stepTimeoutSeconds ({timeout:.0f} s); the round was stopped to resume from the last "
            "checkpoint",
        )
    stuck = [b for b in beats if b.get("stepStarted") and now - float(b["stepStarted"]) > timeout]
    if stuck:
        beat = min(stuck, key=lambda b: (int(b["step"]), int(b["rank"])))
        return Hung(
            int(beat["rank"]),
            f"rank {beat['rank']} hung in step {beat['step']}: the step has run "
            f"{now - float(beat['stepStarted']):.0f} s, over spec.training.stepTimeoutSeconds ({timeout:.0f} s) "
            "(a deadlock, or waiting on a hung rank of another worker); the round was stopped to resume from the "
            "last checkpoint",
        )
    return None
