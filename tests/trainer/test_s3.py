"""Models, data and outputs in S3-compatible storage, against a real S3 server on loopback (moto, signed requests):
the keys of a credentialsSecretRef read the model and the data and write the outputs; a wrong secret or a missing
object fails with exit 78 naming the field and what to check, and leaks no key."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kubetune.trainer import remote
from kubetune.trainer.errors import EXIT_CONFIG
from kubetune.trainer.tiny import build_tiny_llama
from tests.support import s3server
from tests.support.cli import kubetune
from tests.support.s3server import S3Server
from tests.trainer.conftest import DATA, fast_job


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    root = tmp_path_factory.mktemp("s3")
    with s3server.serving(("models", "data", "runs"), root / "moto.log") as server:
        options = server.options()
        remote.upload(build_tiny_llama(root / "tiny", seed=5), "s3://models/tiny", options=options)
        rows = root / "rows"
        rows.mkdir()
        (rows / "instructions.jsonl").write_bytes((DATA / "instructions.jsonl").read_bytes())
        (rows / "notes.txt").write_text("not a data file: skipped")
        remote.upload(rows, "s3://data/instructions", options=options)
        yield server


def s3_job(server: S3Server, name: str = "s3", model: str = "s3://models/tiny") -> dict:  # type: ignore[type-arg]
    keys = {"endpoint": server.url, "credentialsSecretRef": {"name": "s3-keys"}}
    job = fast_job(name).drop("spec.model.cached").set("spec.training.maxSteps", 3)
    job.set("spec.model", {"uri": model, **keys})
    job.set("spec.data.datasets[0]", {"name": "rows", "uri": "s3://data/instructions/", **keys})
    job.set("spec.output", {"uri": f"s3://runs/{name}", **keys})
    return job.set("spec.evaluation.baseline", False).build()


def _run(job: dict, tmp_path: Path, server: S3Server, secret: str | None = None) -> subprocess.CompletedProcess[str]:  # type: ignore[type-arg]
    """A worker on ``job`` with the Secret's keys where the operator puts them (slot 0)."""
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    keys = {
        "KUBETUNE_CREDENTIALS_0_AWS_ACCESS_KEY_ID": server.key_id,
        "KUBETUNE_CREDENTIALS_0_AWS_SECRET_ACCESS_KEY": secret or server.secret,
    }
    out = tmp_path / "out"
    return kubetune(
        "worker",
        str(tmp_path / "job.yaml"),
        f"--output={out}",
        "--metrics-port=0",
        env={"TMPDIR": str(tmp_path), **keys},
    )


@pytest.mark.slow
def test_the_keys_of_a_secret_read_the_model_and_data_and_write_the_outputs(s3: S3Server, tmp_path: Path) -> None:
    result = _run(s3_job(s3), tmp_path, s3)
    assert result.returncode == 0, result.stderr[-3000:]
    fs, _ = remote.filesystem("s3://runs/s3", "test", s3.options())
    uploaded = {name.removeprefix("runs/s3/") for name in fs.find("runs/s3")}
    assert {"manifest.json", "README.md", "adapter/adapter_model.safetensors"} <= uploaded, sorted(uploaded)
    manifest = json.loads(fs.cat_file("runs/s3/manifest.json"))
    digest = hashlib.sha256((DATA / "instructions.jsonl").read_bytes()).hexdigest()
    assert manifest["dataSha256"] == {"rows": digest}, "the one data file of the prefix, notes.txt skipped"
    assert manifest["spec"]["model"]["uri"] == "s3://models/tiny"
    assert '"output": "s3://runs/s3"' in result.stderr
    written = "".join(
        p.read_text(errors="replace")
        for p in (tmp_path / "out").rglob("*")
        if p.suffix in {".json", ".md", ".yaml", ".jsonl"}
    )
    assert s3.secret not in result.stderr + result.stdout + written + fs.cat_file("runs/s3/README.md").decode()


def test_a_wrong_secret_is_refused_naming_the_field_and_the_keys_to_check(s3: S3Server, tmp_path: Path) -> None:
    result = _run(s3_job(s3, "wrong"), tmp_path, s3, secret="not-the-secret")
    assert result.returncode == EXIT_CONFIG, result.stderr[-3000:]
    # The first store it reads: the output location, for a finished model of another spec (never replaced).
    assert "spec.output.uri: the store refused to read s3://runs/wrong" in result.stderr
    assert "ACCESS_DENIED" in result.stderr and "credentialsSecretRef" in result.stderr  # HEAD: a 403, no body
    assert "Traceback" not in result.stderr and "not-the-secret" not in result.stderr
    assert not (tmp_path / "kubetune" / "model").exists() and not (tmp_path / "kubetune" / "model.partial").exists()


@pytest.mark.slow
def test_a_missing_model_is_named(s3: S3Server, tmp_path: Path) -> None:
    result = _run(s3_job(s3, "missing", model="s3://models/nothing-here"), tmp_path, s3)
    assert result.returncode == EXIT_CONFIG, result.stderr[-3000:]
    assert "spec.model.uri: s3://models/nothing-here does not exist" in result.stderr
