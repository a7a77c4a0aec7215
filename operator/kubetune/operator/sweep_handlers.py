"""kopf handlers of FineTuneSweeps (registered by ``handlers``): validate on create, then a timer runs one
``sweeps.reconcile`` step at a time from the sweep's trials (a FineTuneJob index) and applies it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from kubetune.api.enums import Phase
from kubetune.api.spec import GROUP, PLURAL, VERSION
from kubetune.api.sweep import SWEEP_PLURAL, FineTuneSweep, parse_sweep

from . import admission, kube, metrics, settings, sweeps

SETTINGS = settings.current()
SWEEPS = (GROUP, VERSION, SWEEP_PLURAL)


def _sweep(body: kopf.Body) -> FineTuneSweep:
    raw = {k: v for k, v in dict(body).items() if k != "status"}
    sweep = parse_sweep(raw)
    if body.get("status"):
        try:
            sweep.status = parse_sweep({**raw, "status": dict(body["status"])}).status
        except ValidationError:
            sweep.status = None
    return sweep


@kopf.on.create(*SWEEPS)
@kopf.on.resume(*SWEEPS)
def sweep_created(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    """Validate the sweep and every trial it would make (a bad value names the trial and field)."""
    admission.parse_or_reject(body, patch, _sweep, sweeps.check)
    memo["sweep_valid"] = True


@kopf.index(GROUP, VERSION, PLURAL, labels={sweeps.LABEL_SWEEP: kopf.PRESENT})
def sweep_trials(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """Each sweep's trials (their labels, annotations and status), kept current from the FineTuneJob watch."""
    meta = body.metadata
    trial = {
        "metadata": {"name": meta.name, "labels": dict(meta.labels), "annotations": dict(meta.annotations)},
        "status": dict(body.status),
    }
    return {(namespace, labels[sweeps.LABEL_SWEEP]): trial}


@kopf.timer(*SWEEPS, interval=SETTINGS.status_interval_seconds, initial_delay=1)
def sweep_refresh(
    body: kopf.Body, patch: kopf.Patch, namespace: str | None, name: str, memo: kopf.Memo, **kwargs: Any
) -> None:
    """Create the next trials, stop losers, and write the leaderboard."""
    if not memo.get("sweep_valid") or (body.get("status") or {}).get("phase") in (Phase.SUCCEEDED, Phase.FAILED):
        return
    with metrics.timed("sweep"):
        sweep, namespace = _sweep(body), namespace or "default"
        trials = list(kwargs["sweep_trials"].get((namespace, name), []))
        step = sweeps.reconcile(sweep, trials, datetime.now(UTC))
        for manifest in step.create:
            kopf.adopt(manifest, owner=body)
            kube.create(manifest)
        for trial in step.stop:
            kube.stop_trial(namespace, trial, sweeps.STOPPED)
        for t in step.transitions:
            kopf.event(body, type=t.event_type, reason=t.reason, message=t.message)
        if step.status != sweep.status:
            patch.status.update(sweeps.wire(step.status))
        metrics.observe_sweep(namespace, name, step.status)


@kopf.on.event(*SWEEPS, when=lambda type, **_: type == "DELETED")
def sweep_deleted(namespace: str | None, name: str, **_: Any) -> None:
    metrics.forget_sweep(namespace or "default", name)
