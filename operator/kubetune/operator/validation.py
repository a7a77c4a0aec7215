"""Semantic checks the CRD schema cannot express: they need the whole spec at once or the cluster's objects.

``problems()`` is pure (spec in, field-naming messages out); ``missing_references()`` takes the names of the
ConfigMaps and PersistentVolumeClaims that exist, so a handler can tell "invalid" (permanent) from "not there
yet" (retried: the user may create the ConfigMap next); ``access_problems()`` takes the claims' access modes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import PurePosixPath

from kubetune.api.sources import PVCLocation
from kubetune.api.spec import FineTuneJobSpec


def _inside(path: str, parent: str) -> bool:
    p, q = PurePosixPath(path or "."), PurePosixPath(parent or ".")
    return p == q or q in p.parents or str(q) == "."


def problems(spec: FineTuneJobSpec) -> list[str]:
    """Every semantic error of ``spec`` as ``<field>: <message>``; empty when the spec can run."""
    found: list[str] = []
    out = spec.output.pvc if spec.output is not None else None
    if out is not None:
        for i, dataset in enumerate(spec.data.datasets):
            loc = dataset.pvc
            if (
                loc is not None
                and loc.claim_name == out.claim_name
                and (_inside(loc.path, out.path) or _inside(out.path, loc.path))
            ):
                found.append(
                    f"spec.output.pvc.path: {out.claim_name}/{out.path or '.'} overlaps "
                    f"spec.data.datasets[{i}].pvc.path ({loc.path or '.'}); outputs must not be written over "
                    "or inside the training data"
                )
        model = spec.model.pvc
        if (
            model is not None
            and model.claim_name == out.claim_name
            and (_inside(model.path, out.path) or _inside(out.path, model.path))
        ):
            found.append(
                f"spec.output.pvc.path: {out.claim_name}/{out.path or '.'} overlaps spec.model.pvc.path "
                f"({model.path or '.'}); outputs must not be written over or inside the base model"
            )
    if spec.resources.workers > 1 and spec.output is None:
        found.append(
            "spec.output: required when resources.workers > 1; without it each worker's results and "
            "checkpoints are lost when its pod ends"
        )
    labels = spec.task.labels or []
    if len(set(labels)) != len(labels):
        found.append("spec.task.labels: labels must be unique")
    return found


def claims(spec: FineTuneJobSpec, model_cache_claim: str) -> dict[str, str]:
    """PersistentVolumeClaims the job reads or writes, each with the field that names it first."""
    named: dict[str, str] = {model_cache_claim: "spec.model.cached"} if spec.model.cached else {}
    for where, loc in _locations(spec):
        if loc is not None:
            named.setdefault(loc.claim_name, f"{where}.claimName")
    return named


def _locations(spec: FineTuneJobSpec) -> list[tuple[str, PVCLocation | None]]:
    found: list[tuple[str, PVCLocation | None]] = [("spec.model.pvc", spec.model.pvc)]
    found += [(f"spec.data.datasets[{i}].pvc", d.pvc) for i, d in enumerate(spec.data.datasets)]
    found.append(("spec.output.pvc", spec.output.pvc if spec.output else None))
    found.append(("spec.data.cache", spec.data.cache))
    return found


WRITTEN = ("spec.output.pvc", "spec.data.cache")
"""The claims the workers write (the others they only read)."""
SHARED_WRITE = {"ReadWriteMany"}
SHARED_READ = {"ReadWriteMany", "ReadOnlyMany"}


def access_problems(spec: FineTuneJobSpec, model_cache_claim: str, modes: dict[str, set[str]]) -> list[str]:
    """With several workers (pods that may land on several nodes), each claim the job uses must be mountable on
    all of them: ReadWriteMany where they write, ReadOnlyMany or ReadWriteMany where they only read. ``modes``: each
    existing claim's spec.accessModes (a claim not there yet is ``missing_references``'s)."""
    workers = spec.resources.workers
    if workers < 2:
        return []
    written = {loc.claim_name for where, loc in _locations(spec) if loc is not None and where in WRITTEN}
    found = []
    for claim, where in claims(spec, model_cache_claim).items():
        if claim not in modes:
            continue
        needed = SHARED_WRITE if claim in written else SHARED_READ
        if not modes[claim] & needed:
            found.append(
                f"{where}: PersistentVolumeClaim {claim!r} has access modes {sorted(modes[claim])}, so {workers} "
                f"workers on different nodes cannot all mount it ({' or '.join(sorted(needed))} needed); use a "
                "claim of a storage class that offers it, spec.output.uri (object storage), or "
                "spec.resources.workers: 1"
            )
    return found


def config_maps(spec: FineTuneJobSpec) -> Iterator[tuple[str, str, str]]:
    """(field, ConfigMap name, key) of each inline dataset."""
    for i, dataset in enumerate(spec.data.datasets):
        if dataset.config_map is not None:
            yield f"spec.data.datasets[{i}].configMap", dataset.config_map.name, dataset.config_map.key


def missing_references(
    spec: FineTuneJobSpec,
    model_cache_claim: str,
    existing_claims: set[str],
    existing_config_maps: dict[str, set[str]],
) -> list[str]:
    """References to objects that do not exist (yet), as ``<field>: <message>``."""
    found = [
        f"{where}: PersistentVolumeClaim {claim!r} does not exist"
        for claim, where in claims(spec, model_cache_claim).items()
        if claim not in existing_claims
    ]
    for where, name, key in config_maps(spec):
        if name not in existing_config_maps:
            found.append(f"{where}.name: ConfigMap {name!r} does not exist")
        elif key not in existing_config_maps[name]:
            found.append(f"{where}.key: ConfigMap {name!r} has no key {key!r}")
    return found
