"""Repository layout guarantees: the operator/ folder never shadows the standard library's operator module."""

from __future__ import annotations

import ast
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


BLOCKS = (ast.For, ast.AsyncFor, ast.While, ast.If, ast.With, ast.AsyncWith, ast.Try, ast.Match)


def _nesting(node: ast.AST, depth: int = 0) -> int:
    """The deepest block nesting inside ``node`` (an ``elif`` counts as one level deeper, as it reads)."""
    deepest = depth
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            continue
        deepest = max(deepest, _nesting(child, depth + isinstance(child, BLOCKS)))
    return deepest


def test_trainer_functions_are_short_and_shallow() -> None:
    """Issue 18: no function in trainer/ over 60 lines or nested more than 3 blocks deep."""
    found = []
    for path in sorted((ROOT / "trainer" / "kubetune" / "trainer").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines, depth = node.end_lineno - node.lineno + 1, _nesting(node)
                if lines > 60 or depth > 3:
                    found.append(f"{path.name}:{node.lineno} {node.name}: {lines} lines, nesting {depth}")
    assert not found, found
