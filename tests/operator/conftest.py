"""Fixtures for the operator's end-to-end tests: the operator itself, on the session's real control plane with
the local node agent and the hostPath volumes of tests/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.operator.cluster import Cluster
from tests.support.controlplane import ControlPlane
from tests.support.nodeagent import NodeAgent
from tests.support.operator import Operator
from tests.support.wait import wait_for

__all__ = ["ROOT", "wait_for"]

from tests.support.paths import ROOT


@pytest.fixture(scope="session")
def operator(
    cluster: ControlPlane, node: NodeAgent, volumes: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    running = Operator(cluster, tmp_path_factory.mktemp("operator")).start()
    yield running
    running.stop()


@pytest.fixture
def k(cluster: ControlPlane, node: NodeAgent, operator: Operator) -> Cluster:
    """kubectl helpers for one test, with the operator running."""
    return Cluster(cluster, node, operator)
