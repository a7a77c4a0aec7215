"""podman for the tests: the environment of hack/containers.sh (kubetune's image storage, runc, rlimits this machine
allows) and the images of hack/images.sh, built once and reused by the hash of what goes into them."""

from __future__ import annotations

import functools
import os
import subprocess
from dataclasses import dataclass

from tests.support.paths import ROOT


def _key_values(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


@functools.cache
def environment() -> dict[str, str]:
    """os.environ plus what points podman and buildah at kubetune's configuration (installs them if missing)."""
    printed = subprocess.run(["bash", str(ROOT / "hack" / "containers.sh")], capture_output=True, text=True, check=True)
    return {**os.environ, **_key_values(printed.stdout)}


def podman(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, env=environment(), timeout=timeout)


@dataclass(frozen=True)
class Images:
    operator: str
    trainer: str


@functools.cache
def build_images() -> Images:
    """Builds (or reuses) both images; the first build on a machine takes minutes (the trainer's wheels are GBs)."""
    result = subprocess.run(
        ["bash", str(ROOT / "hack" / "images.sh")], capture_output=True, text=True, env=environment(), timeout=3600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    found = _key_values(result.stdout)
    return Images(operator=found["KUBETUNE_OPERATOR_IMAGE"], trainer=found["KUBETUNE_TRAINER_IMAGE"])


def image_size(image: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())
