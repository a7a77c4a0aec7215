"""Issue 39, item 1: with spec.output.uri every checkpoint also goes to object storage (a real S3 server, moto), so a
worker that starts with empty scratch space (a replaced pod) resumes there, never from a checkpoint whose upload
was cut off, and ends as an uninterrupted run does."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.trainer import remote
from tests.support import faults, s3server
from tests.support.cli import kubetune
from tests.trainer.conftest import DATA, fast_job


@pytest.mark.slow
@pytest.mark.timeout(1200)  # three trainer processes and a moto server: ~1 min quiet
def test_a_killed_run_resumes_from_s3_on_fresh_scratch_and_ends_as_an_uninterrupted_one(tmp_path: Path) -> None:
    with s3server.serving(("runs",), tmp_path / "moto.log") as s3:
        env = {"AWS_ACCESS_KEY_ID": s3.key_id, "AWS_SECRET_ACCESS_KEY": s3.secret}
        fs, _ = remote.filesystem("s3://runs", "test", s3.options())

        def worker(name: str, scratch: str, extra: dict[str, str] | None = None) -> tuple[int, str]:
            job = fast_job(name).set("spec.output", {"uri": f"s3://runs/{name}", "endpoint": s3.url})
            checkpoints = {"everySteps": 2, "keep": 2, "upload": "Every"}  # each one uploaded: the test knows which
            job.set("spec.checkpointing", checkpoints).set("spec.training.maxSteps", 8)
            manifest = tmp_path / f"{name}.yaml"
            manifest.write_text(yaml.safe_dump(job.build()))
            common = [str(manifest), f"--volume=data={DATA}", f"--output={tmp_path / scratch}", "--metrics-port=0"]
            done = kubetune("worker", *common, env={**env, **(extra or {})})
            return done.returncode, done.stderr

        code, err = worker("whole", "whole")
        assert code == 0, err[-3000:]
        code, err = worker("killed", "first-pod", faults.kill_after(6))
        assert code == -signal.SIGKILL, err[-3000:]
        complete = [s for s in _steps(fs) if fs.exists(f"runs/killed/checkpoints/{s}/done-0.json")]
        # Every: step 6's push waited for step 4's upload; step 6's own was under way at the kill, done or not.
        assert complete in (["step-00000002", "step-00000004"], ["step-00000004", "step-00000006"]), _steps(fs)
        for marker in fs.ls(f"runs/killed/checkpoints/{complete.pop()}", detail=False):
            if marker.rsplit("/", 1)[-1].startswith("done-"):
                fs.rm(marker)  # as if the pod died during the upload: the checkpoint is not complete
        code, err = worker("killed", "second-pod")  # a replaced pod: its scratch space is empty
        assert code == 0, err[-3000:]
        assert f"resuming from s3://runs/killed/checkpoints/{complete[-1]}" in err, err[-3000:]
        assert f'"resumedFromStep": {int(complete[-1].split("-")[1])}' in err
        whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
        resumed = json.loads((tmp_path / "second-pod" / "metrics.json").read_text())
        assert abs(whole["test"]["loss"] - resumed["test"]["loss"]) < 1e-4, (whole["test"], resumed["test"])
        assert [round(r["loss"], 4) for r in whole["history"]["train"]] == [
            round(r["loss"], 4) for r in resumed["history"]["train"]
        ]
        assert json.loads(fs.cat_file("runs/killed/manifest.json"))["job"] == "killed"


def _steps(fs: Any) -> list[str]:
    return sorted(p.rsplit("/", 1)[-1] for p in fs.ls("runs/killed/checkpoints", detail=False))
