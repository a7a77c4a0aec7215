"""One writer per output location (kubetune.operator.locations) and the trainer's refusal to replace a finished
model of another spec (outputs.refuse_overwrite)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.spec import FineTuneJob
from kubetune.operator import locations
from kubetune.trainer import outputs
from kubetune.trainer.errors import OutputExistsError
from tests.support.builders import JobBuilder


def _body(name: str, created: str, output: dict[str, Any], phase: str | None = None, ns: str = "default") -> dict:
    meta = {"name": name, "namespace": ns, "uid": f"uid-{name}", "creationTimestamp": created}
    return {"metadata": meta, "spec": {"output": output}, "status": {"phase": phase} if phase else {}}


def _pvc(path: str, claim: str = "outputs") -> dict[str, Any]:
    return {"pvc": {"claimName": claim, "path": path}}


T1, T2, T3 = "2026-12-07T10:00:00Z", "2026-12-07T10:00:01Z", "2026-12-07T10:00:02Z"


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        (_pvc("run"), _pvc("run/"), True),  # equal, however written
        (_pvc("run"), _pvc("run/trial-1"), True),  # contains
        (_pvc("run/trial-1"), _pvc("run"), True),  # inside
        (_pvc("run"), _pvc("run-2"), False),  # a prefix of the name is not a parent
        (_pvc("run", "a"), _pvc("run", "b"), False),  # another claim
        (_pvc(""), _pvc("anything"), True),  # the claim's root holds every path on it
        ({"uri": "s3://bucket/runs/a"}, {"uri": "s3://bucket/runs"}, True),
        ({"uri": "s3://bucket/runs/a"}, {"uri": "s3://bucket/runs/b"}, False),
        ({"uri": "s3://bucket/a"}, {"uri": "gs://bucket/a"}, False),
        ({}, {}, False),  # scratch space is each pod's own
    ],
)
def test_locations_overlap_when_one_equals_or_contains_the_other(a: dict, b: dict, overlap: bool) -> None:
    first = locations.holder_of(_body("a", T1, a)).location
    second = locations.holder_of(_body("b", T2, b)).location
    assert locations.overlaps(first, second) is overlap


def test_a_pvc_location_is_its_namespaces_a_uri_is_everyones() -> None:
    one = locations.holder_of(_body("a", T1, _pvc("run"), ns="team-a")).location
    other = locations.holder_of(_body("b", T2, _pvc("run"), ns="team-b")).location
    assert not locations.overlaps(one, other)
    uri = {"uri": "s3://shared/run"}
    assert locations.overlaps(
        locations.holder_of(_body("a", T1, uri, ns="team-a")).location,
        locations.holder_of(_body("b", T2, uri, ns="team-b")).location,
    )


def test_only_an_older_unfinished_job_at_an_overlapping_location_blocks() -> None:
    older = locations.holder_of(_body("older", T1, _pvc("run")))
    job = locations.holder_of(_body("copy", T2, _pvc("run")))
    newer = locations.holder_of(_body("newer", T3, _pvc("run")))
    done = locations.holder_of(_body("done", T1, _pvc("run"), phase="Succeeded"))
    elsewhere = locations.holder_of(_body("elsewhere", T1, _pvc("other")))
    assert locations.blocking(job, [older, job, newer, done, elsewhere]) == older
    assert locations.blocking(older, [older, job, newer]) is None  # the oldest always runs: no two wait on each other
    assert locations.blocking(job, [job, newer, done, elsewhere]) is None
    same_time = locations.holder_of(_body("a-first", T2, _pvc("run")))  # a tie goes by namespace and name
    assert locations.blocking(job, [same_time]) == same_time
    assert locations.blocking(same_time, [job]) is None


def test_the_location_is_described_as_a_user_writes_it() -> None:
    assert locations.describe(("pvc", "ns", "outputs", "run", "a")) == "pvc://outputs/run/a (namespace ns)"
    assert locations.describe(("uri", "s3", "bucket", "runs")) == "s3://bucket/runs"


def _job(**output: Any) -> FineTuneJob:
    wire = JobBuilder().set("spec.output", {"pvc": {"claimName": "outputs", "path": "run"}, **output}).build()
    return FineTuneJob.model_validate(wire)


def test_a_finished_model_of_another_spec_is_not_replaced_unless_overwrite(tmp_path: Path) -> None:
    job = _job()
    outputs.refuse_overwrite(tmp_path, job)  # nothing there
    (tmp_path / outputs.COMPLETE).write_text(json.dumps({"job": "old", "specHash": "0" * 64, "finishedAt": "then"}))
    with pytest.raises(OutputExistsError, match=r"spec\.output: .* job old .*spec\.output\.overwrite: true"):
        outputs.refuse_overwrite(tmp_path, job)
    outputs.refuse_overwrite(tmp_path, _job(overwrite=True))
    same = {"job": "old", "specHash": outputs.spec_hash(job.spec)}
    (tmp_path / outputs.COMPLETE).write_text(json.dumps(same))
    outputs.refuse_overwrite(tmp_path, job)  # the same spec's model: its own run, done again
