"""Writes the Grafana dashboards the chart ships (charts/kubetune/files/dashboards/*.json).

The JSON files are the source users import and the chart's ConfigMaps carry; this script only keeps them tidy and
consistent (stable uids, a datasource variable on every panel, a grid laid out in rows). Run it after editing the
panel list below: ``python hack/dashboards.py``; tests/chart/test_monitoring.py checks the files match it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "charts" / "kubetune" / "files" / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
JOB = 'namespace="$namespace", finetunejob="$finetunejob"'


def panel(
    kind: str,
    title: str,
    targets: list[tuple[str, str]],
    w: int = 12,
    h: int = 8,
    unit: str = "",
    description: str = "",
    **options: Any,
) -> dict[str, Any]:
    field_config: dict[str, Any] = {"defaults": {"unit": unit} if unit else {}, "overrides": []}
    field_config["defaults"].update(options.pop("defaults", {}))
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"w": w, "h": h},
        "targets": [
            {
                "datasource": DS,
                "expr": expr,
                "legendFormat": legend,
                "refId": chr(65 + i),
                **({"instant": True, "format": "table"} if kind == "table" else {}),
            }
            for i, (expr, legend) in enumerate(targets)
        ],
        "fieldConfig": field_config,
        "options": options,
    }


def variable(name: str, label: str, query: str, multi: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": name},
        "definition": query,
        "refresh": 2,
        "sort": 1,
        "multi": multi,
        "includeAll": multi,
        **({"allValue": ".*"} if multi else {}),
    }


def dashboard(
    uid: str, title: str, description: str, variables: list[dict[str, Any]], panels: list[dict[str, Any]]
) -> dict[str, Any]:
    x = y = row_height = 0
    for i, p in enumerate(panels, start=1):
        if x + p["gridPos"]["w"] > 24:
            x, y, row_height = 0, y + row_height, 0
        p["id"] = i
        p["gridPos"].update(x=x, y=y)
        x += p["gridPos"]["w"]
        row_height = max(row_height, p["gridPos"]["h"])
    datasource = {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "refresh": 1,
        "current": {},
    }
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["kubetune"],
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "browser",
        "graphTooltip": 1,
        "templating": {"list": [datasource, *variables]},
        "links": [{"title": "kubetune", "type": "dashboards", "tags": ["kubetune"], "asDropdown": True}],
        "panels": panels,
    }


def overview() -> dict[str, Any]:
    ns = 'namespace=~"$namespace"'
    job_link = [
        {
            "title": "Open the job's dashboard",
            "url": "/d/kubetune-finetunejob/kubetune-finetunejob?"
            "var-namespace=${__data.fields.namespace}&var-finetunejob=${__data.fields.finetunejob}",
        }
    ]
    return dashboard(
        "kubetune-overview",
        "kubetune / Overview",
        "All FineTuneJobs and FineTuneSweeps: phases, workers, failures, sweeps, the operator.",
        [variable("namespace", "Namespace", "label_values(kubetune_finetunejob_status_phase, namespace)", True)],
        [
            panel(
                "stat",
                "Running jobs",
                [(f'sum(kubetune_finetunejob_status_phase{{{ns}, phase="Running"}})', "")],
                w=6,
                h=4,
            ),
            panel(
                "stat",
                "Active workers",
                [(f'sum(kubetune_finetunejob_workers{{{ns}, state="active"}})', "")],
                w=6,
                h=4,
                description="Worker pods running or pending.",
            ),
            panel(
                "stat",
                "Failed jobs",
                [(f'sum(kubetune_finetunejob_status_phase{{{ns}, phase="Failed"}})', "")],
                w=6,
                h=4,
                defaults={
                    "thresholds": {
                        "mode": "absolute",
                        "steps": [{"color": "green", "value": None}, {"color": "red", "value": 1}],
                    }
                },
            ),
            panel(
                "stat",
                "Worker restarts",
                [(f"sum(kubetune_finetunejob_restarts{{{ns}}})", "")],
                w=6,
                h=4,
                description="Restarts after a retryable failure, all jobs.",
            ),
            panel(
                "timeseries",
                "Jobs by phase",
                [(f"sum by (phase) (kubetune_finetunejob_status_phase{{{ns}}})", "{{phase}}")],
                w=12,
            ),
            panel(
                "timeseries",
                "Training throughput",
                [
                    (
                        f"sum by (namespace, finetunejob) (kubetune_finetunejob_tokens_per_second{{{ns}}})",
                        "{{namespace}}/{{finetunejob}}",
                    )
                ],
                w=12,
                unit="none",
                description="Tokens per second, all workers.",
            ),
            panel(
                "table",
                "Jobs",
                [(f"kubetune_finetunejob_progress_ratio{{{ns}}}", "")],
                w=24,
                unit="percentunit",
                description="Progress of every job; click a row for its dashboard.",
                defaults={"links": job_link},
            ),
            panel(
                "timeseries",
                "Failures and restarts",
                [
                    (
                        f'sum by (namespace, finetunejob) (kubetune_finetunejob_status_phase{{{ns}, phase="Failed"}})',
                        "failed {{namespace}}/{{finetunejob}}",
                    ),
                    (
                        f"sum by (namespace, finetunejob) (kubetune_finetunejob_restarts{{{ns}}})",
                        "restarts {{namespace}}/{{finetunejob}}",
                    ),
                ],
                w=12,
            ),
            panel(
                "timeseries",
                "Reconcile duration (p95)",
                [
                    (
                        "histogram_quantile(0.95, sum by (le, handler) "
                        "(rate(kubetune_reconcile_duration_seconds_bucket[$__rate_interval])))",
                        "{{handler}}",
                    )
                ],
                w=6,
                unit="s",
            ),
            panel(
                "timeseries",
                "Reconcile errors",
                [
                    (
                        "sum by (handler, outcome) (rate(kubetune_reconcile_errors_total[$__rate_interval]))",
                        "{{handler}} {{outcome}}",
                    )
                ],
                w=6,
                unit="reqps",
            ),
            panel(
                "table",
                "Sweeps: best trial",
                [(f"kubetune_finetunesweep_best_metric{{{ns}}}", "")],
                w=12,
                description="Each FineTuneSweep's best objective value so far (status.bestTrial has the trial).",
            ),
            panel(
                "timeseries",
                "Sweep trials by phase",
                [
                    (
                        f"sum by (namespace, finetunesweep, phase) (kubetune_finetunesweep_trials{{{ns}}})",
                        "{{finetunesweep}} {{phase}}",
                    )
                ],
                w=12,
                description="Trials of each sweep: running, done, stopped.",
            ),
        ],
    )


def finetunejob() -> dict[str, Any]:
    return dashboard(
        "kubetune-finetunejob",
        "kubetune / FineTuneJob",
        "One FineTuneJob: progress, ETA, losses, evaluation, throughput and memory.",
        [
            variable("namespace", "Namespace", "label_values(kubetune_finetunejob_status_phase, namespace)"),
            variable(
                "finetunejob",
                "FineTuneJob",
                'label_values(kubetune_finetunejob_status_phase{namespace="$namespace"}, finetunejob)',
            ),
        ],
        [
            panel(
                "stat",
                "Phase",
                [(f"kubetune_finetunejob_status_phase{{{JOB}}} == 1", "{{phase}}")],
                w=6,
                h=4,
                reduceOptions={"calcs": ["lastNotNull"]},
                textMode="name",
            ),
            panel(
                "gauge",
                "Progress",
                [(f"kubetune_finetunejob_progress_ratio{{{JOB}}}", "")],
                w=6,
                h=4,
                unit="percentunit",
                defaults={"min": 0, "max": 1},
            ),
            panel(
                "stat",
                "Time left (ETA)",
                [(f"clamp_min(kubetune_finetunejob_estimated_completion_timestamp_seconds{{{JOB}}} - time(), 0)", "")],
                w=6,
                h=4,
                unit="s",
            ),
            panel("stat", "Restarts", [(f"kubetune_finetunejob_restarts{{{JOB}}}", "")], w=6, h=4),
            panel(
                "timeseries",
                "Loss",
                [
                    (f"kubetune_finetunejob_train_loss{{{JOB}}}", "train"),
                    (f"kubetune_finetunejob_validation_loss{{{JOB}}}", "validation"),
                ],
                w=12,
                description="Validation loss rising while train loss falls means overfitting.",
            ),
            panel("timeseries", "Learning rate", [(f"kubetune_trainer_learning_rate{{{JOB}}}", "learning rate")], w=12),
            panel(
                "timeseries",
                "Throughput",
                [
                    (f"kubetune_finetunejob_tokens_per_second{{{JOB}}}", "reported"),
                    (f"sum(rate(kubetune_trainer_tokens_total{{{JOB}}}[$__rate_interval]))", "trained"),
                ],
                w=12,
                description="Tokens per second over all workers.",
            ),
            panel(
                "timeseries",
                "Peak memory (rank 0)",
                [(f"kubetune_trainer_peak_memory_bytes{{{JOB}}}", "{{device}}")],
                w=12,
                unit="bytes",
                description="Host resident set and, on GPUs, the memory torch allocated.",
            ),
            panel(
                "bargauge",
                "Test-set evaluation",
                [(f"kubetune_finetunejob_eval_metric{{{JOB}}}", "{{metric}} ({{model}})")],
                w=12,
                description="The tuned model beside the base model (zero-shot and few-shot) on the same test rows.",
                displayMode="basic",
                orientation="horizontal",
            ),
            panel("timeseries", "Workers", [(f"kubetune_finetunejob_workers{{{JOB}}}", "{{state}}")], w=6),
            panel(
                "timeseries",
                "Checkpoints written",
                [(f"kubetune_trainer_checkpoints_total{{{JOB}}}", "checkpoints")],
                w=6,
            ),
            panel(
                "stat",
                "Retention regression",
                [(f"kubetune_finetunejob_retention_regression_ratio{{{JOB}}}", "")],
                w=4,
                h=4,
                unit="percentunit",
                description="Forgetting guard: rise of the loss on held-out general data (spec.forgettingGuard).",
            ),
            panel(
                "stat",
                "Overfitting",
                [(f"kubetune_finetunejob_overfitting{{{JOB}}}", "")],
                w=4,
                h=4,
                description="1: validation loss rose above its best while training loss fell.",
            ),
            panel(
                "stat",
                "Stage",
                [(f"kubetune_trainer_stage{{{JOB}}}", "")],
                w=4,
                h=4,
                description="Index of the stage running (spec.stages), from rank 0.",
            ),
        ],
    )


def render() -> dict[str, str]:
    return {
        f"{d['uid'].removeprefix('kubetune-')}.json": json.dumps(d, indent=2) + "\n"
        for d in (overview(), finetunejob())
    }


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text)
        print(OUT / name, file=sys.stderr)
