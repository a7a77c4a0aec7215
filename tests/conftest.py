"""Shared fixtures: the real control plane (session-wide), the local node agent, hostPath volumes (data, outputs,
the model cache with the tiny Llama) and the repository root."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import controlplane
from tests.support.controlplane import ControlPlane
from tests.support.nodeagent import NodeAgent
from tests.support.paths import ROOT

pytest_plugins = ["tests.support.timebudget", "pytester"]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def cluster() -> Iterator[controlplane.ControlPlane]:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler on loopback, with the CRD installed."""
    cp = controlplane.start()
    try:
        cp.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/finetunejobs.kubetune.dev")
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def node(cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeAgent]:
    agent = NodeAgent(cluster.server, cluster.token, tmp_path_factory.mktemp("node")).start()
    yield agent
    agent.stop()


def _volume(
    cluster: ControlPlane, claim: str, path: Path, modes: tuple[str, ...] = ("ReadWriteMany",), host_type: str = ""
) -> None:
    """A hostPath PersistentVolume (of ``host_type``: "Directory" must be one) pre-bound to a claim of the same
    name in 'default'."""
    docs = [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"pv-{claim}"},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": list(modes),
                "storageClassName": "",
                "hostPath": {"path": str(path), **({"type": host_type} if host_type else {})},
                "claimRef": {"namespace": "default", "name": claim},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": "default"},
            "spec": {
                "accessModes": list(modes),
                "storageClassName": "",
                "volumeName": f"pv-{claim}",
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    ]
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``controlplane`` on every test that needs the control plane through the ``cluster`` fixture (directly or
    through ``node``, ``volumes``, ``operator``...), so ``-m "not controlplane"`` never starts one."""
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.controlplane)
