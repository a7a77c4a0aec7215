"""Continuous tuning (``spec.model.fromJob``): a job starts from the output of an earlier, succeeded FineTuneJob.

Pure: the job and the earlier job (as read from the API, or None) in; the job as its workers see it out, with
``spec.model`` turned into the earlier job's whole or merged model on its output claim (mounted read-only, like
any model claim). The trainer then finds the earlier job's manifest next to that model and records the lineage.
"""

from __future__ import annotations

from typing import Any

from kubetune.api.enums import MethodType, Phase
from kubetune.api.sources import ModelSource, PVCLocation
from kubetune.api.spec import FineTuneJob, parse_job


class NotReadyError(Exception):
    """The earlier job does not exist yet or has not finished: wait for it."""


class ImpossibleError(Exception):
    """The earlier job can never hand on a model (it failed, or kept no whole or merged model on a claim)."""


def resolve(job: FineTuneJob, earlier: dict[str, Any] | None) -> FineTuneJob:
    """``job`` with ``spec.model`` pointing at the earlier job's model; raises NotReadyError or ImpossibleError."""
    name = job.spec.model.from_job
    if name is None:
        return job
    where = "spec.model.fromJob"
    if earlier is None:
        raise NotReadyError(f"{where}: FineTuneJob {name} does not exist")
    phase = (earlier.get("status") or {}).get("phase")
    if phase == Phase.FAILED:
        raise ImpossibleError(f"{where}: FineTuneJob {name} failed; start from a succeeded job")
    if phase != Phase.SUCCEEDED:
        raise NotReadyError(f"{where}: FineTuneJob {name} has not succeeded yet (phase {phase or 'Pending'})")
    spec = parse_job({k: v for k, v in earlier.items() if k in ("apiVersion", "kind", "metadata", "spec")}).spec
    out = spec.output.pvc if spec.output is not None else None
    if out is None:
        raise ImpossibleError(
            f"{where}: FineTuneJob {name} wrote no output to a PersistentVolumeClaim (spec.output.pvc)"
        )
    if spec.method.type == MethodType.FULL:
        kept = "model"
    elif spec.stages or (spec.output is not None and spec.output.merge_adapter):
        kept = "merged"
    else:
        raise ImpossibleError(f"{where}: FineTuneJob {name} kept only an adapter; it needs output.mergeAdapter")
    path = f"{out.path}/{kept}".lstrip("/")
    model = ModelSource(
        pvc=PVCLocation(claim_name=out.claim_name, path=path), trust_remote_code=job.spec.model.trust_remote_code
    )
    return job.model_copy(update={"spec": job.spec.model_copy(update={"model": model})})
