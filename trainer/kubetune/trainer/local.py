"""Resolves a FineTuneJob's locations to local files, in a pod (mounted volumes) or on a laptop (`kubetune run`).

In a pod the operator mounts each PersistentVolumeClaim at ``/mnt/pvc/<claimName>``, each ConfigMap dataset at
``/mnt/configmaps/<name>`` and the model cache at ``/mnt/models`` (``Volumes.in_pod()``). Locally a claim maps to a
directory given with ``--volume CLAIM=DIR`` (the current directory otherwise), ConfigMaps come from the same YAML
file as the job, and the model cache is ``$KUBETUNE_MODEL_CACHE`` (``~/.cache/kubetune/models``).
URIs go through ``remote`` (pyarrow's S3 for s3://, fsspec otherwise); a scheme whose package is missing gives a
clear error.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from kubetune.api import credentials
from kubetune.api.data import DatasetSource
from kubetune.api.sources import ModelSource, PVCLocation

from . import hub, remote
from .errors import ConfigError

_DEFAULT_CACHE = Path.home() / ".cache" / "kubetune" / "models"
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


@dataclass
class Volumes:
    """Where PVCs, ConfigMaps and the model cache are on this machine."""

    claims: dict[str, Path] = field(default_factory=dict)
    default_root: Path = Path(".")
    model_cache: Path = field(default_factory=lambda: Path(os.environ.get("KUBETUNE_MODEL_CACHE", _DEFAULT_CACHE)))
    config_maps: dict[str, dict[str, str]] = field(default_factory=dict)
    """ConfigMap data given inline (local runs); in a pod they are files under ``config_map_root``."""
    config_map_root: Path | None = None
    scratch: Path = field(default_factory=lambda: Path(os.environ.get("TMPDIR", "/tmp")) / "kubetune")
    runs: Path = Path("runs")
    """Where local runs keep their outputs (``spec.model.fromJob`` finds earlier jobs there)."""
    credentials: dict[str, int] = field(default_factory=dict)
    """Secret name -> slot of the job's credentialsSecretRefs (``kubetune.api.credentials.slots``)."""
    hub_tokens: dict[tuple[str, str], str] = field(default_factory=dict)
    """(Secret name, key) -> variable of each Hub dataset's token (``kubetune.api.credentials.hub_tokens``)."""
    hub_datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Dataset name -> what its Hub download came from (repo, revision, commit), for the manifest."""
    hub_models: dict[str, Path] = field(default_factory=dict)
    """Each Hub model source already resolved and downloaded in this process -> its directory."""
    prepared: Path | None = None
    """Where prepared data is cached (``datacache``); None: prepared in memory each time."""
    hub_root: Path | None = None
    """Where Hub models are downloaded: ``<model cache>/hub`` locally, scratch space in a pod (the cache is
    read-only there)."""

    @classmethod
    def in_pod(cls) -> Volumes:
        """The mount layout the operator gives training pods (each root can be moved by its variable)."""
        pvc_root = Path(os.environ.get("KUBETUNE_PVC_ROOT", "/mnt/pvc"))
        claims = {p.name: p for p in pvc_root.iterdir()} if pvc_root.is_dir() else {}
        return cls(
            claims=claims,
            model_cache=Path(os.environ.get("KUBETUNE_MODEL_CACHE", "/mnt/models")),
            config_map_root=Path(os.environ.get("KUBETUNE_CONFIGMAP_ROOT", "/mnt/configmaps")),
            hub_root=Path(os.environ.get("TMPDIR", "/tmp")) / "kubetune" / "hub",
        )

    def pvc(self, location: PVCLocation) -> Path:
        root = self.claims.get(location.claim_name, self.default_root)
        return root / location.path

    def model(self, source: ModelSource, where: str = "spec.model", progress: hub.Progress | None = None) -> Path:
        """A local model directory (a URI is copied into scratch space first, a Hub model downloaded once)."""
        if source.pvc is not None:
            return self.pvc(source.pvc)
        if source.hugging_face is not None:  # resolved once per process (stages ask again for the lineage)
            key = source.hugging_face.model_dump_json()
            if key not in self.hub_models:
                root = self.hub_root or self.model_cache / "hub"
                self.hub_models[key] = hub.download(source.hugging_face, root, f"{where}.huggingFace", progress)
            return self.hub_models[key]
        if source.cached is not None:
            return self.model_cache / source.cached
        if source.from_job is not None:  # in a pod the operator has turned this into the earlier job's claim
            return handed_on(self.runs / source.from_job, f"{where}.fromJob")
        assert source.uri is not None
        return remote.download(source.uri, self.scratch / "model", f"{where}.uri", self.storage_options(source))

    def dataset_files(self, source: DatasetSource, where: str) -> Iterator[tuple[str, bytes]]:
        """(name, content) of each file of a dataset source; a directory yields its data files in name order."""
        if source.config_map is not None:
            ref = source.config_map
            if self.config_map_root is not None:
                path = self.config_map_root / ref.name / ref.key
                if not path.is_file():
                    raise ConfigError(f"{where}.configMap: key {ref.key!r} of ConfigMap {ref.name!r} is not mounted")
                yield ref.key, path.read_bytes()
                return
            data = self.config_maps.get(ref.name)
            if data is None:
                raise ConfigError(f"{where}.configMap: ConfigMap {ref.name!r} is not in the manifest file")
            if ref.key not in data:
                raise ConfigError(f"{where}.configMap: ConfigMap {ref.name!r} has no key {ref.key!r}")
            yield ref.key, data[ref.key].encode()
            return
        if source.hugging_face is not None:
            secret = source.hugging_face.token_secret_ref
            variable = self.hub_tokens.get((secret.name, secret.key)) if secret is not None else None
            token = os.environ.get(variable) if variable else None
            root = self.hub_root or self.model_cache / "hub"
            local = hub.download(source.hugging_face, root, f"{where}.huggingFace", token=token)
            origin = hub.source_of(local) or {}
            self.hub_datasets[source.name] = {k: origin.get(k) for k in ("repo", "revision", "commit")}
            for chosen in source.hugging_face.files or sorted(hub.chosen_files(local)):
                yield chosen.rsplit("/", 1)[-1], (local / chosen).read_bytes()
            return
        if source.pvc is not None:
            for file in self.dataset_paths(source.pvc, where):
                yield file.name, file.read_bytes()
            return
        assert source.uri is not None
        fs, key = remote.filesystem(source.uri, f"{where}.uri", self.storage_options(source))
        with remote.errors(f"{where}.uri", source.uri, "read"):
            names: list[str] = (
                sorted(p for p in fs.ls(key, detail=False) if p.endswith(DATA_SUFFIXES))
                if remote.is_dir(fs, key)
                else [key]
            )
            if not names:
                raise ConfigError(f"{where}.uri: {source.uri} has no {'/'.join(DATA_SUFFIXES)} files")
            for name in names:
                yield name.rsplit("/", 1)[-1], fs.cat_file(name)

    def dataset_streams(self, source: DatasetSource, where: str) -> Iterator[tuple[str, BinaryIO]]:
        """(name, open binary file) of each file of a dataset source: files on a claim are opened, not read, so a
        reader can take them a line at a time; other sources' bytes are read as ``dataset_files`` reads them."""
        if source.pvc is not None:
            for file in self.dataset_paths(source.pvc, where):
                yield file.name, file.open("rb")
            return
        for name, raw in self.dataset_files(source, where):
            yield name, io.BytesIO(raw)

    def dataset_paths(self, location: PVCLocation, where: str) -> list[Path]:
        """The data files of a claim location: the file, or a directory's data files in name order."""
        path = self.pvc(location)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in DATA_SUFFIXES)
            if not files:
                raise ConfigError(f"{where}.pvc.path: directory {path} has no {'/'.join(DATA_SUFFIXES)} files")
            return files
        if not path.exists():
            raise ConfigError(f"{where}.pvc.path: file {path} does not exist")
        return [path]

    def storage_options(self, location: Any, env: dict[str, str] | None = None) -> dict[str, Any]:
        """fsspec options of an s3:// location: the keys of its credentialsSecretRef (the variables the operator
        fills from the Secret; without them, the AWS default chain: AWS_* variables, profiles, instance roles) and
        its endpoint (``remote.filesystem`` reads them)."""
        env = dict(os.environ if env is None else env)
        options: dict[str, Any] = {}
        ref = getattr(location, "credentials_secret_ref", None)
        if ref is not None and ref.name in self.credentials:
            slot = self.credentials[ref.name]
            for key, option in (
                ("AWS_ACCESS_KEY_ID", "key"),
                ("AWS_SECRET_ACCESS_KEY", "secret"),
                ("AWS_SESSION_TOKEN", "token"),
            ):
                if value := env.get(credentials.variable(slot, key)):
                    options[option] = value
        if getattr(location, "endpoint", None):
            options["endpoint_url"] = location.endpoint
        return options


def handed_on(out: Path, where: str) -> Path:
    """The model a finished job's outputs hand on: its whole model (Full) or its merged model."""
    for name in ("model", "merged"):
        if (out / name / "config.json").is_file():
            return out / name
    raise ConfigError(
        f"{where}: {out} holds no whole or merged model (a job hands one on once it finished, with method Full "
        "or output.mergeAdapter)"
    )
