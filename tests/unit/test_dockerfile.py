"""The Dockerfile, checked statically (no Docker engine runs here): hadolint finds nothing, both targets exist and
run as a non-root user, every base image and package is pinned, the operator image carries no torch, and the
images' entrypoints agree with what the chart and the operator run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.paths import ROOT

DOCKERFILE = ROOT / "Dockerfile"


def stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its (instruction, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    found: dict[str, list[tuple[str, str]]] = {"": []}
    current = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            current = args.split(" AS ")[-1].strip() if " AS " in args else args
            found[current] = []
        found[current].append((instruction.upper(), args))
    return found


def pins(path: Path) -> dict[str, str]:
    lines = [x.strip() for x in path.read_text().splitlines() if x.strip() and not x.startswith("#")]
    return {n.lower().replace("_", "-"): v for n, v in (x.split("==") for x in lines)}


def hadolint() -> str:
    found = os.environ.get("KUBETUNE_HADOLINT") or shutil.which("hadolint")
    if not found:
        found = (
            subprocess.run(
                ["bash", str(ROOT / "hack" / "install-tools.sh")], check=True, capture_output=True, text=True
            )
            .stdout.split("KUBETUNE_HADOLINT=")[1]
            .split()[0]
        )
    return found


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_two_targets_run_as_non_root_from_pinned_bases() -> None:
    found = stages()
    assert {"operator", "trainer"} <= set(found)
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base.group(1)), "pin the base image's full tag"
    for name in ("operator", "trainer"):
        instructions = found[name]
        users = [args for ins, args in instructions if ins == "USER"]
        assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1]), f"{name} must end as a numeric non-root user"
        assert any(ins == "ENTRYPOINT" for ins, _ in instructions)
    for name, instructions in found.items():
        for ins, args in instructions:
            if ins == "RUN" and "pip install" in args:
                assert "--requirement" in args and "--no-deps" in args, f"{name}: install only pinned locks"


def test_image_locks_agree_with_the_main_lock() -> None:
    everything = pins(ROOT / "requirements" / "requirements.lock")
    operator, trainer = pins(ROOT / "requirements" / "operator.lock"), pins(ROOT / "requirements" / "trainer.lock")
    for name, version in {**operator, **trainer}.items():
        assert everything.get(name) == version, f"{name}=={version} differs from requirements.lock"
    assert "torch" not in operator and {"kopf", "kubernetes", "pydantic"} <= set(operator)
    assert {"torch", "transformers", "peft", "accelerate", "bitsandbytes"} <= set(trainer)


def test_operator_image_holds_no_trainer_code() -> None:
    copied = " ".join(args for ins, args in stages()["operator"] if ins == "COPY")
    assert "trainer" not in copied.replace("operator-venv", "")


@pytest.mark.parametrize("target", ["operator", "trainer"])
def test_entrypoints_match_what_kubernetes_runs(target: str) -> None:
    entrypoint = next(args for ins, args in stages()[target] if ins == "ENTRYPOINT")
    argv = yaml.safe_load(entrypoint)
    if target == "operator":
        deployment = (ROOT / "charts" / "kubetune" / "templates" / "deployment.yaml").read_text()
        assert argv[:3] == ["kopf", "run", "--all-namespaces"] and "command: [kopf, run, --all-namespaces" in deployment
        assert argv[-2:] == ["-m", "kubetune.operator.handlers"] and "-m, kubetune.operator.handlers]" in deployment
    else:
        builders = (ROOT / "operator" / "kubetune" / "operator" / "builders.py").read_text()
        assert argv == ["python", "-m", "kubetune.trainer"] and '"python", "-m", "kubetune.trainer"' in builders
