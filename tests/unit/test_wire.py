"""The trainer-to-operator contract (``kubetune.api.wire``): what the trainer writes, the operator reads, and
docs/trainer.md lists the same keys."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kubetune.api.enums import TestMetric
from kubetune.api.wire import HEADLINE, TrainerProgress, TrainerSummary, WireModel
from kubetune.operator import children
from kubetune.trainer.report import TERMINATION_MESSAGE_LIMIT, ProgressEvent, Reporter
from tests.support.paths import ROOT


def documented_keys(model: type[WireModel]) -> list[str]:
    text = " ".join((ROOT / "docs" / "trainer.md").read_text().split())
    found = re.search(rf"`kubetune\.api\.wire\.{model.__name__}`[^(]*\(keys: ([^)]*)\)", text)
    assert found, f"docs/trainer.md lists no keys of {model.__name__}"
    return re.findall(r"`(\w+)`", found.group(1))


@pytest.mark.parametrize("model", [TrainerProgress, TrainerSummary])
def test_docs_list_every_key_of_the_wire_documents(model: type[WireModel]) -> None:
    assert documented_keys(model) == [field.alias for field in model.model_fields.values()]


def test_the_headline_metrics_are_the_test_metrics_a_gate_can_bound() -> None:
    assert tuple(metric.value for metric in TestMetric) == HEADLINE


def test_what_the_trainer_reports_the_operator_reads(tmp_path: Path) -> None:
    reporter = Reporter(enabled=True)
    reporter.phase("Training", resumedFromStep=4, dataWarnings=["test split has 3 rows"])
    reporter.progress(ProgressEvent(5, 10, 0, 1.5, 1e-3, 100.0, 7.0, validation_loss=1.7, grad_norm=0.5), tokens=8)
    reporter.checkpoint(5)
    progress = TrainerProgress.read(json.dumps(reporter.latest.to_wire()))
    assert progress is not None and progress.step == 5 and progress.resumed_from_step == 4
    assert progress.grad_norm == 0.5 and progress.checkpoint_step == 5 and progress.data_warnings
    summary = TrainerSummary(phase="Succeeded", steps=10, test={"loss": 1.0}, few_shot={"rougeL": 0.3}, few_shot_k=2)
    reporter.finish(summary, tmp_path / "termination-log")
    pod = {
        "status": {
            "containerStatuses": [
                {
                    "name": children.CONTAINER,
                    "state": {"terminated": {"exitCode": 0, "message": (tmp_path / "termination-log").read_text()}},
                }
            ]
        }
    }
    code, _, read = children.termination(pod)
    assert code == 0 and read == summary


def test_a_long_summary_loses_its_least_needed_parts_and_still_parses(tmp_path: Path) -> None:
    tasks = {f"task-{i}": {"loss": 1.0 + i, "accuracy": 0.5} for i in range(200)}
    summary = TrainerSummary(phase="Succeeded", steps=3, output="s3://b/k", test={"loss": 1.0}, tasks=tasks)
    Reporter(enabled=True).finish(summary, tmp_path / "log")
    text = (tmp_path / "log").read_text()
    read = TrainerSummary.read(text)
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT and read is not None
    assert read.tasks is None and read.test == {"loss": 1.0} and read.steps == 3


def test_the_operator_ignores_what_a_newer_trainer_adds_and_what_is_no_summary() -> None:
    read = TrainerProgress.read({"phase": "Training", "step": 2, "somethingNew": {"x": 1}})
    assert read is not None and read.step == 2
    assert TrainerSummary.read("Traceback (most recent call last): ...") is None
    pod = {
        "status": {
            "containerStatuses": [
                {"name": children.CONTAINER, "state": {"terminated": {"exitCode": 1, "message": "killed"}}}
            ]
        }
    }
    assert children.termination(pod) == (1, "killed", None)


def test_the_trainer_cannot_misspell_a_progress_key() -> None:
    with pytest.raises(ValueError, match="resumedFrom"):
        Reporter(enabled=True).phase("Training", resumedFrom=3)
