"""The two images, built for real from the Dockerfile (hack/images.sh: buildah, a base made from Debian packages, the
locks' wheels) and run with podman: the operator image holds no torch and stays small, both run as 65532 on a
read-only root filesystem, their entry points answer, and the trainer image fine-tunes an example to success with
the repository mounted read-only and its outputs on a volume.

The images are cached by the hash of what goes into them, so a fresh clone of the same tree reuses them.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support import containers
from tests.support.paths import ROOT

pytestmark = pytest.mark.slow

OPERATOR_IMAGE_TARGET_BYTES = 250_000_000


@pytest.fixture(scope="module")
def images() -> containers.Images:
    return containers.build_images()


def run(image: str, *args: str, entrypoint: str | None = None, options: tuple[str, ...] = ()) -> str:
    command = ["run", "--rm", "--read-only", *options]
    if entrypoint is not None:
        command += ["--entrypoint", entrypoint]
    result = containers.podman(*command, image, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_operator_image_holds_no_torch_and_stays_under_its_size_target(images: containers.Images) -> None:
    found = run(images.operator, "-c", "import importlib.util as u; print(u.find_spec('torch'))", entrypoint="python")
    assert found.strip() == "None"
    assert containers.image_size(images.operator) < OPERATOR_IMAGE_TARGET_BYTES
    # The operator's own modules import inside it: kopf, pydantic and the kubernetes client are all there.
    run(images.operator, "-c", "import kubetune.operator.handlers", entrypoint="python")


@pytest.mark.parametrize("kind", ["operator", "trainer"])
def test_both_images_run_as_65532_on_a_read_only_root(images: containers.Images, kind: str) -> None:
    image = getattr(images, kind)
    assert containers.podman("image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip() == "65532:65532"
    probe = "import os; print(os.getuid(), os.getgid()); open('/app/x', 'w')"
    result = containers.podman("run", "--rm", "--read-only", "--entrypoint", "python", image, "-c", probe)
    assert result.stdout.split()[:2] == ["65532", "65532"]
    assert "Read-only file system" in result.stderr


def test_entry_points_answer(images: containers.Images) -> None:
    assert "Start an operator process" in run(images.operator, "--help")  # kopf run ... --help
    assert "usage: kubetune [-h] {run,launch,worker,serve,prepare}" in run(images.trainer, "--help")  # its ENTRYPOINT


def test_trainer_image_fine_tunes_an_example_with_the_repository_read_only(
    images: containers.Images, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)  # the image's user 65532 writes there
    options = ("-v", f"{ROOT}:/src:ro", "-v", f"{out}:/out", "-w", "/src", "-e", "KUBETUNE_MODEL_CACHE=/tmp/models")
    printed = run(images.trainer, "run", "examples/lora-instruction.yaml", "--output", "/out/run", options=options)
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    assert metrics["test"]["loss"] < metrics["baseline"]["loss"], printed
    assert (out / "run" / "manifest.json").is_file()
    weights = out / "run" / "adapter" / "adapter_model.safetensors"
    assert weights.stat().st_mode & 0o044 == 0o044  # readable by a pod of another user (safetensors writes 0600)


def test_the_images_are_reused_not_rebuilt(images: containers.Images) -> None:
    again = subprocess.run(["bash", str(ROOT / "hack" / "images.sh")], capture_output=True, text=True, check=True)
    assert "building" not in again.stderr
    assert f"KUBETUNE_TRAINER_IMAGE={images.trainer}" in again.stdout
