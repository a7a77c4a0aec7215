"""Hostile data: seeded corruptions of the example datasets (``hostile``) through ``kubetune prepare``. Every
file trains with the prep report naming each dropped row and its reason, or fails with exit 78 naming the file
and the first bad row; never a traceback. Then the same in a real process, and a corrupted file trained for real."""

from __future__ import annotations

import json
import os
import traceback
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubetune.trainer.cli import main
from tests.reliability import hostile
from tests.support.cli import kubetune

pytestmark = pytest.mark.reliability
SEED, PER_KIND = 20, 3


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A model cache the tiny Llama is built into once (``kubetune/tiny-llama``)."""
    cache = tmp_path_factory.mktemp("models")
    before = os.environ.get("KUBETUNE_MODEL_CACHE")
    os.environ["KUBETUNE_MODEL_CACHE"] = str(cache)
    yield cache
    if before is None:
        os.environ.pop("KUBETUNE_MODEL_CACHE")
    else:
        os.environ["KUBETUNE_MODEL_CACHE"] = before


def prepare(item: hostile.Corrupted, folder: Path, capsys: pytest.CaptureFixture[str]) -> hostile.Verdict:
    """``kubetune prepare`` in this process; an exception escaping ``main`` counts as a traceback."""
    out = folder / f"{item.name}.out"
    try:
        code = main(["prepare", str(hostile.manifest(item, folder)), "--output", str(out), f"--volume=data={folder}"])
        stderr = capsys.readouterr().err
    except Exception:
        code, stderr = 1, capsys.readouterr().err + traceback.format_exc()
    report_file = out / "prep_report.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else None
    return hostile.judge(item, code, stderr, report)


def test_every_corrupted_file_trains_naming_dropped_rows_or_fails_with_78(
    model_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    verdicts = [prepare(item, tmp_path, capsys) for item in hostile.corrupted(SEED, PER_KIND)]
    wrong = [v for v in verdicts if not v.ok]
    assert not wrong, "\n".join(f"{v.item.name}: {'; '.join(v.problems)}" for v in wrong)
    assert Counter(v.item.kind for v in verdicts) == {kind: PER_KIND for kind in hostile.KINDS}
    outcomes = Counter(v.code for v in verdicts)
    assert set(outcomes) == {0, 78}  # both outcomes are reached
    dropped = [v for v in verdicts if v.code == 0 and v.report and v.report["dropped"]]
    assert dropped, "no corrupted file that trains has a dropped row"


def test_a_real_process_exits_78_naming_the_row_without_a_traceback(model_cache: Path, tmp_path: Path) -> None:
    item = next(i for i in hostile.corrupted(SEED, 1) if i.kind == "truncatedJson")
    manifest = hostile.manifest(item, tmp_path)
    done = kubetune("prepare", str(manifest), "--output", str(tmp_path / "out"), f"--volume=data={tmp_path}")
    verdict = hostile.judge(item, done.returncode, done.stderr, None)
    assert verdict.ok, verdict.problems
    assert done.stderr.startswith("error: spec.data.datasets[0] (truncatedJson-0.jsonl): row ")


@pytest.mark.slow
def test_a_file_with_rows_of_wrong_types_trains_and_names_them_in_the_outputs(
    model_cache: Path, tmp_path: Path
) -> None:
    item = next(i for i in hostile.corrupted(SEED, 1) if i.kind == "wrongTypes")
    assert isinstance(item.expected, hostile.Trains) and item.expected.dropped
    out = tmp_path / "out"
    code = main(["run", str(hostile.manifest(item, tmp_path)), "--output", str(out), f"--volume=data={tmp_path}"])
    assert code == 0
    verdict = hostile.judge(item, code, "", json.loads((out / "prep_report.json").read_text()))
    assert verdict.ok, verdict.problems
    assert json.loads((out / "metrics.json").read_text())["steps"] > 0
