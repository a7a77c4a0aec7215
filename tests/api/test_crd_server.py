"""The CRD on a real API server: established, accepts the examples, and agrees with pydantic on every case.

Agreement runs both ways: a manifest the server rejects pydantic rejects too (with the same field named), a
manifest one accepts the other accepts, and the server's defaults equal pydantic's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubetune.api import parse_job
from kubetune.api.sweep import parse_sweep
from tests.api.cases import BAD, GOOD, parse, pydantic_verdict
from tests.support.builders import JobBuilder
from tests.support.controlplane import ControlPlane
from tests.support.paths import ROOT

pytestmark = pytest.mark.controlplane


def server_dry_run(cluster: ControlPlane, doc: dict[str, Any]) -> tuple[bool, str]:
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(doc), check=False)
    return result.returncode == 0, result.stderr


def test_crd_is_established_with_short_name_and_columns(cluster: ControlPlane) -> None:
    crd = cluster.get_json("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/finetunejobs.kubetune.dev")
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}  # type: ignore[index]
    assert conditions["Established"] == "True"
    assert conditions["NamesAccepted"] == "True"
    cluster.kubectl("apply", "-f", str(ROOT / "examples" / "qlora.yaml"), "-n", "default")
    table = cluster.kubectl("get", "ftj", "qlora-chat").stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "METHOD", "PROGRESS", "AGE"]
    assert table[1].split()[:2] == ["qlora-chat", "QLoRA"]
    cluster.kubectl("delete", "ftj", "qlora-chat", "--wait=false")


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_is_accepted_by_the_server(cluster: ControlPlane, path: Path) -> None:
    result = cluster.kubectl("apply", "--dry-run=server", "-f", str(path), check=False)
    assert result.returncode == 0, result.stderr
    assert "created (server dry run)" in result.stdout


@pytest.mark.parametrize(("case", "doc", "expected"), BAD, ids=[c[0] for c in BAD])
def test_server_and_pydantic_reject_the_same_bad_manifest(
    cluster: ControlPlane, case: str, doc: dict[str, Any], expected: str
) -> None:
    server_ok, server_message = server_dry_run(cluster, doc)
    model_ok, model_message = pydantic_verdict(doc)
    assert not server_ok, f"server accepted {case}"
    assert not model_ok, f"pydantic accepted {case}"
    assert expected in server_message, server_message
    assert expected in model_message, model_message


@pytest.mark.parametrize(("case", "doc"), GOOD, ids=[c[0] for c in GOOD])
def test_server_and_pydantic_accept_and_default_alike(cluster: ControlPlane, case: str, doc: dict[str, Any]) -> None:
    doc = {**doc, "metadata": {"name": f"good-{len(case)}-{abs(hash(case)) % 10**6}"}}
    model = parse(doc)
    created = cluster.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(doc), check=False)
    assert created.returncode == 0, created.stderr
    try:
        stored = json.loads(created.stdout)
        assert stored["spec"] == model.to_wire()["spec"], "server defaults differ from pydantic defaults"
    finally:
        cluster.kubectl("delete", doc["kind"].lower(), doc["metadata"]["name"], "--wait=false")


@pytest.mark.parametrize("path", sorted((ROOT / "examples" / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_sweep_example_is_accepted_by_the_server_and_pydantic(cluster: ControlPlane, path: Path) -> None:
    import yaml

    parse_sweep(yaml.safe_load(path.read_text()))
    result = cluster.kubectl("apply", "--dry-run=server", "-f", str(path), check=False)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def live_job(cluster: ControlPlane) -> Any:
    doc = JobBuilder(name="immutable-check").build()
    cluster.kubectl("create", "-f", "-", input=json.dumps(doc))
    yield "immutable-check"
    cluster.kubectl("delete", "ftj", "immutable-check", "--wait=false")


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"training": {"learningRate": 0.5}}, "training is immutable after creation"),
        ({"model": {"cached": "other-model"}}, "model is immutable after creation"),
        ({"method": {"type": "Full"}}, "method is immutable after creation"),
        ({"output": {"uri": "s3://late/addition"}}, "output is immutable after creation"),
        ({"resources": {"workers": 4}}, "resources is immutable after creation"),
    ],
)
def test_training_fields_are_immutable(
    cluster: ControlPlane, live_job: str, patch: dict[str, Any], expected: str
) -> None:
    result = cluster.kubectl("patch", "ftj", live_job, "--type=merge", "-p", json.dumps({"spec": patch}), check=False)
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr


def test_suspend_and_ttl_stay_mutable(cluster: ControlPlane, live_job: str) -> None:
    patch = {"spec": {"suspend": True, "ttlSecondsAfterFinished": 60}}
    cluster.kubectl("patch", "ftj", live_job, "--type=merge", "-p", json.dumps(patch))
    stored = json.loads(cluster.kubectl("get", "ftj", live_job, "-o", "json").stdout)
    assert stored["spec"]["suspend"] is True


def test_status_subresource_takes_a_pydantic_status(cluster: ControlPlane, live_job: str) -> None:
    status = {
        "observedGeneration": 1,
        "phase": "Running",
        "conditions": [
            {
                "type": "Accepted",
                "status": "True",
                "reason": "SpecValid",
                "message": "The spec is valid.",
                "observedGeneration": 1,
                "lastTransitionTime": "2026-11-25T10:00:00Z",
            }
        ],
        "progress": {"step": 5, "totalSteps": 20, "epoch": 0.5, "percentage": 25},
        "metrics": {"loss": 1.25, "learningRate": 0.0002},
    }
    cluster.kubectl(
        "patch", "ftj", live_job, "--subresource=status", "--type=merge", "-p", json.dumps({"status": status})
    )
    stored = json.loads(cluster.kubectl("get", "ftj", live_job, "-o", "json").stdout)
    parsed = parse_job(stored)
    assert parsed.status is not None and parsed.status.progress is not None
    assert parsed.status.progress.percentage == 25
    table = cluster.kubectl("get", "ftj", live_job).stdout.splitlines()[1].split()
    assert table[1:4] == ["Running", "LoRA", "25"]
