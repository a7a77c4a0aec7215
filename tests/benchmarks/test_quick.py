"""Each benchmark's --quick mode runs and prints its figures (never an assertion on the figures themselves)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.paths import ROOT

pytestmark = pytest.mark.slow  # each trains or runs an operator for a while


def run(module: str, timeout: float = 600) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_trainer_throughput_quick() -> None:
    out = run("trainer_throughput")
    for arm in ("hf", "hf-grouped", "trl-packed", "kubetune"):
        assert f"| high-variance | {arm} |" in out, out
    assert "ours / dynamic padding" in out and "x (" in out


def test_gpu_throughput_quick() -> None:
    out = run("gpu_throughput")
    results = json.loads(out.strip().splitlines()[-1])
    assert {r["method"] for r in results} == {"lora", "full"}
    assert all(r["tokens_per_second_per_gpu"] > 0 for r in results)


@pytest.mark.controlplane  # the benchmark starts its own
def test_operator_scale_quick() -> None:
    """It starts a control plane of its own (with an audit log), from the binaries `make test` built."""
    out = run("operator_scale")
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["jobs"] == 20 and figures["jobs_per_second"] > 0 and figures["api_writes_per_job"] > 0
    assert "single job: apply -> pods created" in out


def test_chaos_quick() -> None:
    out = run("chaos")
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["hostile_files"] == 14 and figures["specs_mutants"] == 100
    assert "| **all** |" in out and "Hostile data: seed 20" in out


def test_data_scale_quick() -> None:
    out = run("data_scale")
    figures = json.loads(out.strip().splitlines()[-1])
    arms = {r["arm"] for r in figures["results"]}
    assert arms == {"start-floor", "kubetune-cold", "kubetune-warm", "datasets-cold"}
    assert all(r["peak_rss_mib"] > 0 and r["rows_per_second"] > 0 for r in figures["results"])
    assert "cold_rows_per_second_ours_over_datasets" in figures["ratios"]["2.0"]


@pytest.mark.timeout(900)  # eight tiny trainer runs and their scoring: ~130 s quiet
def test_tuning_effects_quick() -> None:
    out = run("tuning_effects", timeout=800)
    figures = json.loads(out.strip().splitlines()[-1])
    experiments = ["forgetting", "overfitting", "multitask", "scarce data"]
    assert [r["experiment"] for r in figures["results"]] == experiments
    for result in figures["results"]:
        steps = [r["steps"] for r in result["runs"].values()]
        assert len(steps) == 2 and min(steps) > 0
        assert result["experiment"] == "overfitting" or steps[0] == steps[1], result["runs"]  # fair arms
    assert "| forgetting | general retention regression |" in out and "| overfitting | task loss |" in out
