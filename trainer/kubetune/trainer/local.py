"""Resolves a FineTuneJob's locations to local paths, in a pod (mounted volumes) or on a laptop (`kubetune run`).

In a pod the operator mounts each PersistentVolumeClaim at ``/mnt/pvc/<claimName>`` and the model cache at
``/mnt/models``; locally a claim maps to a directory given with ``--volume CLAIM=DIR`` (the current directory
otherwise) and the model cache is ``$KUBETUNE_MODEL_CACHE`` (``~/.cache/kubetune/models``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from kubetune.api.data import DatasetSource
from kubetune.api.sources import ModelSource, PVCLocation

from .errors import ConfigError

_DEFAULT_CACHE = Path.home() / ".cache" / "kubetune" / "models"


@dataclass
class Volumes:
    """Where PVCs and the model cache are on this machine."""

    claims: dict[str, Path] = field(default_factory=dict)
    default_root: Path = Path(".")
    model_cache: Path = field(default_factory=lambda: Path(os.environ.get("KUBETUNE_MODEL_CACHE", _DEFAULT_CACHE)))

    def pvc(self, location: PVCLocation) -> Path:
        root = self.claims.get(location.claim_name, self.default_root)
        return root / location.path

    def model(self, source: ModelSource, where: str = "spec.model") -> Path:
        if source.pvc is not None:
            return self.pvc(source.pvc)
        if source.cached is not None:
            return self.model_cache / source.cached
        assert source.uri is not None
        return uri_path(source.uri, f"{where}.uri")

    def dataset(self, source: DatasetSource, where: str) -> Path:
        if source.pvc is not None:
            return self.pvc(source.pvc)
        if source.uri is not None:
            return uri_path(source.uri, f"{where}.uri")
        raise ConfigError(f"{where}.configMap: ConfigMap datasets are mounted by the operator; run it on a cluster")


def uri_path(uri: str, where: str) -> Path:
    """A local path for ``file://`` URIs; other schemes are copied in by the fsspec loader (not yet here)."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(parsed.netloc + parsed.path) if parsed.netloc in ("", "localhost") else Path(parsed.path)
    raise ConfigError(f"{where}: scheme {parsed.scheme!r} is not supported by this trainer build (file:// is)")
