"""End to end in the real trainer image: the node agent runs the workers' pods with podman (``runtime="podman"``),
two containers rendezvous over torchrun, checkpoint, one is SIGKILLed, and the job resumes and succeeds.

The other end-to-end tests keep the fast local-process mode; this one shows that what they show holds for the image
a cluster runs: its Python, its packages, its user (65532, which owns every file it wrote) and its entry point.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.operator.cluster import Cluster, e2e_job, resumed_from, running_with_checkpoint
from tests.operator.conftest import wait_for
from tests.support import containers
from tests.support.controlplane import ControlPlane
from tests.support.nodeagent import NodeAgent
from tests.support.operator import Operator

pytestmark = [pytest.mark.usefixtures("operator"), pytest.mark.slow]
IMAGE_USER = 65532


@pytest.fixture
def k(cluster: ControlPlane, node: NodeAgent, operator: Operator, volumes: dict[str, Path]) -> Iterator[Cluster]:
    """The session's node agent, switched to running pods in the trainer image for this test."""
    images = containers.build_images()
    volumes["kubetune-outputs"].chmod(0o777)  # the image's user writes the outputs
    node.runtime, node.images = "podman", {"kubetune-trainer:test": images.trainer}
    try:
        yield Cluster(cluster, node, operator)
    finally:
        node.runtime, node.images = "process", {}


def test_two_workers_in_the_trainer_image_rendezvous_checkpoint_and_resume_after_a_kill(
    k: Cluster, volumes: dict[str, Path]
) -> None:
    name = "in-image"
    k.apply(e2e_job(name).set("spec.training.epochs", 8).build())

    wait_for("a checkpoint", lambda: running_with_checkpoint(k, name), 600, lambda: k.diagnose(name))
    worker = next(p for p in k.pods(name) if p["metadata"]["name"].startswith(f"{name}-workers-1-"))
    k.node.kill("default", worker["metadata"]["name"])
    k.wait_condition(name, "Succeeded", timeout=600)

    status = k.ftj(name)["status"]
    assert status["restarts"] >= 1 and status["workers"]["failed"] >= 1
    out = volumes["kubetune-outputs"] / name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["worldSize"] == 2  # torchrun's two ranks, one per container
    assert (out / "manifest.json").stat().st_uid == IMAGE_USER  # written inside the image, by its user
    assert resumed_from(k, name) > 0
