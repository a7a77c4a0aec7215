"""Trainer fixtures: one model cache per session (the tiny Llama is built into it once) and a job runner."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.trainer.cli import main
from tests.support.builders import JobBuilder
from tests.support.paths import ROOT

DATA = ROOT / "examples" / "data"


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.getbasetemp() / "models"
    os.environ["KUBETUNE_MODEL_CACHE"] = str(cache)  # subprocesses (torchrun, resume runs) inherit it
    return cache


def fast_job(name: str = "t", path: str = "instructions.jsonl") -> JobBuilder:
    """A small, quick LoRA job on ``examples/data/<path>`` (claim ``data``)."""
    return (
        JobBuilder(name)
        .set("spec.data.datasets[0]", {"name": "rows", "pvc": {"claimName": "data", "path": path}})
        .set("spec.data.split", {"validationRatio": 0.1, "testRatio": 0.1, "seed": 7})
        .set("spec.method", {"type": "LoRA", "lora": {"rank": 8, "alpha": 16, "dropout": 0.0}})
        .set("spec.training", {"learningRate": 0.01, "epochs": 2, "perDeviceBatchSize": 8, "maxSeqLength": 128})
        .set("spec.evaluation", {"maxSamples": 8, "maxNewTokens": 8})
    )


Runner = Callable[..., int]


@pytest.fixture
def run_job(tmp_path: Path) -> Runner:
    """Writes the manifest (plus any extra YAML documents) and runs ``kubetune run`` on it; returns the exit code."""

    def run(doc: dict[str, Any], *extra_docs: dict[str, Any], data: Path = DATA, out: Path | None = None) -> int:
        manifest = tmp_path / f"{doc['metadata']['name']}.yaml"
        manifest.write_text(yaml.safe_dump_all([*extra_docs, doc]))
        output = out or tmp_path / "out"
        return main(["run", str(manifest), "--output", str(output), "--volume", f"data={data}"])

    return run
