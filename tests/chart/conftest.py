"""Fixtures of the chart tests: the helm CLI (built from its Go module by hack/build-helm.sh) and rendering."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.paths import ROOT

CHART = ROOT / "charts" / "kubetune"
NAMESPACE = "kubetune-system"


@pytest.fixture(scope="session")
def helm() -> Path:
    if os.environ.get("KUBETUNE_HELM"):
        return Path(os.environ["KUBETUNE_HELM"])
    out = subprocess.run(["bash", str(ROOT / "hack" / "build-helm.sh")], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def render(helm: Path, *args: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [str(helm), "template", "kt", str(CHART), "--namespace", NAMESPACE, *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]
