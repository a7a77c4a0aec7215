"""Fixtures for the operator's end-to-end tests: the local node agent, hostPath volumes (data, outputs, the
model cache with the tiny Llama), and the operator itself, all on the session's real control plane."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.controlplane import ControlPlane
from tests.support.nodeagent import NodeAgent
from tests.support.operator import Operator

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def node(cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeAgent]:
    agent = NodeAgent(cluster.server, cluster.token, tmp_path_factory.mktemp("node")).start()
    yield agent
    agent.stop()


def _volume(cluster: ControlPlane, claim: str, path: Path) -> None:
    """A hostPath PersistentVolume pre-bound to a claim of the same name in 'default'."""
    docs = [
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"pv-{claim}"},
         "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                  "hostPath": {"path": str(path)},
                  "claimRef": {"namespace": "default", "name": claim}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim, "namespace": "default"},
         "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": f"pv-{claim}",
                  "resources": {"requests": {"storage": "1Gi"}}}},
    ]  # fmt: skip
    cluster.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))


@pytest.fixture(scope="session")
def volumes(cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Claims kubetune-data (holding a copy of examples/data), kubetune-outputs and kubetune-models (tiny Llama)."""
    from kubetune.trainer.tiny import TINY_LLAMA, ensure_model

    root = tmp_path_factory.mktemp("volumes")
    paths = {"kubetune-data": root / "data", "kubetune-outputs": root / "outputs", "kubetune-models": root / "models"}
    shutil.copytree(ROOT / "examples" / "data", paths["kubetune-data"] / "examples" / "data")
    paths["kubetune-outputs"].mkdir()
    ensure_model(paths["kubetune-models"] / TINY_LLAMA, TINY_LLAMA)
    for claim, path in paths.items():
        _volume(cluster, claim, path)
    return paths


@pytest.fixture(scope="session")
def operator(
    cluster: ControlPlane, node: NodeAgent, volumes: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "kubetune"}}))  # fmt: skip
    running = Operator(cluster, tmp_path_factory.mktemp("operator")).start()
    yield running
    running.stop()


def wait_for(what: str, check: Callable[[], Any], timeout: float, on_timeout: Callable[[], str] = lambda: "") -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` and diagnostics after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{on_timeout()}")
