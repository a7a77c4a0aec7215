"""Trainer runs for the fault tests and ``benchmarks/chaos.py``: ``kubetune launch`` with two torchrun ranks on
the tiny Llama, and the repeated-kill scenario (workers SIGKILLed at seeded steps, each run resuming from the last
checkpoint) measured against an uninterrupted run."""

from __future__ import annotations

import json
import random
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support import faults
from tests.support.builders import JobBuilder
from tests.support.cli import kubetune
from tests.support.paths import ROOT

DATA = ROOT / "examples" / "data"


def two_rank_job(name: str, max_steps: int, checkpoint_every: int) -> JobBuilder:
    """A small LoRA job on the example instructions, checkpointed every ``checkpoint_every`` steps."""
    return (
        JobBuilder(name)
        .set("spec.data.datasets[0]", {"name": "rows", "pvc": {"claimName": "data", "path": "instructions.jsonl"}})
        .set("spec.data.split", {"validationRatio": 0.1, "testRatio": 0.1, "seed": 7})
        .set("spec.method", {"type": "LoRA", "lora": {"rank": 8, "alpha": 16, "dropout": 0.1}})
        .set("spec.training", {"learningRate": 0.01, "maxSteps": max_steps, "perDeviceBatchSize": 4})
        .set("spec.training.maxSeqLength", 128)
        .set("spec.checkpointing", {"everySteps": checkpoint_every, "keep": 2})
        .set("spec.evaluation", {"maxSamples": 8, "maxNewTokens": 8})
    )


def launch(manifest: Path, out: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """``kubetune launch`` with two ranks (NPROC_PER_NODE=2); the finished process and its seconds."""
    argv = ["launch", str(manifest), f"--volume=data={DATA}", f"--output={out}", "--metrics-port=0"]
    started = time.monotonic()
    done = kubetune(*argv, env={"NPROC_PER_NODE": "2", **env})
    return done, time.monotonic() - started


def final(out: Path) -> dict[str, float]:
    """The last step's train loss and the test loss of a finished run."""
    metrics = json.loads((out / "metrics.json").read_text())
    return {"train": metrics["history"]["train"][-1]["loss"], "test": metrics["test"]["loss"]}


def resumed_from(stderr: str) -> int:
    """The checkpoint step a run resumed from (0: it started afresh)."""
    found = re.findall(r'"resumedFromStep": (\d+)', stderr)
    return int(found[-1]) if found else 0


@dataclass
class RepeatedKills:
    """What the repeated-kill scenario measured."""

    kill_steps: list[int]
    resumed_from: list[int]
    """The checkpoint each run after a kill resumed from."""
    recomputed: list[int]
    """Steps each kill cost: the killed step minus the checkpoint the next run resumed from."""
    checkpoint_every: int
    straight: dict[str, float]
    killed: dict[str, float]
    seconds: float

    @property
    def max_delta(self) -> float:
        return max(abs(self.straight[k] - self.killed[k]) for k in self.straight)

    def figures(self) -> dict[str, Any]:
        return {
            "kills": len(self.kill_steps),
            "kill_steps": self.kill_steps,
            "steps_recomputed": self.recomputed,
            "checkpoint_every": self.checkpoint_every,
            "max_final_delta": self.max_delta,
            "seconds": round(self.seconds, 1),
        }


def repeated_kills(folder: Path, seed: int, kills: int = 5, max_steps: int = 24, every: int = 4) -> RepeatedKills:
    """An uninterrupted two-rank run, then the same job with a worker SIGKILLed at ``kills`` seeded steps (one per
    run, each after the last run's), relaunched until it finishes."""
    manifest = folder / "job.yaml"
    manifest.write_text(yaml.safe_dump(two_rank_job("kills", max_steps, every).build()))
    straight, _ = launch(manifest, folder / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    steps = sorted(random.Random(seed).sample(range(2, max_steps), kills))
    out, started, resumed = folder / "killed", time.monotonic(), []
    for index, step in enumerate(steps):
        run, _ = launch(manifest, out, **faults.kill_after(step))
        assert run.returncode != 0, f"the run meant to die at step {step} ended {run.returncode}"
        if index:
            resumed.append(resumed_from(run.stderr))
    last, _ = launch(manifest, out)
    assert last.returncode == 0, last.stderr[-3000:]
    resumed.append(resumed_from(last.stderr))
    recomputed = [step - start for step, start in zip(steps, resumed, strict=True)]
    seconds = time.monotonic() - started
    return RepeatedKills(steps, resumed, recomputed, every, final(folder / "straight"), final(out), seconds)
