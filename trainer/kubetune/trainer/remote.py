"""Remote locations (``uri``): fsspec for any scheme, pyarrow's own S3 client for ``s3://``.

``s3://`` goes through ``pyarrow.fs.S3FileSystem`` (wrapped as an fsspec filesystem), which ships inside the
pyarrow wheel the trainer already has for Parquet: no s3fs/aiobotocore stack (whose botocore pins
python-dateutil<3, against the kubernetes client of the dev venv). Options come from ``Volumes.storage_options``
(the keys of the location's credentialsSecretRef and its endpoint); without keys pyarrow uses the AWS default
chain (AWS_* variables, profiles, instance roles). The region is ``AWS_REGION``/``AWS_DEFAULT_REGION``, else the
bucket's own region (AWS) or ``us-east-1`` (an endpoint of an S3-compatible store).

Errors of a remote store become a ConfigError naming the field, the URI and what to check, never a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError

_DENIED = ("ACCESS_DENIED", "SIGNATURE_DOES_NOT_MATCH", "INVALID_ACCESS_KEY_ID", "AccessDenied", "Forbidden", "403")


def filesystem(uri: str, where: str, options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """The fsspec filesystem and path of ``uri`` (with ``options``: key, secret, token, endpoint_url); a missing
    filesystem package is a ConfigError."""
    import fsspec

    options = dict(options or {})
    if urlsplit(uri).scheme == "s3":
        path = uri[len("s3://") :]
        return _s3(path, options), path
    try:
        fs, path = fsspec.core.url_to_fs(uri, **options)
    except (ImportError, ValueError) as error:
        raise ConfigError(f"{where}: cannot open {uri}: {error}") from error
    return fs, path


def _s3(path: str, options: dict[str, Any]) -> Any:
    from fsspec.implementations.arrow import ArrowFSWrapper
    from pyarrow.fs import S3FileSystem, resolve_s3_region

    kwargs: dict[str, Any] = {
        "access_key": options.get("key"),
        "secret_key": options.get("secret"),
        "session_token": options.get("token"),
    }
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if endpoint := options.get("endpoint_url"):
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = parts.netloc + parts.path.rstrip("/")
        kwargs["scheme"] = parts.scheme
        region = region or "us-east-1"
    elif not region:
        try:
            region = resolve_s3_region(path.split("/", 1)[0])
        except OSError:
            region = "us-east-1"
    kwargs["region"] = region
    return ArrowFSWrapper(S3FileSystem(**{k: v for k, v in kwargs.items() if v is not None}))


def is_dir(fs: Any, path: str) -> bool:
    """Whether ``path`` is a directory (a prefix in S3); unlike ``fs.isdir``, a refusal or a missing path raises."""
    return bool(fs.info(path)["type"] == "directory")


@contextmanager
def errors(where: str, uri: str, action: str) -> Iterator[None]:
    """Turn a remote store's failure into a ConfigError naming ``where`` and ``uri`` (and the credentials to check
    for a refusal)."""
    try:
        yield
    except ConfigError:
        raise
    except FileNotFoundError as error:
        raise ConfigError(f"{where}: {uri} does not exist") from error
    except OSError as error:
        message = str(error).rstrip(". ")
        if any(code in message for code in _DENIED):
            raise ConfigError(
                f"{where}: the store refused to {action} {uri}: {message}. Check the keys of the location's "
                "credentialsSecretRef (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and that they may access the bucket"
            ) from error
        raise ConfigError(f"{where}: cannot {action} {uri}: {message}") from error


def download(uri: str, local: Path, where: str, options: dict[str, Any] | None = None) -> Path:
    """Copy the model directory at ``uri`` into ``local`` once (a partial copy is removed, never used)."""
    import shutil

    if (local / "config.json").exists():
        return local
    fs, path = filesystem(uri, where, options)
    partial = local.with_name(local.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with errors(where, uri, "read"):
        if not is_dir(fs, path):
            raise FileNotFoundError(path)
        fs.get(path.rstrip("/") + "/", str(partial), recursive=True)
    if not (partial / "config.json").is_file():
        shutil.rmtree(partial, ignore_errors=True)
        raise ConfigError(f"{where}: {uri} holds no config.json (a model directory, as save_pretrained writes it)")
    shutil.rmtree(local, ignore_errors=True)
    partial.rename(local)
    return local


def upload(
    local: Path,
    uri: str,
    where: str = "spec.output.uri",
    options: dict[str, Any] | None = None,
    skip: tuple[str, ...] = (),
) -> None:
    """Copy the output directory to ``uri`` (files in place are overwritten), but for the entries named in
    ``skip`` (the checkpoints, mirrored there as they were written)."""
    fs, path = filesystem(uri, where, options)
    with errors(where, uri, "write"):
        fs.makedirs(path, exist_ok=True)
        for entry in sorted(local.iterdir()):
            if entry.name in skip:
                continue
            target = f"{path.rstrip('/')}/{entry.name}"
            fs.put(str(entry) + ("/" if entry.is_dir() else ""), target, recursive=entry.is_dir())
