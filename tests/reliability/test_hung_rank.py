"""A hung rank (SIGSTOP) under ``kubetune launch``: the step-time watchdog stops the round within
spec.training.stepTimeoutSeconds with a message naming the rank, leaves no process behind, and the next launch
resumes from the last checkpoint to the same end as an uninterrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kubetune.api.exitcodes import EXIT_HUNG
from tests.support import faults
from tests.support.builders import JobBuilder
from tests.support.paths import ROOT

pytestmark = [pytest.mark.reliability, pytest.mark.slow]
DATA = ROOT / "examples" / "data"
TIMEOUT = 10


def launch(manifest: Path, out: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    path = os.pathsep.join(str(ROOT / p) for p in ("api", "operator", "trainer", ""))
    started = time.monotonic()
    argv = ["launch", str(manifest), f"--volume=data={DATA}", f"--output={out}", "--metrics-port=0"]
    done = subprocess.run(
        [sys.executable, "-m", "kubetune.trainer", *argv],
        env={**os.environ, "PYTHONPATH": path, "NPROC_PER_NODE": "2", **env},
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        check=False,
    )
    return done, time.monotonic() - started


def final(out: Path) -> dict[str, float]:
    metrics = json.loads((out / "metrics.json").read_text())
    return {"train": metrics["history"]["train"][-1]["loss"], "test": metrics["test"]["loss"]}


def test_a_stopped_rank_is_named_within_the_step_timeout_and_the_job_resumes(tmp_path: Path) -> None:
    job = (
        JobBuilder("hang")
        .set("spec.data.datasets[0]", {"name": "rows", "pvc": {"claimName": "data", "path": "instructions.jsonl"}})
        .set("spec.data.split", {"validationRatio": 0.1, "testRatio": 0.1, "seed": 7})
        .set("spec.method", {"type": "LoRA", "lora": {"rank": 8, "alpha": 16, "dropout": 0.0}})
        .set("spec.training", {"learningRate": 0.01, "maxSteps": 8, "perDeviceBatchSize": 8, "maxSeqLength": 128})
        .set("spec.training.stepTimeoutSeconds", TIMEOUT)
        .set("spec.checkpointing", {"everySteps": 2, "keep": 2})
        .set("spec.evaluation", {"maxSamples": 8, "maxNewTokens": 8})
    )
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(job.build()))

    straight, _ = launch(manifest, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]

    out, log = tmp_path / "hung", tmp_path / "termination-log"
    hung, seconds = launch(manifest, out, KUBETUNE_TERMINATION_LOG=str(log), **faults.stop_after(3, rank=1))
    assert hung.returncode == EXIT_HUNG, hung.stderr[-3000:]
    summary = json.loads(log.read_text())
    assert summary["reason"] == "RankHung" and summary["message"].startswith("rank 1 hung after step 3")
    assert "spec.training.stepTimeoutSeconds (10 s)" in summary["message"]
    assert f"error: {summary['message']}" in hung.stderr
    assert not [p for p in Path("/proc").glob("[0-9]*") if _runs_in(p, out)], "a rank was left running"
    print(f"hung run: {seconds:.0f} s in all, the watchdog's timeout {TIMEOUT} s")

    resumed, _ = launch(manifest, out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert '"resumedFromStep": 2' in resumed.stderr  # one step (3) recomputed
    a, b = final(tmp_path / "straight"), final(out)
    assert abs(a["train"] - b["train"]) < 1e-4 and abs(a["test"] - b["test"]) < 1e-4


def _runs_in(process: Path, out: Path) -> bool:
    try:
        return str(out) in (process / "cmdline").read_text()
    except OSError:
        return False
