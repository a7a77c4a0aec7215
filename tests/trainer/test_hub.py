"""Models from the Hugging Face Hub, against a local server speaking the Hub's download API (``HF_ENDPOINT``): a
private repo that needs a token trains with it and fails clearly without it or at an unknown revision; hostile
listings, truncated downloads and a full disk leave no half-written model behind."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kubetune.api.sources import HuggingFaceModel
from kubetune.trainer import hub
from kubetune.trainer.errors import EXIT_CONFIG, ConfigError
from kubetune.trainer.tiny import build_tiny_llama
from tests.support.cli import kubetune
from tests.support.fakehub import FakeHub, serving
from tests.trainer.conftest import DATA, fast_job

REPO, TOKEN = "kubetune/tiny-private", "hf_right_token"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("repo") / "tiny", seed=5)


@pytest.fixture
def fake_hub(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the suite runs offline otherwise
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("KUBETUNE_HUB_BACKOFF", "0")
    fake = FakeHub()
    fake.add(REPO, tiny, token=TOKEN)
    with serving(fake) as running:
        monkeypatch.setenv("HF_ENDPOINT", running.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield running


def _run(job: dict, tmp_path: Path, env: dict[str, str], out: str = "out") -> subprocess.CompletedProcess[str]:  # type: ignore[type-arg]
    """A worker (JSON events on stderr) on ``job`` with the test's Hub, the model cache under ``tmp_path``."""
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    job_file, output = str(tmp_path / "job.yaml"), f"--output={tmp_path / out}"
    cache = {"KUBETUNE_MODEL_CACHE": str(tmp_path / "cache"), **env}
    return kubetune("worker", job_file, f"--volume=data={DATA}", output, "--metrics-port=0", env=cache)


def hub_job(revision: str = "main") -> dict:  # type: ignore[type-arg]
    job = fast_job("hub").drop("spec.model.cached").set("spec.training.maxSteps", 4)
    job.set(
        "spec.model.huggingFace", {"repo": REPO, "revision": revision, "tokenSecretRef": {"name": "hf", "key": "token"}}
    )
    return job.set("spec.evaluation.baseline", False).build()


@pytest.mark.slow
def test_a_private_hub_model_trains_with_its_token_once_and_records_the_commit(
    fake_hub: FakeHub, tmp_path: Path
) -> None:
    result = _run(hub_job(), tmp_path, {})
    assert result.returncode == 0, result.stderr[-3000:]
    commit = fake_hub.repos[REPO].commit
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["hub"] == {
        "repo": REPO,
        "revision": "main",
        "commit": commit,
        "files": 6,
        "bytes": manifest["hub"]["bytes"],
    }
    assert f"{REPO}@{commit}" in (tmp_path / "out" / "README.md").read_text()
    assert '"phase": "Downloading"' in result.stderr and '"totalFiles": 6' in result.stderr
    assert (tmp_path / "cache" / "hub" / REPO / commit / "config.json").is_file()
    served = fake_hub.downloads
    again = _run(hub_job(), tmp_path, {}, out="again")
    assert again.returncode == 0, again.stderr[-3000:]
    assert fake_hub.downloads == served, "a second run of the same commit downloads nothing"
    assert TOKEN not in result.stderr + (tmp_path / "out" / "README.md").read_text() + json.dumps(manifest)


def test_no_token_is_refused_with_the_401_and_what_to_do(fake_hub: FakeHub, tmp_path: Path) -> None:
    result = _run(hub_job(), tmp_path, {"HF_TOKEN": ""})
    assert result.returncode == EXIT_CONFIG
    assert f"the Hub answered 401 for {REPO} (no token was given)" in result.stderr
    assert "tokenSecretRef" in result.stderr
    assert not (tmp_path / "cache" / "hub" / REPO).exists() or not any((tmp_path / "cache" / "hub" / REPO).iterdir())


def test_an_unknown_revision_is_named(fake_hub: FakeHub, tmp_path: Path) -> None:
    result = _run(hub_job("v9"), tmp_path, {})
    assert result.returncode == EXIT_CONFIG
    assert f"spec.model.huggingFace.revision: {REPO} has no revision 'v9'" in result.stderr


def test_a_listing_with_a_path_outside_the_repo_is_refused_before_any_download(
    fake_hub: FakeHub, tmp_path: Path
) -> None:
    fake_hub.repos[REPO].extra_listing = ["../../etc/evil"]
    with pytest.raises(ConfigError, match=re.escape("lists a file outside the repository: '../../etc/evil'")):
        hub.download(HuggingFaceModel(repo=REPO), tmp_path / "hub")
    assert fake_hub.downloads == 0 and not (tmp_path / "hub" / REPO / fake_hub.repos[REPO].commit).exists()


@pytest.mark.slow
def test_a_truncated_download_fails_after_retries_and_leaves_no_model(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.repos[REPO].truncate = True
    with pytest.raises(ConfigError, match=f"could not download {REPO} after 4 tries"):
        hub.download(HuggingFaceModel(repo=REPO), tmp_path / "hub")
    commit = fake_hub.repos[REPO].commit
    assert not (tmp_path / "hub" / REPO / commit).exists(), "only the .partial directory, never the model"
    fake_hub.repos[REPO].truncate = False
    model = hub.download(HuggingFaceModel(repo=REPO), tmp_path / "hub")  # the next try completes it
    assert (model / hub.DONE).is_file() and model.name == commit


def test_a_full_disk_is_a_clear_error_before_downloading(
    fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(hub.shutil, "disk_usage", lambda _path: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(ConfigError, match=r"needs 0\.\d+ GiB and .* has 0\.00 GiB free"):
        hub.download(HuggingFaceModel(repo=REPO), tmp_path / "hub")
    assert fake_hub.downloads == 0


@pytest.mark.slow
def test_a_hub_dataset_split_with_its_own_token_trains(fake_hub: FakeHub, tmp_path: Path) -> None:
    rows = (DATA / "instructions.jsonl").read_bytes()
    fake_hub.add_dataset(
        "kubetune/rows",
        {"data/train-00000.jsonl": rows, "data/test-00000.jsonl": rows[:500], "README.md": b"# rows"},
        token="hf_dataset_token",
    )
    job = fast_job("hubdata").set("spec.training.maxSteps", 3).set("spec.evaluation.baseline", False)
    job.set(
        "spec.data.datasets[0]",
        {
            "name": "rows",
            "huggingFace": {
                "repo": "kubetune/rows",
                "split": "train",
                "tokenSecretRef": {"name": "data", "key": "token"},
            },
        },
    )
    result = _run(job.build(), tmp_path, {"KUBETUNE_HUB_TOKEN_0": "hf_dataset_token", "HF_TOKEN": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "prep_report.json").read_text())
    assert report["rowsRead"]["rows"] == len(rows.splitlines())
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    commit = fake_hub.datasets["kubetune/rows"].commit
    assert manifest["hubDatasets"] == {"rows": {"repo": "kubetune/rows", "revision": "main", "commit": commit}}
    wrong = _run(
        job.set("spec.data.datasets[0].huggingFace.split", "dev").build(),
        tmp_path,
        {"KUBETUNE_HUB_TOKEN_0": "hf_dataset_token"},
        out="wrong",
    )
    assert wrong.returncode == EXIT_CONFIG and "has no data files of split 'dev'" in wrong.stderr
    assert "data/train-00000.jsonl" in wrong.stderr
