"""Repository layout guarantees: the operator/ folder never shadows the standard library's operator module."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.paths import ROOT

PROBE = "import enum, operator; print(operator.add(1, 2))"


@pytest.mark.parametrize("pythonpath", ["", str(ROOT), f"{ROOT}:{ROOT}/api:{ROOT}/operator:{ROOT}/trainer"])
def test_stdlib_operator_is_not_shadowed_from_the_repo_root(pythonpath: str) -> None:
    env = {**os.environ, "PYTHONPATH": pythonpath}
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3"


def test_operator_folder_is_not_a_package() -> None:
    assert not (ROOT / "operator" / "__init__.py").exists()
    assert (ROOT / "operator" / "kubetune" / "operator" / "__init__.py").exists()
    assert not (ROOT / "operator" / "kubetune" / "__init__.py").exists(), "kubetune is a namespace package"


def test_the_operator_package_imports_beside_the_stdlib_module() -> None:
    code = "import operator, kubetune.operator as k; print(operator.add(1, 2), k.__name__)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.stdout.split() == ["3", "kubetune.operator"], result.stderr


def test_top_level_layout() -> None:
    for name in [
        "pyproject.toml",
        "operator",
        "trainer",
        "charts",
        "crds",
        "Dockerfile",
        "tests",
        "examples",
        "Makefile",
        "README.md",
        ".ci/run",
    ]:
        assert (ROOT / name).exists(), name
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    readme = (ROOT / "README.md").read_text()
    commands = [line.split("#")[0].strip() for line in readme.splitlines() if line.startswith("make ")]
    first_commands = commands[:2]
    assert first_commands == ["make run", "make test"]
