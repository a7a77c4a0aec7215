"""A hung rank (SIGSTOP) under ``kubetune launch``: the step-time watchdog stops the round within
spec.training.stepTimeoutSeconds with a message naming the rank, leaves no process behind, and the next launch
resumes from the last checkpoint to the same end as an uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kubetune.api.exitcodes import EXIT_HUNG
from tests.reliability.runs import final, launch, resumed_from, two_rank_job
from tests.support import faults

pytestmark = [pytest.mark.reliability, pytest.mark.slow]
TIMEOUT = 10


def test_a_stopped_rank_is_named_within_the_step_timeout_and_the_job_resumes(tmp_path: Path) -> None:
    job = two_rank_job("hang", max_steps=8, checkpoint_every=2).set("spec.training.stepTimeoutSeconds", TIMEOUT)
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
    assert resumed_from(resumed.stderr) == 2  # one step (3) recomputed
    a, b = final(tmp_path / "straight"), final(out)
    assert abs(a["train"] - b["train"]) < 1e-4 and abs(a["test"] - b["test"]) < 1e-4


def _runs_in(process: Path, out: Path) -> bool:
    try:
        return str(out) in (process / "cmdline").read_text()
    except OSError:
        return False
