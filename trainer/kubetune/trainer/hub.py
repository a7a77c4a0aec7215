"""Models and datasets from the Hugging Face Hub (``spec.model.huggingFace``, ``spec.data.datasets[].huggingFace``),
downloaded once into a local directory.

The revision is resolved to its commit first, and the model lands in ``<root>/<repo>/<commit>``: a run that finds
it complete (``kubetune-hub.json`` written last) downloads nothing. Files go into a ``.partial`` directory that is
renamed into place only when every file is there at the size the Hub listed, so an interrupted, truncated or
refused download never leaves a half-written model behind (a later run resumes the partial files). Before
anything is fetched: file names are checked (no absolute paths, no ``..``) and the free space is compared with
the total size. Transient errors (connection drops, 5xx, 429) are retried with backoff; 401, 403 and 404 are
configuration errors naming the repository and what to do. The token comes from ``HF_TOKEN`` (the operator
sets it from ``tokenSecretRef``), the server from ``HF_ENDPOINT`` (a mirror, or the tests' local Hub).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from kubetune.api.sources import HuggingFaceDataset, HuggingFaceModel

from .errors import ConfigError

DONE = "kubetune-hub.json"
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
RETRIES = 4
SPACE_MARGIN = 1.05
Progress = Callable[[dict[str, Any]], None]


def _fetch_all(
    source: HuggingFaceModel | HuggingFaceDataset,
    commit: str,
    files: dict[str, int | None],
    partial: Path,
    endpoint: str | None,
    token: str | None,
    where: str,
    progress: Progress | None,
) -> int:
    """Fetch every file of ``files`` (name -> size) into ``partial``, checking each size, reporting after each;
    returns the bytes fetched."""
    done, total = 0, sum(size or 0 for size in files.values())
    kind = "dataset" if isinstance(source, HuggingFaceDataset) else "model"
    for index, (name, size) in enumerate(sorted(files.items()), start=1):
        _fetch(source, commit, name, partial, endpoint, token, where, kind)
        got = (partial / name).stat().st_size
        if size is not None and got != size:
            (partial / name).unlink()
            raise ConfigError(f"{where}: {source.repo}@{commit}: {name} arrived with {got} of {size} bytes; run again")
        done += got
        if progress is not None:
            figures = {"files": index, "totalFiles": len(files), "bytes": done, "totalBytes": total}
            progress({"repo": source.repo, "commit": commit, **figures})
    return done


def download(
    source: HuggingFaceModel | HuggingFaceDataset,
    root: Path,
    where: str = "spec.model.huggingFace",
    progress: Progress | None = None,
    token: str | None = None,
) -> Path:
    """The local directory of ``source`` (a model repo, or a dataset repo's chosen files) at its resolved
    commit, downloading what is missing. ``token`` (the dataset's own) overrides HF_TOKEN."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        raise ConfigError(f"{where}: the repo is on the Hub but HF_HUB_OFFLINE is set; unset it to download")
    from huggingface_hub import HfApi

    dataset = isinstance(source, HuggingFaceDataset)
    endpoint, token = os.environ.get("HF_ENDPOINT") or None, token or os.environ.get("HF_TOKEN") or None
    api = HfApi(endpoint=endpoint, token=token)
    info_of = api.dataset_info if dataset else api.model_info
    info = _call(lambda: info_of(source.repo, revision=source.revision, files_metadata=True), source, where)
    commit = str(info.sha)
    files = {s.rfilename: s.size for s in info.siblings or []}
    for name in files:
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts or not name:
            raise ConfigError(f"{where}: {source.repo}@{commit} lists a file outside the repository: {name!r}")
    key = commit
    if isinstance(source, HuggingFaceDataset):
        files = chosen(source, files, where)
        key = f"{commit}-{hashlib.sha256(json.dumps(sorted(files)).encode()).hexdigest()[:8]}"
        root = root / "datasets"
    target = root / source.repo / key
    if (target / DONE).is_file():
        return target
    partial = root / source.repo / f".{key}.partial"
    partial.mkdir(parents=True, exist_ok=True)
    total = sum(size or 0 for size in files.values())
    free = shutil.disk_usage(partial).free
    if total * SPACE_MARGIN > free:
        raise ConfigError(
            f"{where}: {source.repo}@{commit} needs {total / 2**30:.2f} GiB and {partial.parent} has "
            f"{free / 2**30:.2f} GiB free; give the workers more scratch space (or a model cache)"
        )
    done = _fetch_all(source, commit, files, partial, endpoint, token, where, progress)
    shutil.rmtree(partial / ".cache", ignore_errors=True)  # huggingface_hub's own bookkeeping
    record = {"repo": source.repo, "revision": source.revision, "commit": commit, "files": len(files), "bytes": done}
    if dataset:
        record["names"] = sorted(files)
    (partial / DONE).write_text(json.dumps(record))
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def chosen_files(local: Path) -> list[str]:
    """The files a dataset download holds (as the Hub names them), from its record."""
    return list(json.loads((local / DONE).read_text())["names"])


def source_of(model_dir: Path) -> dict[str, Any] | None:
    """What a downloaded model directory came from (repo, revision, commit), for the manifest and model card."""
    path = model_dir / DONE
    return json.loads(path.read_text()) if path.is_file() else None


def chosen(source: HuggingFaceDataset, files: dict[str, int | None], where: str) -> dict[str, int | None]:
    """The dataset repo's files to read: those ``files`` names (each must exist), or the data files of
    ``split`` (named ``<split>.*``, ``<split>-*``, ``<split>_*``, or under a ``<split>/`` directory)."""
    data = {n: size for n, size in files.items() if n.endswith(DATA_SUFFIXES)}
    if source.files:
        missing = [n for n in source.files if n not in files]
        if missing:
            raise ConfigError(f"{where}.files: {source.repo} has no {missing[0]!r}; it has {sorted(data)[:10]}")
        return {n: files[n] for n in source.files}
    split = source.split or ""
    picked = {
        n: size
        for n, size in data.items()
        if split in PurePosixPath(n).parts[:-1]
        or PurePosixPath(n).name.split(".")[0] == split
        or PurePosixPath(n).name.startswith((f"{split}-", f"{split}_"))
    }
    if not picked:
        raise ConfigError(
            f"{where}.split: {source.repo} has no data files of split {split!r}; it has {sorted(data)[:10]}"
        )
    return picked


def _fetch(
    source: HuggingFaceModel | HuggingFaceDataset,
    commit: str,
    name: str,
    into: Path,
    endpoint: str | None,
    token: str | None,
    where: str,
    kind: str,
) -> None:
    from huggingface_hub import hf_hub_download

    def get() -> Any:
        return hf_hub_download(
            source.repo, name, repo_type=kind, revision=commit, local_dir=into, endpoint=endpoint, token=token
        )

    _call(get, source, where)


def _call(fn: Callable[[], Any], source: HuggingFaceModel | HuggingFaceDataset, where: str) -> Any:
    """``fn()``, retried with backoff on transient errors; Hub refusals become ConfigErrors that say what to do."""
    import httpx2
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    for attempt in range(RETRIES):
        try:
            return fn()
        except RevisionNotFoundError as error:
            raise ConfigError(
                f"{where}.revision: {source.repo} has no revision {source.revision!r}; name a branch, tag or commit "
                "it has"
            ) from error
        except GatedRepoError as error:
            raise ConfigError(
                f"{where}: {source.repo} is gated (403): accept its terms on the Hub with the account whose token "
                "tokenSecretRef holds"
            ) from error
        except HfHubHTTPError as error:
            status = error.response.status_code if error.response is not None else None
            if status == 401 or (isinstance(error, RepositoryNotFoundError) and status in (401, 404)):
                hint = "the token was refused" if os.environ.get("HF_TOKEN") else "no token was given"
                raise ConfigError(
                    f"{where}: the Hub answered {status} for {source.repo} ({hint}): check the repo name, and for a "
                    "private or gated repo set tokenSecretRef to a Secret key holding a token that can read it"
                ) from error
            if status == 403:
                denied = f"{where}: the Hub refused {source.repo} (403): the token lacks read access to it"
                raise ConfigError(denied) from error
            if status is not None and status < 500 and status != 429:
                raise ConfigError(f"{where}: the Hub answered {status} for {source.repo}: {error}") from error
            failure: Exception = error
        except (OSError, httpx2.TransportError) as error:  # connection dropped, truncated body, timeouts
            failure = error
        if attempt < RETRIES - 1:
            time.sleep(min(2**attempt, 8) * float(os.environ.get("KUBETUNE_HUB_BACKOFF", "1")))
    raise ConfigError(f"{where}: could not download {source.repo} after {RETRIES} tries: {failure}")
