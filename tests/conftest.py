"""Shared fixtures: the real control plane (session-wide) and the repository root."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import controlplane

ROOT = Path(__file__).resolve().parents[1]


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
